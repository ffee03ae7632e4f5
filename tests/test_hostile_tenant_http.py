"""A hostile tenant, over real HTTP: it uploads modules with ``PUT /rest/admin/plugins/<name>`` and calls them.

Every way in which an earlier design was broken is tried again here, and each test asserts the effect on the
host: no marker file written, no canary secret in any answer, the victim process and the server alive, the
other tenant's data and modules untouched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import generate_key, mint

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
VICTIM = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
CANARY = "canary-do-not-leak-7f3e"
ADMIN_KEY = generate_key()  # in the server's environment too: it must never show up in an answer


class Env:
    def __init__(self, client: httpx.Client, app: Any, tmp_path: Path, plugins: Path) -> None:
        self.client, self.app, self.tmp_path, self.plugins = client, app, tmp_path, plugins

    def auth(self, tenant: str) -> dict[str, str]:
        key = self.app.get_security().tenants.get(tenant).key
        return {"authorization": f"Bearer {mint(tenant, key)}"}

    def upload(self, tenant: str, name: str, source: str) -> httpx.Response:
        return self.client.put(f"/rest/admin/plugins/{name}", content=source, headers=self.auth(tenant))

    def call(self, tenant: str | None, url: str, **kw: Any) -> httpx.Response:
        headers = self.auth(tenant) if tenant else {}
        return self.client.request(kw.pop("method", "GET"), f"/rest/services/{url}", headers=headers, **kw)


@pytest.fixture
def env(
    plugin_dir: Any,
    make_app: Callable[..., Any],
    serve: Callable[[Any], httpx.Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Env:
    monkeypatch.setenv("DPMSF_SECRET_CANARY", CANARY)  # in the server's own environment
    plugin_dir.write("hello.py", 'from dpmsf_core import expose\n\n__alias__ = "v1"\n\ndef hi():\n    return "hi"\n')
    app = make_app(
        plugin_dir.path,
        env={
            "ADMIN_ID": ADMIN,
            "DPMSF_ADMIN_KEY": ADMIN_KEY,
            "DPMSF_SANDBOX_TIMEOUT": "2",
            "DPMSF_STORE": f"sqlite:///{tmp_path / 'store.db'}",
        },
    )
    for tenant in (MALLORY, VICTIM):
        app.get_security().tenants.add(name=tenant[:4], tenant_id=tenant)
    return Env(serve(app), app, tmp_path, plugin_dir.path)


def module(body: str, *, alias: str | None = None) -> str:
    head = "import uuid\nimport dataclasses\nfrom dpmsf_core import expose, store\n\nos = uuid.os\n"
    if alias:
        head += f"__alias__ = {alias!r}\n"
    return head + "\n" + body


def assert_no_secret(*responses: httpx.Response) -> None:
    for r in responses:
        text = r.text + json.dumps(dict(r.headers))
        assert CANARY not in text and ADMIN_KEY not in text
        assert "root:x:0" not in text


def test_shell_commands_never_run(env: Env) -> None:
    marker = env.tmp_path / "owned"
    source = module(
        f"""
@expose.endpoint
def run_shell():
    import subprocess
    return subprocess.run(["touch", {str(marker)!r}])

@expose.endpoint
def os_system():
    return os.system("touch {marker}")

@expose.endpoint
def via_importlib():
    return dataclasses.inspect.importlib.import_module("subprocess").run(["touch", {str(marker)!r}])
"""
    )
    assert env.upload(MALLORY, "shell", source).status_code == 201
    answers = [env.call(MALLORY, f"shell/{api}/") for api in ("run_shell", "os_system", "via_importlib")]
    assert [r.status_code for r in answers] == [403, 500, 403]
    assert not marker.exists()
    assert_no_secret(*answers)


def test_no_secret_from_the_server_environment_or_state(env: Env) -> None:
    state = env.tmp_path / "state"
    source = module(
        f"""
@expose.endpoint
def environ():
    return dict(os.environ)

@expose.endpoint
def proc_environ():
    return os.read(os.open("/proc/{os.getpid()}/environ", os.O_RDONLY), 100000).decode("latin-1")

@expose.endpoint
def tenants_db():
    return os.read(os.open({str(state / "tenants.db")!r}, os.O_RDONLY), 100000).decode("latin-1")

