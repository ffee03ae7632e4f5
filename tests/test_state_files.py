"""State files are private: SQLite files (and -wal/-shm) 0600, the state directory 0700, checked with os.stat."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.replay import SQLiteReplayStore, make_replay_store
from dpmsf_core.tenancy.state_files import private_dir, private_file, private_sqlite, write_secret_once
from dpmsf_core.tenancy.tenants import SQLiteTenantRegistry, make_tenant_registry
from dpmsf_core.tenancy.tokens import generate_key, mint

ADMIN = "00000000-0000-4000-8000-0000000000ad"
LATER = 4e9


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: whatever is not set explicitly would come out world-writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def sqlite_family(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def test_replay_store_files_are_private(tmp_path: Path, loose_umask: None) -> None:
    state = tmp_path / "state"
    store = SQLiteReplayStore(str(state / "replay.db"), state_dir=state)
    assert store.claim("a", LATER)
    files = sqlite_family(state / "replay.db")
    assert [p.name for p in files] == ["replay.db", "replay.db-wal", "replay.db-shm"]  # WAL siblings exist ...
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}  # ... and are 0600 like the db
    assert mode(state) == 0o700


def test_tenant_registry_files_are_private(tmp_path: Path, loose_umask: None) -> None:
    state = tmp_path / "state"
    registry = SQLiteTenantRegistry(str(state / "tenants.db"), state_dir=state)
    registry.add(name="acme")
    files = [*sqlite_family(state / "tenants.db"), state / "master.key"]
    assert len(files) == 4
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(state) == 0o700


def test_missing_parents_are_created_0700(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "a" / "b" / "replay.db"
    SQLiteReplayStore(str(db)).claim("x", LATER)
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b"), mode(db)) == (0o700, 0o700, 0o600)


def test_existing_state_dir_and_old_files_are_tightened(tmp_path: Path) -> None:
    """A state directory and databases made by an older version with default modes are made private."""
    state = tmp_path / ".dpmsf"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    old = {state / name: 0o644 for name in ("tenants.db", "tenants.db-wal", "replay.db", "replay.db-shm")}
    for path, m in old.items():
        path.write_bytes(b"")
        os.chmod(path, m)
    make_tenant_registry(f"sqlite:///{state / 'tenants.db'}", state_dir=state)
    make_replay_store(f"sqlite:///{state / 'replay.db'}", state_dir=state)
    assert mode(state) == 0o700
    for path in old:
        assert mode(path) == 0o600, path


def test_a_folder_that_is_not_the_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    """``sqlite:////srv/shared/x.db`` must not chmod /srv/shared: only the file is made private."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    SQLiteReplayStore(str(shared / "replay.db"), state_dir=tmp_path / "elsewhere").claim("x", LATER)
    assert mode(shared) == 0o755
    assert mode(shared / "replay.db") == 0o600
    assert not (tmp_path / "elsewhere").exists()  # the state dir is not made when nothing lives in it


def test_relative_database_does_not_touch_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.chmod(tmp_path, 0o755)
    monkeypatch.chdir(tmp_path)
    make_replay_store("sqlite:///replay.db").claim("x", LATER)
    SQLiteTenantRegistry("tenants.db").add()  # its master.key goes beside it, but the folder is not ours to change
    assert mode(tmp_path) == 0o755
    assert {name: mode(tmp_path / name) for name in ("replay.db", "tenants.db", "master.key")} == dict.fromkeys(
        ("replay.db", "tenants.db", "master.key"), 0o600
    )


def test_private_helpers(tmp_path: Path, loose_umask: None) -> None:
    folder = private_dir(tmp_path / "p" / "q")
    assert mode(folder) == 0o700 and mode(tmp_path / "p") == 0o700
    private_file(folder / "f")
    assert mode(folder / "f") == 0o600 and (folder / "f").read_bytes() == b""
    (folder / "f").write_bytes(b"kept")
    os.chmod(folder / "f", 0o666)
    private_file(folder / "f")
    assert mode(folder / "f") == 0o600 and (folder / "f").read_bytes() == b"kept"  # tightened, not truncated
    assert write_secret_once(folder / "s", b"first") == b"first"
    assert write_secret_once(folder / "s", b"second") == b"first"  # never replaced once written
    assert mode(folder / "s") == 0o600
    private_sqlite(":memory:")  # in-memory databases are left alone
    with pytest.raises(NotADirectoryError):
        private_dir(folder / "f")


