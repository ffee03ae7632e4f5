"""Plugins from Cloud Storage: ``DPMSF_PLUGINS=gs://bucket/prefix`` mirrored locally, uploads written there.

``GCSPluginSource`` lists the prefix and fetches objects by generation; the refresh itself (what to download,
staging, deletion, the last good copy when Cloud Storage fails) is ``dpmsf_core/sources/mirror.py``, shared with S3.
``GCSPluginStore`` is the upload store for ``PUT /rest/admin/plugins/<name>`` when a ``gs://`` source is the
writable one: every write is conditional on the generation the caller read (``ifGenerationMatch``; 0 means
"only if absent"), so ownership checked on a read still holds when the object is written.

google-cloud-storage is imported on first use (``pip install 'dpmsf[gcp]'``); it honours
``STORAGE_EMULATOR_HOST`` (an emulator, anonymous credentials), else Application Default Credentials.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BadRequest, ConfigError, Conflict
from ..upload.stores import ANY_VERSION, INDEX_OBJECT, VersionedStore
from ..upload.validation import check_module_name
from .mirror import MirroredSource, parse_bucket_url

MANIFEST_NAME = ".gcs-manifest.json"
_TIMEOUT = 10.0  # seconds per Cloud Storage call: a refresh on the request path must not hang on an outage


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


def _is_status(exc: BaseException, code: int) -> bool:
    return getattr(exc, "code", None) == code


class GCSPluginSource(MirroredSource):
    """One ``gs://bucket/prefix`` entry of the plugin path, mirrored into ``cache_dir`` and refreshed by generation."""

    manifest_name = MANIFEST_NAME
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
            self.bucket, prefix=self.prefix, page_size=self._page_size, timeout=_TIMEOUT, retry=None
        )
        return {blob.name[len(self.prefix) :]: str(blob.generation) for blob in blobs}

    def _fetch(self, rel: str, version: str) -> tuple[bytes, str | None]:
        """The generation the listing saw, pinned: what lands on disk is exactly the version recorded."""
        import google.cloud.storage as storage

        blob = storage.Blob(self.prefix + rel, self.client.bucket(self.bucket), generation=int(version))
        return blob.download_as_bytes(timeout=_TIMEOUT, retry=None), None


class GCSPluginStore(VersionedStore):
    """Uploaded modules as objects ``<prefix><name>.py``, the same prefix a ``gs://`` plugin path reads."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        self.url = url
        self.bucket_name, self.prefix = parse_gs_url(url)
        self._client = client

    @property
    def client(self) -> Any:
        """Created on first use so that importing DPMSF never imports google-cloud-storage."""
        if self._client is None:
            self._client = gcs_client()
        return self._client

    def _blob(self, name: str, generation: int | None = None) -> Any:
        import google.cloud.storage as storage

        key = f"{self.prefix}{check_module_name(name)}.py"
        return storage.Blob(key, self.client.bucket(self.bucket_name), generation=generation)

    def put(self, name: str, source: str, *, expect: str | None = ANY_VERSION) -> None:
        """One upload, conditional: ``ifGenerationMatch=0`` to create, ``ifGenerationMatch=<generation>`` to replace."""
        condition: dict[str, int] = {}
        if expect is None:
            condition = {"if_generation_match": 0}
        elif expect != ANY_VERSION:
            if not expect.isdigit():
                raise Conflict(f"Plugin '{name}' was created or changed by someone else meanwhile.")
            condition = {"if_generation_match": int(expect)}
        try:
            self._blob(name).upload_from_string(
                source.encode("utf-8"), content_type="text/x-python; charset=utf-8", timeout=_TIMEOUT, **condition
            )
        except Exception as exc:
            if _is_status(exc, 412):  # PreconditionFailed: someone else's write came first
                raise Conflict(f"Plugin '{name}' was created or changed by someone else meanwhile.") from None
            raise

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        """The source and its generation (what ``put(expect=...)`` sends as ``ifGenerationMatch``), read together."""
        key = f"{self.prefix}{check_module_name(name)}.py"
        meta = self.client.bucket(self.bucket_name).get_blob(key, timeout=_TIMEOUT)
        if meta is None:
            return None
        try:
            raw = self._blob(name, int(meta.generation)).download_as_bytes(timeout=_TIMEOUT)
        except Exception as exc:
            if _is_status(exc, 404):  # that generation was replaced or deleted between the two calls
                raise Conflict(f"Plugin '{name}' changed while it was being read; try again.") from None
            raise
        return raw.decode("utf-8"), str(meta.generation)

    def delete(self, name: str) -> bool:
        """Delete the live object; False if there was none."""
        try:
            self._blob(name).delete(timeout=_TIMEOUT)
        except Exception as exc:
            if _is_status(exc, 404):
                return False
            raise
        return True

    def get_index(self) -> bytes | None:
        """The tenant index beside the modules (``tenant_index``): a fresh instance's mirror starts without one."""
        blob = self.client.bucket(self.bucket_name).get_blob(self.prefix + INDEX_OBJECT, timeout=_TIMEOUT)
        return None if blob is None else bytes(blob.download_as_bytes(timeout=_TIMEOUT))

    def put_index(self, data: bytes) -> None:
        """Write the tenant index (a hidden name: the mirror and ``list`` never take it for a module)."""
        import google.cloud.storage as storage

        blob = storage.Blob(self.prefix + INDEX_OBJECT, self.client.bucket(self.bucket_name))
        blob.upload_from_string(data, content_type="application/json", timeout=_TIMEOUT)

    def list(self) -> list[str]:
        """Names of ``<prefix><name>.py`` objects directly under the prefix."""
        names: list[str] = []
        for blob in self.client.list_blobs(self.bucket_name, prefix=self.prefix, delimiter="/", timeout=_TIMEOUT):
            rest = blob.name[len(self.prefix) :]
            if rest.endswith(".py") and _is_upload_name(rest[:-3]):
                names.append(rest[:-3])
        return sorted(names)


def _is_upload_name(name: str) -> bool:
    try:
        check_module_name(name)
    except BadRequest:
        return False
    return True