@expose.endpoint
def listing():
    return os.listdir({str(state)!r})
"""
    )
    assert env.upload(MALLORY, "snoop", source).status_code == 201
    answers = [env.call(MALLORY, f"snoop/{api}/") for api in ("environ", "proc_environ", "tenants_db", "listing")]
    assert answers[0].json() == {"results": {}}
    assert [r.status_code for r in answers[1:]] == [500, 500, 500]
    assert_no_secret(*answers)


def test_another_tenants_documents_and_source_stay_private(env: Env) -> None:
    victim = module(
        """
@expose.endpoint(method="POST")
def keep(secret):
    return store.collection("vault").put("s", {"secret": secret})
"""
    )
    thief = module(
        """
@expose.endpoint
def steal():
    return store.collection("vault").get("s"), store.collection("vault").list()
"""
    )
    assert env.upload(VICTIM, "vault", victim).status_code == 201
    assert env.call(VICTIM, "vault/keep/", method="POST", json={"secret": CANARY}).status_code == 200
    assert env.upload(MALLORY, "thief", thief).status_code == 201
    stolen = env.call(MALLORY, "thief/steal/")
    assert stolen.json() == {"results": [None, [[], None]]}
    peeks = [
        env.client.get("/rest/admin/plugins/vault", headers=env.auth(MALLORY)),
        env.call(MALLORY, "vault/keep/", method="POST", json={"secret": "x"}),
        env.client.get("/rest/services/__dir__/", headers=env.auth(MALLORY)),
    ]
    assert [r.status_code for r in peeks[:2]] == [404, 404]
    assert "vault" not in json.dumps([m["name"] for m in peeks[2].json()["modules"]])
    assert_no_secret(stolen, *peeks)


def test_an_upload_without_an_owner_is_never_run_in_process(env: Env) -> None:
    marker = env.tmp_path / "ran-in-process"
    claims = (
        f'__tenant__ = None\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n\ndef anon():\n    return "open"\n'
    )
    assert env.upload(MALLORY, "ownerless", claims).status_code == 201
    assert not marker.exists()  # stamped with Mallory's id: read with ast, run only in the sandbox
    assert env.call(None, "anon/").status_code == 404  # not served to anonymous callers
    assert env.call(MALLORY, "anon/").status_code == 403  # the sandbox refuses pathlib, and nothing is written
    assert not marker.exists()
    # A file that reaches the upload folder without an owner by any other way is not loaded at all.
    uploads = Path(env.app.admin.folder)
    (uploads / "smuggled.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\ndef s():\n    return 1\n"
    )
    listing = env.client.get("/rest/services/__dir__/", headers=env.auth(ADMIN)).json()
    (report,) = [m for m in listing["modules"] if m["name"] == "smuggled"]
    assert report["status"] == "error" and "without an owner" in report["error"]
    assert env.call(None, "s/").status_code == 404
    assert not marker.exists()
    assert "dpmsf_plugins.smuggled" not in sys.modules


def test_the_server_and_other_processes_cannot_be_signalled(env: Env) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        source = module(
            f"""
@expose.endpoint
def kill_server():
    return os.kill({os.getpid()}, 9)

@expose.endpoint
def kill_victim():
    return os.kill({victim.pid}, 9)
"""
        )
        assert env.upload(MALLORY, "killer", source).status_code == 201
        answers = [env.call(MALLORY, "killer/kill_server/"), env.call(MALLORY, "killer/kill_victim/")]
        assert [r.status_code for r in answers] == [500, 500]
        assert victim.poll() is None
        assert env.call(None, "hi/").json() == {"results": "hi"}  # the server is alive and serving
    finally:
        victim.kill()
        victim.wait()


def test_limits_hit_only_the_tenant_that_breaks_them(env: Env) -> None:
    bombs = module(
        """
@expose.endpoint
def spin():
    while True:
        pass

@expose.endpoint
def memory():
    return len([bytearray(10**7) for _ in range(1000)])

@expose.endpoint
def huge():
    return "x" * 3_000_000

@expose.endpoint
def disk():
    return os.write(os.open("fill.bin", os.O_WRONLY | os.O_CREAT), b"x" * 10**7)