def test_state_files_of_a_real_server(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], tmp_path: Path
) -> None:
    """The files the app makes for tenants and replays, as a server leaves them after serving a token."""
    state = tmp_path / "state"  # conftest's make_app sets DPMSF_STATE_DIR here
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # an old, too-open state directory
    plugin_dir.write(
        "guarded.py", "from dpmsf_core import expose\n\n@expose.endpoint(API='who')\ndef who():\n    return 1\n"
    )
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": generate_key(),
            "DPMSF_REQUIRE_TOKENS": "1",
            "DPMSF_REPLAY_STORE": f"sqlite:///{state / 'replay.db'}",
        },
    )
    client = serve(app)
    key = app.get_security().tenants.get(ADMIN).key
    assert client.get("/rest/services/who/", headers={"authorization": f"Bearer {mint(ADMIN, key)}"}).status_code == 200
    ours = [*sqlite_family(state / "tenants.db"), *sqlite_family(state / "replay.db"), state / "master.key"]
    assert {p.name for p in ours} >= {"tenants.db", "tenants.db-wal", "replay.db", "replay.db-wal", "master.key"}
    assert {p.name: mode(p) for p in ours} == {p.name: 0o600 for p in ours}
    assert mode(state) == 0o700


PLANTED = """__tenant__ = "{admin}"
import os
open({marker!r}, "w").write("ran as uid %d" % os.getuid())
from dpmsf_core import expose

@expose.endpoint
def pwn():
    return os.getuid()
"""


def _serve_state(state: Path, tmp_path: Path, admin: str) -> tuple[int, str]:
    """``dpmsf serve`` on ``state`` as its state directory: (exit status, output) if it stops, or (-1, output) and
    an anonymous GET of the planted ``evil/pwn`` answered when it starts."""
    import subprocess
    import sys

    from ports import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    env |= {"DPMSF_STATE_DIR": str(state), "ADMIN_ID": admin, "DPMSF_ADMIN_KEY": generate_key()}
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port), "--plugins", str(plugins)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
        return proc.returncode, out
    except subprocess.TimeoutExpired:  # it serves: try the planted module, as the attacker would
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/rest/services/evil/pwn/", timeout=5)
            said = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            said = repr(exc)
        proc.terminate()
        return -1, said + (proc.communicate(timeout=10)[0] or "")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_a_state_dir_another_user_made_never_runs_its_modules(tmp_path: Path) -> None:
    """F8: ``nobody`` made the state folder and its uploads/ (0777) first and planted a module stamped with the
    admin's id. The server refuses to start, saying why, and the planted module never runs."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    admin = "00000000-0000-4000-8000-00000000000a"
    state = tmp_path / "shared-state"
    uploads = state / "uploads"
    uploads.mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    (uploads / "evil.py").write_text(PLANTED.format(admin=admin, marker=str(marker)))
    for path in (state, uploads, uploads / "evil.py"):
        os.chmod(path, 0o777)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp_path, 0o755)
    status, out = _serve_state(state, tmp_path, admin)
    assert status > 0, out
    assert "owned by uid" in out and str(state) in out and "Traceback" not in out
    assert not marker.exists()
    assert os.stat(state).st_uid == nobody.pw_uid  # left as found: the operator decides


def test_a_state_dir_that_is_a_symlink_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    from dpmsf_core.errors import ConfigError
    from dpmsf_core.tenancy.state_files import claim_state_dir

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        claim_state_dir(link)
    with pytest.raises(ConfigError, match="symbolic link"):
        make_tenant_registry(f"sqlite:///{link / 'tenants.db'}", state_dir=link)
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    with pytest.raises(ConfigError, match="others may write"):
        claim_state_dir(loose / ".." / "loose")
    assert not (loose / "tenants.db").exists()
    fresh = claim_state_dir(loose, fresh_ok=True)  # Lambda's own /tmp: a fresh private folder is fine
    assert fresh != loose and mode(fresh) == 0o700
    assert mode(claim_state_dir(tmp_path / "new" / "state")) == 0o700
