"""Plugins from Cloud Storage: ``DPMSF_PLUGINS=gs://bucket/prefix`` mirrored locally, uploads written there.

``GCSPluginSource`` lists the prefix and fetches objects by generation; the refresh itself (what to download,
staging, deletion, the last good copy when Cloud Storage fails) is ``dpmsf_core/sources/mirror.py``, shared with S3.
Uploads into the same prefix are ``upload/gcs_store.py``.

google-cloud-storage is imported on first use (``pip install 'dpmsf[gcp]'``); it honours
``STORAGE_EMULATOR_HOST`` (an emulator, anonymous credentials), else Application Default Credentials.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .mirror import MirroredSource, parse_bucket_url

GCS_TIMEOUT = 10.0  # seconds per Cloud Storage call: a refresh on the request path must not hang on an outage


def parse_gs_url(url: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix is empty or ends with '/'."""
    return parse_bucket_url(url, "gs", "Cloud Storage")


def gcs_client(client: Any = None) -> Any:
    """``client`` if given, else a ``google.cloud.storage.Client`` (imported here: ~0.25 s that others skip)."""
    if client is not None:
        return client
    try:
        import google.cloud.storage as storage
    except ImportError as exc:
        raise ConfigError(
            "A gs:// plugin path needs google-cloud-storage. Install it with: pip install 'dpmsf[gcp]'."
        ) from exc
    return storage.Client()


def _describe_error(exc: BaseException) -> str:
    """``NotFound (HTTP 404: The specified bucket does not exist.)`` from a google-api-core error, else the type and
    text; the request line (method and full URL) that google-api-core puts first is dropped as noise."""
    message = str(getattr(exc, "message", None) or exc)
    message = re.sub(r"^[A-Z]+ https?://\S+: ", "", message)
    code = getattr(exc, "code", None)
    return (
        f"{type(exc).__name__} (HTTP {code}: {message})"
        if isinstance(code, int)
        else f"{type(exc).__name__} ({message})"
    )


class GCSPluginSource(MirroredSource):
    """One ``gs://bucket/prefix`` entry of the plugin path, mirrored into ``cache_dir`` and refreshed by generation."""

    manifest_name = ".gcs-manifest.json"  # what the mirror fetched (loading/manifest.py is the routing one)
    staging_name = ".gcs-staging"
    kind = "Cloud Storage"

    def __init__(
        self,
        url: str,
        cache_dir: str | Path,
        refresh_seconds: float = 30.0,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        page_size: int = 1000,
    ) -> None:
        self.bucket, self.prefix = parse_gs_url(url)
        super().__init__(url, cache_dir, refresh_seconds, clock=clock)
        self._client = client
        self._page_size = page_size

    @property
    def client(self) -> Any:
        """Created on first use so that importing DPMSF never imports google-cloud-storage."""
        if self._client is None:
            self._client = gcs_client()
        return self._client

    def _describe(self, exc: BaseException) -> str:
        return f"gs://{self.bucket}/{self.prefix}: {_describe_error(exc)}"

    def _list(self) -> dict[str, str]:
        """Every object under the prefix as relative key -> generation (the listing pages itself)."""
        blobs = self.client.list_blobs(
            self.bucket, prefix=self.prefix, page_size=self._page_size, timeout=GCS_TIMEOUT, retry=None
        )
        return {blob.name[len(self.prefix) :]: str(blob.generation) for blob in blobs}

    def _fetch(self, rel: str, version: str) -> tuple[bytes, str | None]:
        """The generation the listing saw, pinned: what lands on disk is exactly the version recorded."""
        import google.cloud.storage as storage

        blob = storage.Blob(self.prefix + rel, self.client.bucket(self.bucket), generation=int(version))
        return blob.download_as_bytes(timeout=GCS_TIMEOUT, retry=None), None