"""
    )
    fine = module("@expose.endpoint\ndef ok():\n    return 'ok'\n")
    assert env.upload(MALLORY, "bombs", bombs).status_code == 201
    assert env.upload(VICTIM, "fine", fine).status_code == 201
    assert env.call(VICTIM, "fine/ok/").json() == {"results": "ok"}
    codes = {api: env.call(MALLORY, f"bombs/{api}/") for api in ("spin", "memory", "huge", "disk")}
    assert {api: r.status_code for api, r in codes.items()} == {"spin": 504, "memory": 500, "huge": 413, "disk": 500}
    for r in codes.values():
        assert r.headers["content-type"] == "application/problem+json"
    started = time.monotonic()
    assert env.call(VICTIM, "fine/ok/").json() == {"results": "ok"}
    assert time.monotonic() - started < 1.0
    assert not any(p.name == "fill.bin" for p in Path("/").iterdir())


def test_names_of_other_owners_cannot_be_taken(env: Env) -> None:
    mine = module("@expose.endpoint\ndef mine():\n    return 'mallory'\n")
    assert env.upload(MALLORY, "hello", mine).status_code == 409  # the admin's module name
    assert env.upload(MALLORY, "evil", module("def x():\n    return 1\n", alias="v1")).status_code == 409  # its alias
    assert env.upload(MALLORY, "mallorys", mine).status_code == 201
    taken = module("def y():\n    return 2\n", alias="mallorys")
    assert env.upload(VICTIM, "victims", taken).status_code == 409  # another tenant's module name
    assert env.upload(VICTIM, "mallorys", taken).status_code == 409  # and its stored upload
    assert env.call(None, "v1/hi/").json() == {"results": "hi"}
    assert env.call(MALLORY, "mallorys/mine/").json() == {"results": "mallory"}


def test_a_held_upload_cannot_overwrite_a_module_created_meanwhile(env: Env) -> None:
    body = module("@expose.endpoint\ndef late():\n    return 'late'\n").encode()
    auth = env.auth(MALLORY)["authorization"]
    host, port = env.client.base_url.host, env.client.base_url.port
    with socket.create_connection((host, port)) as held:
        held.sendall(
            b"PUT /rest/admin/plugins/race HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10]
        )  # fmt: skip
        time.sleep(0.3)  # the server has checked that 'race' is free, and waits for the rest of the body
        first = module("@expose.endpoint\ndef early():\n    return 'early'\n")
        assert env.upload(VICTIM, "race", first).status_code == 201
        held.sendall(body[10:])
        answer = held.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 409")
    assert env.call(VICTIM, "race/early/").json() == {"results": "early"}
    stored = env.client.get("/rest/admin/plugins/race", headers=env.auth(VICTIM))
    assert "early" in stored.text and "late" not in stored.text


def test_docs_never_reflect_the_request_path(env: Env) -> None:
    for path in ("/<script>alert(1)</script>/docs", "/x'+alert(1)+'/docs", '/"><img src=x onerror=alert(1)>/docs'):
        r = env.client.get(path)
        assert r.status_code == 200
        assert "alert(1)" not in r.text
        assert 'url: "/openapi.json"' in r.text


def test_the_directory_shows_paths_only_to_whom_they_belong(env: Env) -> None:
    assert env.upload(MALLORY, "m_mod", module("def m():\n    return 1\n")).status_code == 201
    assert env.upload(VICTIM, "v_mod", module("def v(:\n")).status_code == 422  # refused: does not parse
    (Path(env.app.admin.folder) / "broken.py").write_text(f'__tenant__ = "{VICTIM}"\ndef v(:\n')
    anonymous = env.client.get("/rest/services/__dir__/").text
    mallory = env.client.get("/rest/services/__dir__/", headers=env.auth(MALLORY)).json()
    victim = env.client.get("/rest/services/__dir__/", headers=env.auth(VICTIM)).json()
    admin = env.client.get("/rest/services/__dir__/", headers=env.auth(ADMIN)).json()
    assert str(env.tmp_path) not in anonymous
    assert str(env.plugins) not in json.dumps(mallory)  # the admin's folder is not Mallory's to know
    (own,) = [m for m in mallory["modules"] if m["name"] == "m_mod"]
    assert own["source"].startswith(str(env.tmp_path))  # its own module's place it may see
    assert "broken" not in json.dumps(mallory), json.dumps(mallory, indent=1)
    (broken,) = [m for m in victim["modules"] if m["name"] == "broken"]
    assert broken["status"] == "error" and broken["error"].endswith("broken.py, line 2: syntax error: invalid syntax")
    assert {m["name"] for m in admin["modules"]} == {"v1", "m_mod", "broken"}
    assert all(m["source"].startswith("/") for m in admin["modules"])  # the admin sees where everything lives


def test_robustness_answers_are_never_500(env: Env) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    r = env.client.post("/rest/services/v1/hi/", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    for source in ("x = " + "-" * 100_000 + "1\n", "x = " + "1+" * 100_000 + "1\n"):
        assert env.upload(MALLORY, "deep", source).status_code == 422
    listing = env.client.get("/rest/services/v1/")
    assert listing.status_code == 404 and listing.json()["apis"] == ["hi"]
    raising = module("@expose.endpoint\ndef boom():\n    raise KeyError('internal detail')\n")
    assert env.upload(MALLORY, "boom", raising).status_code == 201
    r = env.call(MALLORY, "boom/boom/")
    assert r.status_code == 500
    assert "KeyError" not in r.text and "internal detail" not in r.text
    assert env.call(None, "hi/").json() == {"results": "hi"}


# -- found by an attacker's pass over the first version ------------------------------------------------------------


def test_forged_answers_and_a_sleeping_guest_freeze_nothing(env: Env) -> None:
    source = module(
        """
