"""Plugins from Cloud Storage against a real emulator on 127.0.0.1 (gcp-storage-emulator, started here).

The mirror, refresh by generation, deletion, the last good copy through an outage, ``sources`` in ``__dir__``,
and ``PUT /rest/admin/plugins/<name>`` writing into the bucket when a ``gs://`` source is the writable one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gcsemulator import gcs_emulator

from dpmsf_core.config import Settings
from dpmsf_core.errors import ConfigError, Conflict
from dpmsf_core.sources.gcs import GCSPluginSource, parse_gs_url
from dpmsf_core.tenancy.tokens import generate_key, mint
from dpmsf_core.upload.gcs_store import GCSPluginStore

pytestmark = pytest.mark.slow

ADMIN = "00000000-0000-4000-8000-0000000000c5"
ADMIN_KEY = generate_key()


class FakeClock:
    """A clock the test moves by hand, so refresh intervals need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def storage_client(url: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with gcs_emulator() as url:
        yield url


@pytest.fixture
def gcs(emulator: str) -> Any:
    return storage_client(emulator)


@pytest.fixture
def bucket(gcs: Any) -> str:
    name = f"plugins-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(name)
    return name


def put(gcs: Any, bucket: str, key: str, body: str) -> None:
    gcs.bucket(bucket).blob(key).upload_from_string(body.encode())


def delete(gcs: Any, bucket: str, key: str) -> None:
    gcs.bucket(bucket).blob(key).delete()


def test_sync_mirrors_modules_and_packages(gcs: Any, bucket: str, tmp_path: Path) -> None:
    put(gcs, bucket, "plugins/hello.py", "def hi():\n    return 'hi'\n")
    put(gcs, bucket, "plugins/pkg/__init__.py", "")
    put(gcs, bucket, "plugins/pkg/impl.py", "X = 1\n")
    put(gcs, bucket, "plugins/notes.txt", "not a module")
    put(gcs, bucket, "plugins/loose/orphan.py", "no __init__.py beside it")
    put(gcs, bucket, "other/outside.py", "not under the prefix")
    source = GCSPluginSource(f"gs://{bucket}/plugins", tmp_path / "cache", client=gcs)

    result = source.sync()

    assert (result.changed, result.added, result.updated, result.removed, result.error) == (
        True,
        ["hello.py", "pkg/__init__.py", "pkg/impl.py"],
        [],
        [],
        None,
    )
    cache = tmp_path / "cache"
    assert (cache / "hello.py").read_text() == "def hi():\n    return 'hi'\n"
    assert (cache / "pkg" / "impl.py").read_text() == "X = 1\n"
    assert sorted(p.name for p in cache.iterdir()) == [GCSPluginSource.manifest_name, "hello.py", "pkg"]
    manifest = json.loads((cache / GCSPluginSource.manifest_name).read_text())
    listed = {b.name[len("plugins/") :]: str(b.generation) for b in gcs.list_blobs(bucket, prefix="plugins/")}
    assert manifest == {
        "url": f"gs://{bucket}/plugins",
        "objects": {k: listed[k] for k in ("hello.py", "pkg/__init__.py", "pkg/impl.py")},
    }


def test_new_changed_and_deleted_objects_are_live_after_the_next_refresh(gcs: Any, bucket: str, tmp_path: Path) -> None:
    put(gcs, bucket, "p/a.py", "A = 1\n")
    put(gcs, bucket, "p/gone.py", "G = 1\n")
    put(gcs, bucket, "p/same.py", "S = 1\n")
    clock = FakeClock()
    source = GCSPluginSource(f"gs://{bucket}/p", tmp_path, refresh_seconds=30, client=gcs, clock=clock)
    assert source.sync().added == ["a.py", "gone.py", "same.py"]
    same_inode = (tmp_path / "same.py").stat().st_ino

    put(gcs, bucket, "p/a.py", "A = 2\n")
    put(gcs, bucket, "p/new.py", "N = 1\n")
    delete(gcs, bucket, "p/gone.py")
    clock.now += 29
    assert source.sync().changed is False  # not due yet: no listing at all
    assert (tmp_path / "a.py").read_text() == "A = 1\n"

    clock.now += 1
    result = source.sync()
    assert (result.added, result.updated, result.removed) == (["new.py"], ["a.py"], ["gone.py"])
    assert (tmp_path / "a.py").read_text() == "A = 2\n"
    assert (tmp_path / "new.py").read_text() == "N = 1\n"
    assert not (tmp_path / "gone.py").exists()
    assert (tmp_path / "same.py").stat().st_ino == same_inode  # same generation: not downloaded again

    clock.now += 30
    assert source.sync().changed is False  # nothing changed in the bucket


def test_deleted_package_disappears_whole(gcs: Any, bucket: str, tmp_path: Path) -> None:
    put(gcs, bucket, "pkg/__init__.py", "")
    put(gcs, bucket, "pkg/impl.py", "X = 1\n")
    source = GCSPluginSource(f"gs://{bucket}", tmp_path, client=gcs)
    source.sync()
    delete(gcs, bucket, "pkg/__init__.py")
    delete(gcs, bucket, "pkg/impl.py")
    assert source.sync(force=True).removed == ["pkg/__init__.py", "pkg/impl.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [GCSPluginSource.manifest_name]


def test_missing_bucket_records_the_error(gcs: Any, tmp_path: Path) -> None:
    source = GCSPluginSource("gs://no-such-bucket-here/p", tmp_path, client=gcs)
    result = source.sync()
    assert result.changed is False
    assert result.error is not None and result.error.startswith("gs://no-such-bucket-here/p/: NotFound (HTTP 404: ")
    assert source.status()["last_error"] == result.error


def test_outage_keeps_the_last_good_copy_then_recovers(tmp_path: Path) -> None:
    """The emulator stops (Cloud Storage unreachable): the mirror keeps serving; it comes back: changes land."""
    with gcs_emulator() as url:
        port = int(url.rsplit(":", 1)[1])
        client = storage_client(url)
        client.create_bucket("b")
        put(client, "b", "p/a.py", "A = 1\n")
        source = GCSPluginSource("gs://b/p", tmp_path, refresh_seconds=0, client=client)
        assert source.sync().added == ["a.py"]
        good_manifest = (tmp_path / GCSPluginSource.manifest_name).read_text()
    result = source.sync()
    assert result.error is not None and result.error.startswith("gs://b/p/: ConnectionError (")
    assert (tmp_path / "a.py").read_text() == "A = 1\n"
    assert (tmp_path / GCSPluginSource.manifest_name).read_text() == good_manifest
    status = source.status()
    assert (status["last_error"], status["objects"]) == (result.error, 1)
    with gcs_emulator(port) as url:  # in-memory: the bucket comes back empty but for what we write now
        client = storage_client(url)
        client.create_bucket("b")
        put(client, "b", "p/b.py", "B = 1\n")
        result = source.sync()
    assert (result.added, result.removed, result.error) == (["b.py"], ["a.py"], None)
    assert source.status()["last_error"] is None


def test_store_put_get_list_delete(gcs: Any, bucket: str) -> None:
    store = GCSPluginStore(f"gs://{bucket}/plugins/", client=gcs)
    assert (store.get("m"), store.list(), store.delete("m")) == (None, [], False)
    store.put("m", "X = 1\n", expect=None)
    put(gcs, bucket, "plugins/pkg/__init__.py", "")  # a package and other files are not uploads
    put(gcs, bucket, "plugins/readme.txt", "")
    text, generation = store.get_versioned("m") or ("", "")
    blob = gcs.bucket(bucket).get_blob("plugins/m.py")
    assert (text, generation) == ("X = 1\n", str(blob.generation))
    assert blob.content_type.startswith("text/x-python")  # the emulator drops "; charset=utf-8"
    store.put("m", "X = 2\n", expect=generation)
    assert store.get("m") == "X = 2\n"
    assert store.list() == ["m"]
    assert store.delete("m") is True
    assert (store.get("m"), store.list()) == (None, [])


def test_store_writes_are_conditional_on_the_generation(gcs: Any, bucket: str) -> None:
    """ifGenerationMatch: create only if absent, replace only the generation read."""
    probe = gcs.bucket(bucket).blob("probe")
    probe.upload_from_string(b"1", if_generation_match=0)
    try:
        probe.upload_from_string(b"2", if_generation_match=0)
    except Exception:
        pass
    else:
        pytest.skip("this gcp-storage-emulator ignores ifGenerationMatch (real Cloud Storage answers 412)")
    store = GCSPluginStore(f"gs://{bucket}/plugins", client=gcs)
    store.put("m", "X = 1\n", expect=None)
    _, generation = store.get_versioned("m") or ("", "")
    with pytest.raises(Conflict):
        store.put("m", "X = 9\n", expect=None)
    store.put("m", "X = 2\n", expect=generation)
    with pytest.raises(Conflict):
        store.put("m", "X = 3\n", expect=generation)  # the generation read is no longer the stored one
    assert store.get("m") == "X = 2\n"


@pytest.fixture
def gcs_app_env(emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The app's own default client, pointed at the emulator by STORAGE_EMULATOR_HOST as the library documents."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return {
        "DPMSF_STATE_DIR": str(tmp_path / "state"),
        "DPMSF_GCS_REFRESH": "0",
        "ADMIN_ID": ADMIN,  # the admin sees ``sources`` in __dir__ and may upload
        "DPMSF_ADMIN_KEY": ADMIN_KEY,
        "DPMSF_REQUIRE_TOKENS": "0",
    }


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {mint(ADMIN, ADMIN_KEY)}"}


def test_app_serves_gcs_plugins_beside_a_folder(gcs: Any, bucket: str, gcs_app_env: dict[str, str]) -> None:
    from dpmsf_core.testing import http_client

    put(gcs, bucket, "plugins/cloudy.py", "def weather():\n    return 'rain'\n")
    env = {**gcs_app_env, "DPMSF_UPLOAD_DIR": gcs_app_env["DPMSF_STATE_DIR"] + "/up"}  # the bucket: not uploads
    with http_client([f"gs://{bucket}/plugins", "."], **env) as client:
        assert client.get("/rest/services/weather/").json()["results"] == "rain"
        assert client.get("/rest/services/hello-world/", params={"name": "x"}).status_code == 200  # the folder too
        put(gcs, bucket, "plugins/cloudy.py", "def weather():\n    return 'sun'\n")
        assert client.get("/rest/services/weather/").json()["results"] == "sun"
        delete(gcs, bucket, "plugins/cloudy.py")
        assert client.get("/rest/services/weather/").status_code == 404

        sources = client.get("/rest/services/__dir__/", headers=admin()).json()["sources"]
        assert [(s["url"], s["last_error"], s["objects"]) for s in sources] == [(f"gs://{bucket}/plugins", None, 0)]


def test_dir_reports_a_failing_bucket(gcs: Any, gcs_app_env: dict[str, str]) -> None:
    from dpmsf_core.testing import http_client

    with http_client(["gs://no-such-bucket-for-dir/p"], **gcs_app_env) as client:  # the writable source, failing
        answer = client.get("/rest/services/__dir__/", headers=admin())
    assert answer.status_code == 200
    [source] = answer.json()["sources"]
    assert source["url"] == "gs://no-such-bucket-for-dir/p"
    assert source["last_error"].startswith("gs://no-such-bucket-for-dir/p/: NotFound (HTTP 404: ")


def test_admin_upload_writes_to_the_bucket(gcs: Any, bucket: str, gcs_app_env: dict[str, str]) -> None:
    from dpmsf_core.testing import http_client

    auth = admin
    with http_client([f"gs://{bucket}/up"], **gcs_app_env) as client:
        answer = client.put("/rest/admin/plugins/uploaded", content="def uploaded():\n    return 42\n", headers=auth())
        assert answer.status_code in (200, 201), answer.text
        stored = gcs.bucket(bucket).get_blob("up/uploaded.py").download_as_bytes().decode()
        assert stored.endswith("def uploaded():\n    return 42\n") and "__tenant__" in stored
        assert client.get("/rest/services/uploaded/").json()["results"] == 42
        index = json.loads(gcs.bucket(bucket).get_blob("up/.dpmsf-tenant-index.json").download_as_bytes())
        assert index["modules"]["uploaded"]["tenant"] == ADMIN  # the tenant index travels with the modules
        listing = client.get("/rest/admin/plugins/", headers=auth()).json()["results"]
        assert [entry["name"] if isinstance(entry, dict) else entry for entry in listing] == ["uploaded"]
        assert client.delete("/rest/admin/plugins/uploaded", headers=auth()).status_code in (200, 204)
        assert gcs.bucket(bucket).get_blob("up/uploaded.py") is None
        assert client.get("/rest/services/uploaded/").status_code == 404


@pytest.mark.parametrize(
    ("url", "expected"),
    [("gs://b", ("b", "")), ("gs://b/", ("b", "")), ("gs://b/p", ("b", "p/")), ("gs://b/p/q/", ("b", "p/q/"))],
)
def test_parse_gs_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_gs_url(url) == expected


@pytest.mark.parametrize("url", ["gs:/b", "s3://b/p", "gs://", "gs:///p"])
def test_parse_gs_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError, match="Expected 'gs://bucket/prefix'"):
        parse_gs_url(url)


def test_plugin_path_keeps_gs_and_s3_urls_whole() -> None:
    settings = Settings.from_env({"DPMSF_PLUGINS": "gs://b/p:.:s3://c/q:/srv/plugins"}, dotenv=None)
    assert settings.plugins == ("gs://b/p", ".", "s3://c/q", "/srv/plugins")


def test_import_does_not_pull_google_cloud_storage() -> None:
    code = "import sys, dpmsf_core.sources.gcs, dpmsf_core.app; print('google.cloud.storage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
