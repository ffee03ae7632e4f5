"""Stored tenant modules do not slow a start: the tenant index written at upload time says what they serve, and
the registry uses it only for files whose bytes still hash to it (else it reads them, as without an index)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.tenancy.tokens import mint

INDEX_NAME = ".dpmsf-tenant-index.json"  # dpmsf_core.loading.tenant_index.INDEX_NAME
pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
HELLO = 'from dpmsf_core import expose\n\n\n@expose.endpoint\ndef hello():\n    return "hi"\n'


def big_module(api: str, lines: int = 15_000) -> str:
    head = f"from dpmsf_core import expose\n\n\n@expose.endpoint(API={api!r})\ndef {api}(n: int = 2):\n"
    head += "    return n * 2\n\n"
    return head + "x=1\n" * lines


@pytest.fixture
def folders(plugin_dir: Any, tmp_path: Path) -> tuple[Path, Path]:
    plugin_dir.write("hello.py", HELLO)
    return plugin_dir.path, tmp_path / "uploads"


@pytest.fixture
def build(folders: tuple[Path, Path], make_app: Callable[..., Any], tmp_path: Path) -> Callable[[], tuple[Any, float]]:
    plugins, uploads = folders

    def timed() -> tuple[Any, float]:
        began = time.perf_counter()
        app = make_app(
            plugins,
            env={
                "ADMIN_ID": ADMIN,
                "DPMSF_UPLOAD_DIR": str(uploads),
                "DPMSF_UPLOAD_CPU": "20",
                "DPMSF_KEY_CACHE": "0",
            },
        )
        return app, time.perf_counter() - began

    return timed


def upload_five(app: Any, serve: Callable[[Any], httpx.Client], lines: int = 15_000) -> httpx.Client:
    security = app.get_security()
    security.tenants.add(name="mall", tenant_id=MALLORY)
    client = serve(app)
    for i in range(5):
        headers = {"authorization": f"Bearer {mint(MALLORY, security.tenants.get(MALLORY).key)}"}
        r = client.put(
            f"/rest/admin/plugins/big{i}", content=big_module(f"api{i}", lines), headers=headers, timeout=120
        )
        assert r.status_code == 201, r.text
    return client


def served(app: Any) -> dict[str, str]:
    return {r.name: r.status for r in app.registry.snapshot.reports}


def test_stored_big_modules_do_not_slow_a_start(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    _, empty = build()
    first, _ = build()
    upload_five(first, serve)
    app, with_five = build()
    assert served(app) == {"hello": "loaded", **{f"big{i}": "loaded" for i in range(5)}}
    # each module costs about a second to read on this machine; from the index it costs a hash of its bytes
    print(f"start-up: no stored module {empty * 1000:.0f} ms, five of 15,000 lines {with_five * 1000:.0f} ms")
    assert with_five < empty + 0.5, (empty, with_five)
    endpoint = app.registry.snapshot.modules["big3"].endpoints["api3"]
    assert endpoint.tenant == MALLORY and not endpoint.trusted
    assert [p.name for p in endpoint.plan.signature.parameters.values()] == ["n"]


def test_a_missing_or_broken_index_falls_back_to_reading_the_modules(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    _, uploads = folders
    first, _ = build()
    upload_five(first, serve, lines=100)
    index = uploads / INDEX_NAME
    written = json.loads(index.read_text())

    index.unlink()
    app, _ = build()
    assert served(app)["big0"] == "loaded"
    assert index.exists()  # read once, written again: the next start is fast again
    assert json.loads(index.read_text())["modules"]["big0"]["sha256"] == written["modules"]["big0"]["sha256"]

    broken = json.loads(index.read_text())
    broken["modules"]["big1"]["module"]["endpoints"] = "not a list"
    index.write_text(json.dumps(broken))
    app, _ = build()
    assert "api1" in app.registry.snapshot.modules["big1"].endpoints

    index.write_text("{not json")
    app, _ = build()
    assert served(app)["big2"] == "loaded"


def test_an_entry_is_used_only_for_the_bytes_it_describes(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    _, uploads = folders
    first, _ = build()
    upload_five(first, serve, lines=100)
    module = uploads / "big0.py"
    module.write_text(module.read_text().replace("API='api0'", "API='changed'").replace("def api0", "def changed"))
    app, _ = build()
    assert sorted(app.registry.snapshot.modules["big0"].endpoints) == ["changed"]  # the file, not the index

    index = uploads / INDEX_NAME
    claims = json.loads(index.read_text())
    claims["modules"]["big1"]["tenant"] = ADMIN  # an index never makes a module trusted
    index.write_text(json.dumps(claims))
    app, _ = build()
    entry = app.registry.snapshot.modules["big1"]
    assert entry.tenant == MALLORY and not entry.trusted


def test_a_module_without_an_entry_is_read_in_the_background_while_serving(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    from dpmsf_core.upload.validation import stamp_tenant

    _, uploads = folders
    app, _ = build()
    client = serve(app)
    uploads.mkdir(exist_ok=True)
    # arrives without an index entry (another instance's upload, mirrored; a copied folder)
    (uploads / "copied.py").write_text(stamp_tenant(big_module("copied_api", 19_000), MALLORY))
    (uploads / "huge.py").write_text(stamp_tenant("x=1;" * 60_000, MALLORY))  # over the reading budget
    latencies = []
    began = time.monotonic()
    while time.monotonic() - began < 30 and served(app).get("copied") != "loaded":
        t = time.perf_counter()
        assert client.get("/rest/services/hello/").status_code == 200
        latencies.append(time.perf_counter() - t)
        time.sleep(0.02)
    assert served(app)["copied"] == "loaded"
    assert max(latencies) < 0.5, max(latencies)  # never parsed on the request path
    index = json.loads((uploads / INDEX_NAME).read_text())
    assert index["modules"]["copied"]["tenant"] == MALLORY
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "budget" not in str(app.registry.reports()):
        client.get("/rest/services/hello/")
        time.sleep(0.1)
    (report,) = [r for r in app.registry.reports() if r["name"] == "huge"]
    assert report["status"] == "error" and "budget" in report["error"]


def test_on_an_object_store_the_index_travels_with_the_modules(
    make_app: Callable[..., Any],
    serve: Callable[[Any], httpx.Client],
    moto_url: str,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A fresh instance (a Lambda cold start: an empty mirror) fetches the index from the bucket: no parse."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    bucket = f"uploads-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=bucket)

    def instance(state: str) -> tuple[Any, float]:
        began = time.perf_counter()
        app = make_app(
            f"s3://{bucket}/plugins",
            env={"ADMIN_ID": ADMIN, "DPMSF_STATE_DIR": str(tmp_path / state), "DPMSF_UPLOAD_CPU": "20"},
        )
        return app, time.perf_counter() - began

    first, empty = instance("one")
    upload_five(first, serve, lines=12_000)
    fresh, cold = instance("two")
    assert {r.name: r.status for r in fresh.registry.snapshot.reports} == {f"big{i}": "loaded" for i in range(5)}
    print(f"cold start on S3: no stored module {empty * 1000:.0f} ms, five of 12,000 lines {cold * 1000:.0f} ms")
    assert cold < empty + 1.0, (empty, cold)  # reading them would take seconds


ROUND_TRIP = '''"""Module doc."""
from dpmsf_core import expose

__alias__ = "shop"


@expose.endpoint(method="GET|POST", auth=True, path="items/{item_id}/parts")
async def items(item_id: int, *rest, limit: int = 10, tags: tuple = (1, b"x", None), when=len("x"), **more):
    """Items of a shop.

    Longer text.
    """
    return item_id


@expose.endpoint
def plain(a, /, b: list[str] | None = None, c: float = -1.5, d: dict = {"k": {1, 2}}):
    return a


@expose.endpoint(API="items")
def shadowed():
    return 0
'''


def test_a_description_restores_the_module_the_reader_read() -> None:
    from dpmsf_core.sandbox.described import describe, restore
    from dpmsf_core.sandbox.loader import read_tenant_module
    from dpmsf_core.upload.validation import stamp_tenant

    source = stamp_tenant(ROUND_TRIP, MALLORY)
    read = read_tenant_module(source, "/up/shop.py")
    back = restore(json.loads(json.dumps(describe(read))), source, "/up/shop.py", read.sha256)
    assert repr(back) == repr(read)  # every field: endpoints, params, defaults (a non-literal one by its text), docs
    assert [str(ep.signature()) for ep in back.endpoints] == [str(ep.signature()) for ep in read.endpoints]
    assert back.source == source and back.alias == "shop"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["endpoints"][0].update(methods="GET"),
        lambda d: d["endpoints"][0]["params"][0].update(kind=99),
        lambda d: d["endpoints"][0]["params"][2]["default"].update(literal="__import__('os')"),
        lambda d: d.update(introspection="yes"),
        lambda d: d["endpoints"][0].pop("api"),
    ],
)
def test_a_damaged_description_is_refused(damage: Callable[[dict[str, Any]], Any]) -> None:
    from dpmsf_core.sandbox.described import describe, restore
    from dpmsf_core.sandbox.loader import read_tenant_module
    from dpmsf_core.upload.validation import stamp_tenant

    source = stamp_tenant(ROUND_TRIP, MALLORY)
    data = json.loads(json.dumps(describe(read_tenant_module(source, "/up/shop.py"))))
    damage(data)
    with pytest.raises(ValueError):
        restore(data, source, "/up/shop.py", "")


# -- one tenant cannot bloat the shared index (attack finding F13) -------------------------------------------------

VICTIM = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def bloated(api: str, chars: int = 120_000) -> str:
    """A module whose docstrings are ``chars`` control characters: six bytes each once escaped in JSON."""
    doc = "\x01" * chars
    return (
        f'"""{doc}"""\nfrom dpmsf_core import expose\n\n\n@expose.endpoint(API={api!r})\ndef {api}():\n'
        f'    """{doc}"""\n    return 1\n'
    )


def described(name: str, tenant: str, size: int) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "alias": None,
        "doc": "x" * size,
        "introspection": False,
        "duplicates": [],
        "endpoints": [],
    }


def test_a_tenant_over_the_index_bounds_never_drops_another_tenants_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dpmsf_core.loading import tenant_index
    from dpmsf_core.loading.tenant_index import TenantIndex

    monkeypatch.setattr(tenant_index, "MAX_BYTES", 400_000)
    index = TenantIndex(str(tmp_path))
    index.put("bmod", "b = 1\n", VICTIM, None, described("bmod", VICTIM, 100))
    for i in range(30):  # 30 x 30 kB of descriptions, within a share of 100 kB (as its upload quota gives)
        index.put(f"doc{i}", f"a = {i}\n", MALLORY, None, described(f"doc{i}", MALLORY, 30_000), share=100_000)
    on_disk = json.loads((tmp_path / INDEX_NAME).read_text())
    assert (tmp_path / INDEX_NAME).stat().st_size <= 110_000
    assert on_disk["modules"]["bmod"]["module"]["doc"] == "x" * 100  # the victim's entry, untouched
    assert sorted(on_disk["modules"]) == sorted(["bmod", *(f"doc{i}" for i in range(30))])  # all owners known
    assert on_disk["modules"]["doc29"]["module"] is None  # the overflow is the flooder's: kept bare
    index.put("bmod2", "b = 2\n", VICTIM, None, described("bmod2", VICTIM, 100))
    assert json.loads((tmp_path / INDEX_NAME).read_text())["modules"]["bmod2"]["module"] is not None
    # even a flood past the whole file's bound (no share known) never drops an entry: the file stays bounded,
    # and another tenant's new module is still recorded (its owner and size, for quotas and listings)
    for i in range(30):
        index.put(f"big{i}", f"a = {i}\n", MALLORY, None, described(f"big{i}", MALLORY, 30_000))
    index.put("bmod3", "b = 3\n", VICTIM, None, described("bmod3", VICTIM, 100))
    on_disk = json.loads((tmp_path / INDEX_NAME).read_text())
    assert (tmp_path / INDEX_NAME).stat().st_size <= 400_000
    assert on_disk["modules"]["bmod"]["module"] is not None and on_disk["modules"]["bmod2"]["module"] is not None
    assert on_disk["modules"]["bmod3"]["tenant"] == VICTIM and "doc0" in on_disk["modules"]
    # what the file could not keep, this process still knows: the module is not read again here
    (tmp_path / "big29.py").write_text(f'__tenant__ = "{MALLORY}"\n')
    index.put("big29", f'__tenant__ = "{MALLORY}"\n', MALLORY, None, described("big29", MALLORY, 30_000))
    hit = index.lookup("big29", str(tmp_path / "big29.py"), ADMIN)
    assert hit is not None and hit.description["doc"] == "x" * 30_000


def test_a_bloated_docstring_costs_the_index_a_bounded_amount(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    _, uploads = folders
    app, _ = build()
    security = app.get_security()
    security.tenants.add(name="mall", tenant_id=MALLORY)
    security.tenants.add(name="vict", tenant_id=VICTIM)
    client = serve(app)

    def auth(tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {mint(tenant, security.tenants.get(tenant).key)}"}

    r = client.put("/rest/admin/plugins/bmod", content=HELLO.replace("hello", "bhello"), headers=auth(VICTIM))
    assert r.status_code == 201, r.text
    for i in range(3):
        r = client.put(f"/rest/admin/plugins/doc{i}", content=bloated(f"doc{i}"), headers=auth(MALLORY), timeout=60)
        assert r.status_code == 201, r.text
    size = (uploads / INDEX_NAME).stat().st_size
    print(f"index after three 240 kB-docstring modules: {size} bytes")
    assert size < 300_000, size  # was 2.2 MB a module: each docstring escaped, kept whole, thrice
    index = json.loads((uploads / INDEX_NAME).read_text())
    assert index["modules"]["bmod"]["module"] is not None
    listing = client.get("/rest/services/doc0/", headers=auth(MALLORY))
    assert listing.status_code == 200
    again, _ = build()  # a restart serves every module from the index
    assert served(again) == {"hello": "loaded", "bmod": "loaded", "doc0": "loaded", "doc1": "loaded", "doc2": "loaded"}


def test_a_start_without_a_usable_index_reads_only_a_few_modules_before_serving(
    build: Callable[[], tuple[Any, float]], serve: Callable[[Any], httpx.Client], folders: tuple[Path, Path]
) -> None:
    from dpmsf_core.loading.tenant_index import START_INLINE
    from dpmsf_core.upload.validation import stamp_tenant

    _, uploads = folders
    uploads.mkdir(exist_ok=True)
    for i in range(START_INLINE + 3):  # no index entry: a lost index, a copied folder
        (uploads / f"slow{i}.py").write_text(stamp_tenant(big_module(f"slow{i}_api", 2_000), MALLORY))
    app, took = build()
    loaded = [name for name, status in served(app).items() if name.startswith("slow") and status == "loaded"]
    assert len(loaded) == START_INLINE, served(app)  # the rest are read in the background, one at a time
    client = serve(app)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(s == "loaded" for s in served(app).values()) < START_INLINE + 4:
        assert client.get("/rest/services/hello/").status_code == 200
        time.sleep(0.1)
    assert set(served(app).values()) == {"loaded"}, served(app)
