"""No planted file ever runs: every cache the server keeps code in is a folder of its own, checked at every use.

Attacks as another local user would make them (tests run as root here, so "another user" is a folder chowned to
``nobody``): pre-create the cache folder as theirs, writable by all, or as a symlink to a folder of theirs, and
plant code there (a ``Hello.class`` that writes a marker, a compiled interpreter); then the server's next call
must neither run nor load it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from bundled import bundled

from dpmsf_core.private_dir import PrivateDir

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
TENANT = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
HAS_JDK = shutil.which("javac") is not None and shutil.which("java") is not None


def _other_owner(path: Path) -> None:
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY, NOBODY)


def _all_may_write(path: Path) -> None:
    path.mkdir()
    path.chmod(0o777)


def _symlink_to_theirs(path: Path) -> None:
    theirs = path.with_name(path.name + "-theirs")
    theirs.mkdir(mode=0o777)
    os.chown(theirs, NOBODY, NOBODY)
    path.symlink_to(theirs)


def _group_may_write(path: Path) -> None:
    path.mkdir()
    path.chmod(0o770)


PLANTS: dict[str, Callable[[Path], None]] = {
    "other-owner": _other_owner,
    "writable-by-all": _all_may_write,
    "symlink": _symlink_to_theirs,
    "writable-by-group": _group_may_write,
}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


# -- the helper itself ----------------------------------------------------------------------------------------------


def test_a_missing_folder_is_created_private(tmp_path: Path) -> None:
    made = PrivateDir(tmp_path / "cache", purpose="test").get()
    assert made == tmp_path / "cache"
    assert stat.S_IMODE(made.lstat().st_mode) == 0o700
    shared = PrivateDir(tmp_path / "shared", purpose="test", traversable=True).get()
    assert stat.S_IMODE(shared.lstat().st_mode) == 0o711  # others may enter by name, never list or write


@needs_root
@pytest.mark.parametrize("plant", PLANTS, ids=list(PLANTS))
def test_a_planted_folder_is_refused_for_a_fresh_one(
    tmp_path: Path, plant: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache"
    PLANTS[plant](path)
    private = PrivateDir(path, purpose="test cache")
    got = private.get()
    assert got != path and not str(got).startswith(str(path) + os.sep)
    info = got.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
    assert "not using" in caplog.text and str(path) in caplog.text
    assert private.get() == got  # the fallback is kept: the refused folder is never looked at again
    shutil.rmtree(got)


@needs_root
def test_it_is_checked_at_every_use(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    private = PrivateDir(path, purpose="test cache")
    assert private.get() == path
    os.chown(path, NOBODY, NOBODY)  # handed over (or swapped) after the first use
    assert private.get() != path


def test_our_own_folder_from_an_older_version_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "cache"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    assert PrivateDir(path, purpose="test").get() == path  # nobody else could write into it
    assert stat.S_IMODE(path.lstat().st_mode) == 0o700


# -- compiled Java classes of a command plugin --------------------------------------------------------------------

EVIL_JAVA = """
public class Hello {
    public static void main(String[] args) throws Exception {
        java.nio.file.Files.writeString(java.nio.file.Path.of("%s"), "planted code ran");
        System.out.println("{\\"hello\\": \\"planted\\"}");
    }
}
"""


def _plant_classes(folder: Path, marker: Path) -> None:
    """What a local user would leave at ``$TMPDIR/dpmsf-java/<sha>/Hello.class``."""
    digest = hashlib.sha256((ROOT / "plugins" / "polyglot" / "Hello.java").read_bytes()).hexdigest()[:16]
    build = folder / digest
    build.mkdir(parents=True, exist_ok=True)
    source = build / "src" / "Hello.java"
    source.parent.mkdir()
    source.write_text(EVIL_JAVA % marker)
    subprocess.run(["javac", "-d", str(build), str(source)], check=True, timeout=120)
    for item in [folder, *folder.rglob("*")]:
        os.chmod(item, 0o777 if item.is_dir() else 0o666)
        os.chown(item, NOBODY, NOBODY, follow_symlinks=False)


@pytest.fixture
def polyglot() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("polyglot_private", ROOT / "plugins" / "polyglot" / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_root
@pytest.mark.skipif(not HAS_JDK, reason="no JDK (javac/java) on PATH")
@pytest.mark.parametrize("plant", ["other-owner", "symlink"])
def test_planted_java_classes_never_run(
    tmp_path: Path, polyglot: ModuleType, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    marker = tmp_path / "marker"
    cache = temp / "dpmsf-java"
    if plant == "symlink":
        theirs = tmp_path / "theirs"
        _plant_classes(theirs, marker)
        cache.symlink_to(theirs)
    else:
        _plant_classes(cache, marker)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = asyncio.run(polyglot.hello_java(name="Ada"))
    assert out["hello"] == "Ada" and out["lang"] == "java"  # our class, compiled into a folder of our own
    assert not marker.exists(), "the planted Hello.class ran"


@needs_root
@pytest.mark.skipif(not HAS_JDK, reason="no JDK (javac/java) on PATH")
def test_planted_java_classes_never_run_over_http(tmp_path: Path) -> None:
    """The whole server, as deployed: an anonymous ``hello-java`` with ``$TMPDIR/dpmsf-java`` planted."""
    import httpx
    from ports import free_port
    from serverproc import running

    temp = tmp_path / "tmp"
    temp.mkdir()
    marker = tmp_path / "marker"
    _plant_classes(temp / "dpmsf-java", marker)
    port = free_port()
    env = {
        **os.environ,
        "TMPDIR": str(temp),
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_PLUGINS": str(bundled()),
    }
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "dpmsf_core", "serve", "--port", str(port)]
    with running(command, ROOT, env, tmp_path / "server.log", base + "/rest/services/__dir__/"):
        answer = httpx.get(base + "/rest/services/polyglot/hello-java/", params={"name": "Ada"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["results"]["hello"] == "Ada"
    assert not marker.exists(), "the planted Hello.class ran"
    assert "not using" in (tmp_path / "server.log").read_text()


# -- the compiled interpreter of the sandbox ----------------------------------------------------------------------


def _mapped(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as fh:
        return fh.read()


@needs_root
@pytest.mark.parametrize("plant", ["other-owner", "writable-by-all", "symlink"])
def test_a_planted_compiled_interpreter_is_never_loaded(tmp_path: Path, plant: str) -> None:
    """A folder another user made, holding a compiled module with a matching record, is never mapped by a worker."""
    pytest.importorskip("wasmtime")
    from dpmsf_core.sandbox import SandboxLimits, SandboxPool, runtime
    from dpmsf_core.sandbox.pool import default_cache_dir
    from dpmsf_core.sandbox.process import usable_by_others

    good = runtime.compiled_module(default_cache_dir())  # the real one, compiled once per machine
    planted_dir = tmp_path / "cache"
    PLANTS[plant](planted_dir)
    real_dir = planted_dir.resolve()
    name = f"python-3.12.0-{runtime.cache_key()}.cwasm"
    shutil.copyfile(good.path, real_dir / name)  # a module of "theirs": any bytes, with a record that matches
    shutil.copyfile(good.path + ".json", real_dir / (name + ".json"))
    for item in real_dir.iterdir():
        os.chown(item, NOBODY, NOBODY)
        item.chmod(0o666)
    pool = SandboxPool(size=1, limits=SandboxLimits(), cache_dir=str(planted_dir))
    try:
        assert not pool.compiled.startswith(str(real_dir)) and not pool.compiled.startswith(str(planted_dir))
        source = "def add(a, b):\n    return a + b\n"
        result = pool.call_sync(source=source, path="m.py", function="add", args=[1, 2], kwargs={}, tenant=TENANT)
        assert result == 3
        (pid,) = pool.workers()
        maps = _mapped(pid)
        assert str(real_dir) not in maps and str(planted_dir) not in maps  # the planted file was never mapped
        assert pool.compiled in maps
        assert usable_by_others(pool.compiled)  # a 0711 folder, a 0644 file: a worker running as nobody opens it
    finally:
        pool.close()
        shutil.rmtree(Path(pool.compiled).parent, ignore_errors=True)


# -- plugins mirrored from S3 -------------------------------------------------------------------------------------


@needs_root
def test_a_planted_s3_mirror_folder_is_never_imported(
    tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$DPMSF_STATE_DIR/s3-cache/<bucket>`` made first by another user, with a module and a manifest that says it
    is the bucket's: the server mirrors into a folder of its own, and the planted module never runs."""
    import json
    import uuid

    from motoserver import client as moto_client

    from dpmsf_core.app import create_app
    from dpmsf_core.config import Settings

    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    s3 = moto_client("s3", moto_url)
    bucket = f"plugins-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="plugins/real.py", Body=b"def real():\n    return 'from s3'\n")
    marker = tmp_path / "marker"
    planted = tmp_path / "state" / "s3-cache" / f"{bucket}_plugins"
    planted.mkdir(parents=True)
    (planted / "real.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef real():\n    return 'planted'\n")
    (planted / "extra.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef extra():\n    return 'planted'\n")
    (planted / ".mirror-manifest.json").write_text(json.dumps({"real.py": "anything"}))  # extra.py: not in it
    for item in [planted, *planted.iterdir()]:
        os.chown(item, NOBODY, NOBODY)
    planted.chmod(0o777)
    env = {"DPMSF_PLUGINS": f"s3://{bucket}/plugins", "DPMSF_STATE_DIR": str(tmp_path / "state")}
    app = create_app(Settings.from_env(env, dotenv=None))
    try:
        listing = app.registry.refresh()
        assert [e.api for e in listing.endpoints()] == ["real"]
        assert listing.by_api["real"][0].func() == "from s3"
        assert not marker.exists(), "the planted module ran"
    finally:
        app.close()
