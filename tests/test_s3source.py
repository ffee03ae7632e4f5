"""S3PluginSource against a real moto server: mirror, refresh by ETag, delete, survive S3 errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from motoserver import client as moto_client
from motoserver import moto_server
from ports import free_port

from dpmsf_core.errors import ConfigError
from dpmsf_core.sources.s3 import S3PluginSource, SyncResult, parse_s3_url, select_plugin_keys

pytestmark = pytest.mark.slow


class FakeClock:
    """A clock the test moves by hand, so refresh intervals need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint(moto_url: str) -> str:
    return moto_url  # the run's one moto server (conftest.py)


@pytest.fixture
def s3(endpoint: str) -> Any:
    return moto_client("s3", endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"plugins-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def put(s3: Any, bucket: str, key: str, body: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())


def count_downloads(s3: Any) -> list[str]:
    """Record every GetObject key through botocore's event hooks (the real client, nothing mocked)."""
    keys: list[str] = []
    s3.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: keys.append(params["Key"]))
    return keys


def local_files(cache: Path) -> dict[str, str]:
    """Every visible file in the cache (relative posix path -> text), hidden bookkeeping excluded."""
    return {
        p.relative_to(cache).as_posix(): p.read_text()
        for p in sorted(cache.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cache).parts)
    }


def test_sync_mirrors_modules_and_packages(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "plugins/hello.py", "X = 1\n")
    put(s3, bucket, "plugins/pkg/__init__.py", "from .util import f\n")
    put(s3, bucket, "plugins/pkg/util.py", "def f(): return 2\n")
    put(s3, bucket, "plugins/pkg/data/table.json", "{}")
    put(s3, bucket, "plugins/notes.txt", "not a module")
    put(s3, bucket, "plugins/loose/mod.py", "# a folder without __init__.py is not a package")
    put(s3, bucket, "plugins/.hidden.py", "H = 1")
    put(s3, bucket, "plugins/pkg/__pycache__/util.cpython-311.pyc", "junk")
    put(s3, bucket, "elsewhere.py", "outside the prefix")
    cache = tmp_path / "cache"

    src = S3PluginSource(f"s3://{bucket}/plugins", cache, client=s3)
    result = src.sync()

    assert result == SyncResult(
        changed=True,
        added=["hello.py", "pkg/__init__.py", "pkg/data/table.json", "pkg/util.py"],
        updated=[],
        removed=[],
        error=None,
    )
    assert local_files(cache) == {
        "hello.py": "X = 1\n",
        "pkg/__init__.py": "from .util import f\n",
        "pkg/data/table.json": "{}",
        "pkg/util.py": "def f(): return 2\n",
    }
    # Only the manifest is left beside the mirror: no staging folders or temp files.
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == [S3PluginSource.manifest_name]
    manifest = json.loads((cache / S3PluginSource.manifest_name).read_text())
    assert manifest["url"] == f"s3://{bucket}/plugins"
    assert sorted(manifest["objects"]) == ["hello.py", "pkg/__init__.py", "pkg/data/table.json", "pkg/util.py"]


def test_change_is_seen_only_after_refresh_interval_or_force(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "p/a.py", "V = 1\n")
    clock = FakeClock()
    src = S3PluginSource(f"s3://{bucket}/p/", tmp_path, refresh_seconds=30, client=s3, clock=clock)
    assert src.sync().added == ["a.py"]

    put(s3, bucket, "p/a.py", "V = 2\n")
    clock.now += 29.9
    assert src.sync() == SyncResult()  # not due: nothing listed, nothing changed
    assert (tmp_path / "a.py").read_text() == "V = 1\n"

    clock.now += 0.1
    assert src.sync() == SyncResult(changed=True, updated=["a.py"])
    assert (tmp_path / "a.py").read_text() == "V = 2\n"

    put(s3, bucket, "p/a.py", "V = 3\n")
    assert src.sync() == SyncResult()
    assert src.sync(force=True).updated == ["a.py"]
    assert (tmp_path / "a.py").read_text() == "V = 3\n"