import time

@expose.endpoint(method="GET|POST")
def arm(**kw):
    frame = b'{"op":"answer","ok":true,"result":"forged"}'
    os.write(1, (len(frame).to_bytes(4, "big") + frame) * 500)
    time.sleep(86400)
"""
    )
    assert env.upload(MALLORY, "arm", source).status_code == 201
    started = time.monotonic()
    answers = [env.call(MALLORY, "arm/arm/", method="POST", json={"pad": "x" * 6500}) for _ in range(6)]
    assert {r.status_code for r in answers} == {500}  # never the forged "result"
    assert all("forged" not in r.text for r in answers)
    assert time.monotonic() - started < 10
    assert env.client.get("/", timeout=3).status_code == 200  # the event loop is free
    assert env.call(None, "hi/").json() == {"results": "hi"}


def test_an_unreadable_module_is_refused_at_upload_and_never_blocks_a_rebuild(
    env: Env, make_app: Callable[..., Any]
) -> None:
    duplicate = module("@expose.endpoint\ndef f(a, a):\n    return a\n")
    r = env.upload(MALLORY, "dup", duplicate)
    assert r.status_code == 422 and "duplicate argument" in r.json()["detail"]
    odd = module("@expose.endpoint\ndef g(a: list[()]):\n    return a\n")
    assert env.upload(MALLORY, "odd", odd).status_code == 201  # an odd annotation is only text
    (Path(env.app.admin.folder) / "smuggled_dup.py").write_text(f'__tenant__ = "{MALLORY}"\ndef f(a, a):\n    pass\n')
    fine = module("@expose.endpoint\ndef ping():\n    return 'pong'\n")
    assert env.upload(VICTIM, "victim_mod", fine).status_code == 201
    assert env.call(VICTIM, "victim_mod/ping/").json() == {"results": "pong"}
    admin = env.app.directory(ADMIN)
    (dup,) = [m for m in admin["modules"] if m["name"] == "smuggled_dup"]
    assert dup["status"] == "error" and "duplicate argument" in dup["error"]


def test_event_functions_are_refused_at_upload(env: Env) -> None:
    sniffer = module("@expose.event(source='any')\ndef sniff(record):\n    return record\n")
    r = env.upload(MALLORY, "sniffer", sniffer)
    assert r.status_code == 422
    assert "@expose.event is not available to tenant modules" in r.json()["detail"]
    assert env.app.registry.snapshot.events() == []


def test_a_tenant_module_never_captures_a_trusted_api(env: Env) -> None:
    capture = module("@expose.endpoint(API='42', method='GET|POST')\ndef grab(**kw):\n    return kw\n", alias="hi")
    r = env.upload(MALLORY, "capture", capture)
    assert r.status_code == 409 and "trusted API" in r.json()["detail"]
    assert env.call(ADMIN, "hi/42/").json() == {"results": "hi"}


def test_one_tenant_cannot_hold_every_guest(env: Env) -> None:
    import threading

    stuck = module("@expose.endpoint\ndef hold():\n    return os.read(0, 1)\n")
    fine = module("@expose.endpoint\ndef ok():\n    return 'ok'\n")
    assert env.upload(MALLORY, "holder", stuck).status_code == 201
    assert env.upload(VICTIM, "fine", fine).status_code == 201
    assert env.call(VICTIM, "fine/ok/").json() == {"results": "ok"}

    def flood() -> None:
        for _ in range(2):
            env.call(MALLORY, "holder/hold/")

    floods = [threading.Thread(target=flood) for _ in range(4)]
    for thread in floods:
        thread.start()
    time.sleep(0.5)  # Mallory now holds every guest it can get
    started = time.monotonic()
    r = env.call(VICTIM, "fine/ok/")
    waited = time.monotonic() - started
    for thread in floods:
        thread.join()
    assert r.json() == {"results": "ok"}
    assert waited < 2 + 1.5  # at most one of Mallory's calls (2 s wall) and a fresh guest


def test_two_flooding_tenants_cannot_starve_a_third(env: Env) -> None:
    import threading

    eve = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee"
    env.app.get_security().tenants.add(name="eve", tenant_id=eve)
    stuck = module("@expose.endpoint\ndef hold():\n    return os.read(0, 1)\n")
    fine = module("@expose.endpoint\ndef ok():\n    return 'ok'\n")
    assert env.upload(MALLORY, "holder", stuck).status_code == 201
    assert env.upload(eve, "holder_eve", stuck).status_code == 201
    assert env.upload(VICTIM, "fine", fine).status_code == 201
    assert env.call(VICTIM, "fine/ok/").json() == {"results": "ok"}
    stop = threading.Event()

    def flood(tenant: str, url: str) -> None:
        while not stop.is_set():
            env.call(tenant, url)

    floods = [
        threading.Thread(target=flood, args=(t, u))
        for t, u in [(MALLORY, "holder/hold/"), (eve, "holder_eve/hold/")] * 4
    ]
    for thread in floods:
        thread.start()
    try:
        time.sleep(2.5)  # both floods have queued calls older than the victim's
        waits = []
        for _ in range(5):
            started = time.monotonic()
            r = env.call(VICTIM, "fine/ok/")
            waits.append(time.monotonic() - started)
            assert r.json() == {"results": "ok"}
    finally:
        stop.set()
        for thread in floods:
            thread.join()
    # Served at the next guest that frees: at most one flood call (2 s), a fresh guest and its first call. Served
    # by ticket (before), the floods' older calls kept going first: 5 s within three tries.
    assert max(waits) < 2 * 2 + 0.5, waits


def test_a_tenant_api_named_like_a_trusted_one_never_shadows_it(env: Env) -> None:
    same_name = module("@expose.endpoint\ndef hi():\n    return 'mallory was here'\n")
    assert env.upload(MALLORY, "shadow", same_name).status_code == 201
    for caller in (ADMIN, MALLORY, VICTIM, None):
        assert env.call(caller, "hi/").json() == {"results": "hi"}, caller
    assert env.call(MALLORY, "shadow/hi/").json() == {"results": "mallory was here"}  # qualified: its own


def test_a_tenant_module_takes_path_templates(env: Env) -> None:
    source = module(
        '@expose.endpoint(path="notes/{note_id}")\ndef note(note_id: int):\n'
        '    return {"id": note_id, "type": type(note_id).__name__}\n'
    )
    assert env.upload(VICTIM, "notes_mod", source).status_code == 201
    assert env.call(VICTIM, "notes_mod/notes/7/").json() == {"results": {"id": 7, "type": "int"}}
    bad = env.call(VICTIM, "notes_mod/notes/seven/")
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == "note_id"
    assert env.call(VICTIM, "notes_mod/notes/").status_code == 404
    refused = module('@expose.endpoint(path="notes/{other}")\ndef f(note_id: int):\n    return 1\n')
    r = env.upload(VICTIM, "bad_path", refused)
    assert r.status_code == 422 and "does not take as a parameter" in r.json()["detail"]