def test_unchanged_etags_are_not_downloaded_again(s3: Any, bucket: str, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        put(s3, bucket, f"p/{name}.py", f"NAME = {name!r}\n")
    downloads = count_downloads(s3)
    src = S3PluginSource(f"s3://{bucket}/p", tmp_path, refresh_seconds=0, client=s3)
    src.sync()
    assert len(downloads) == 3

    put(s3, bucket, "p/b.py", "NAME = 'B'\n")
    put(s3, bucket, "p/c.py", "NAME = 'c'\n")  # rewritten with the same bytes: same ETag
    downloads.clear()
    assert src.sync() == SyncResult(changed=True, updated=["b.py"])
    assert downloads == ["p/b.py"]

    downloads.clear()
    assert src.sync() == SyncResult()
    assert downloads == []

    # A fresh source object over the same cache trusts the manifest: a restart downloads nothing.
    again = S3PluginSource(f"s3://{bucket}/p", tmp_path, client=s3)
    assert again.sync() == SyncResult()
    assert downloads == []

    # ...unless a local file went missing.
    (tmp_path / "a.py").unlink()
    assert again.sync(force=True) == SyncResult(changed=True, updated=["a.py"])
    assert downloads == ["p/a.py"]


def test_deleted_objects_are_removed_locally(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "p/keep.py", "")
    put(s3, bucket, "p/gone.py", "")
    put(s3, bucket, "p/pkg/__init__.py", "")
    put(s3, bucket, "p/pkg/sub/mod.py", "")
    src = S3PluginSource(f"s3://{bucket}/p", tmp_path, refresh_seconds=0, client=s3)
    src.sync()
    (tmp_path / "pkg" / "__pycache__").mkdir()  # the importer's byte-code must not keep a package alive
    (tmp_path / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"")
    (tmp_path / "mine.py").write_text("# not from S3: never touched")

    s3.delete_object(Bucket=bucket, Key="p/gone.py")
    s3.delete_object(Bucket=bucket, Key="p/pkg/__init__.py")
    result = src.sync()

    # Without __init__.py the package is no package: its other files go too.
    assert result == SyncResult(changed=True, removed=["gone.py", "pkg/__init__.py", "pkg/sub/mod.py"])
    assert local_files(tmp_path) == {"keep.py": "", "mine.py": "# not from S3: never touched"}
    assert not (tmp_path / "pkg").exists()
    assert src.status()["objects"] == 1


def test_keys_escaping_the_cache_are_ignored(s3: Any, bucket: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    put(s3, bucket, "p/ok.py", "")
    put(s3, bucket, "p/../evil.py", "EVIL = 1")
    put(s3, bucket, "p/pkg/__init__.py", "")
    put(s3, bucket, "p/pkg/../../escape.py", "EVIL = 1")
    put(s3, bucket, "p//abs.py", "EVIL = 1")
    put(s3, bucket, "p/pkg/./dot.py", "EVIL = 1")
    src = S3PluginSource(f"s3://{bucket}/p", cache, client=s3)

    result = src.sync()

    assert result.error is None
    assert result.added == ["ok.py", "pkg/__init__.py"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py")) == [
        "cache/ok.py",
        "cache/pkg/__init__.py",
    ]


def test_select_plugin_keys_is_pure_and_strict() -> None:
    keys = [
        "a.py",
        "b.txt",
        "../up.py",
        "/abs.py",
        "x/../../y.py",
        "pkg/__init__.py",
        "pkg/m.py",
        "pkg/res/logo.png",
        "pkg/m.pyc",
        "nopkg/m.py",
        "win\\evil.py",
        "c:evil.py",
        "dir/",
        "pkg/a",
        "pkg/a/b.py",
        "x.py/__init__.py",
    ]
    assert select_plugin_keys(keys) == ["a.py", "pkg/__init__.py", "pkg/a/b.py", "pkg/m.py", "pkg/res/logo.png"]


def test_missing_bucket_records_error(s3: Any, tmp_path: Path) -> None:
    src = S3PluginSource("s3://no-such-bucket-dpmsf/p", tmp_path, client=s3)

    result = src.sync()

    assert result.changed is False
    assert result.error is not None
    assert "no-such-bucket-dpmsf" in result.error and "NoSuchBucket" in result.error
    assert src.last_error == result.error
    assert src.status()["last_error"] == result.error
    assert src.status()["last_sync"] is None


def test_unreachable_endpoint_keeps_last_good_copy(s3: Any, bucket: str, tmp_path: Path) -> None:
    from botocore.config import Config

    put(s3, bucket, "p/a.py", "GOOD = True\n")
    good = S3PluginSource(f"s3://{bucket}/p", tmp_path, client=s3)
    good.sync()
    manifest_before = (tmp_path / S3PluginSource.manifest_name).read_text()

    closed = moto_client(
        "s3", f"http://127.0.0.1:{free_port()}", config=Config(connect_timeout=1, retries={"max_attempts": 0})
    )
    broken = S3PluginSource(f"s3://{bucket}/p", tmp_path, client=closed)
    result = broken.sync()

    assert result.error is not None and bucket in result.error and "EndpointConnectionError" in result.error
    assert (tmp_path / "a.py").read_text() == "GOOD = True\n"
    assert (tmp_path / S3PluginSource.manifest_name).read_text() == manifest_before
    assert broken.status()["objects"] == 1


def test_server_going_away_then_coming_back(tmp_path: Path) -> None:
    from botocore.config import Config

    clock = FakeClock()
    with moto_server() as url:  # its own server, because this test stops it
        own = moto_client("s3", url, config=Config(connect_timeout=1, retries={"max_attempts": 0}))
        own.create_bucket(Bucket="bkt")
        put(own, "bkt", "p/a.py", "A = 1\n")
        src = S3PluginSource("s3://bkt/p", tmp_path, refresh_seconds=5, client=own, clock=clock)
        assert src.sync().added == ["a.py"]
        first_sync = src.status()["last_sync"]

    clock.now += 5
    result = src.sync()
    assert result.error is not None and "s3://bkt/p/" in result.error
    assert (tmp_path / "a.py").read_text() == "A = 1\n"
    assert src.status()["last_sync"] == first_sync
    assert src.sync() == SyncResult()  # a failed attempt also waits for the interval: no hammering S3


def test_status_reports_source_health(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "p/a.py", "")
    src = S3PluginSource(f"s3://{bucket}/p", tmp_path, refresh_seconds=12, client=s3)
    assert src.status() == {
        "url": f"s3://{bucket}/p",
        "cache_dir": str(tmp_path),
        "refresh_seconds": 12.0,
        "last_sync": None,
        "last_error": None,
        "objects": 0,
    }
    src.sync()
    status = src.status()
    assert status["objects"] == 1 and status["last_error"] is None and status["last_sync"].endswith("+00:00")


def test_listing_is_paginated(s3: Any, bucket: str, tmp_path: Path) -> None:
    for i in range(7):
        put(s3, bucket, f"p/m{i}.py", f"I = {i}\n")
    pages: list[int] = []
    s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: pages.append(1))
    src = S3PluginSource(f"s3://{bucket}/p", tmp_path, client=s3, page_size=3)

    assert len(src.sync().added) == 7
    assert len(pages) == 3


def test_concurrent_syncs_download_once(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "p/a.py", "A = 1\n")
    downloads = count_downloads(s3)
    src = S3PluginSource(f"s3://{bucket}/p", tmp_path, refresh_seconds=60, client=s3)
    results: list[SyncResult] = []
    threads = [threading.Thread(target=lambda: results.append(src.sync())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.changed for r in results) == [False, False, False, True]
    assert len(downloads) == 1


def test_default_client_uses_endpoint_url(endpoint: str, s3: Any, bucket: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    put(s3, bucket, "a.py", "A = 1\n")
    src = S3PluginSource(f"s3://{bucket}", tmp_path, endpoint_url=endpoint)

    assert src.sync().added == ["a.py"]


def test_other_sources_manifest_is_replaced(s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "one/a.py", "A = 1\n")
    put(s3, bucket, "one/old.py", "")
    put(s3, bucket, "two/a.py", "A = 1\n")
    S3PluginSource(f"s3://{bucket}/one", tmp_path, client=s3).sync()

    result = S3PluginSource(f"s3://{bucket}/two", tmp_path, client=s3).sync()

    assert result == SyncResult(changed=True, updated=["a.py"], removed=["old.py"])
    assert local_files(tmp_path) == {"a.py": "A = 1\n"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b", ("b", "")),
        ("s3://b/", ("b", "")),
        ("s3://b/plugins", ("b", "plugins/")),
        ("s3://b/a/b/", ("b", "a/b/")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["b/plugins", "s3://", "s3:///p", "https://b/p"])
def test_parse_s3_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError, match="Expected 's3://bucket/prefix'"):
        parse_s3_url(url)


def test_import_does_not_pull_boto3() -> None:
    code = "import sys, dpmsf_core.sources.s3, dpmsf_core.upload.s3_store; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_tampered_manifest_cannot_delete_outside_the_cache(s3: Any, bucket: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim.py"
    victim.write_text("precious")
    url = f"s3://{bucket}/p"
    (cache / S3PluginSource.manifest_name).write_text(
        json.dumps({"url": url, "objects": {"../victim.py": "x", "/etc/x.py": "y"}})
    )
    put(s3, bucket, "p/a.py", "")

    result = S3PluginSource(url, cache, client=s3).sync()

    assert result == SyncResult(changed=True, added=["a.py"])
    assert victim.read_text() == "precious"
