"""Uploads kept in Cloud Storage: ``GCSPluginStore`` is the upload store for ``PUT /rest/admin/plugins/<name>``
when a ``gs://`` plugin source is the writable one. Every write is conditional on the generation the caller read
(``ifGenerationMatch``; 0 means "only if absent"), so ownership checked on a read still holds when it is written."""

from __future__ import annotations

from typing import Any

from ..errors import Conflict
from ..sources.gcs import GCS_TIMEOUT, gcs_client, parse_gs_url
from .stores import ANY_VERSION, INDEX_OBJECT, VersionedStore, is_upload_name
from .validation import check_module_name

__all__ = ["GCSPluginStore"]


def _is_status(exc: BaseException, code: int) -> bool:
    return getattr(exc, "code", None) == code


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
                source.encode("utf-8"), content_type="text/x-python; charset=utf-8", timeout=GCS_TIMEOUT, **condition
            )
        except Exception as exc:
            if _is_status(exc, 412):  # PreconditionFailed: someone else's write came first
                raise Conflict(f"Plugin '{name}' was created or changed by someone else meanwhile.") from None
            raise

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        """The source and its generation (what ``put(expect=...)`` sends as ``ifGenerationMatch``), read together."""
        key = f"{self.prefix}{check_module_name(name)}.py"
        meta = self.client.bucket(self.bucket_name).get_blob(key, timeout=GCS_TIMEOUT)
        if meta is None:
            return None
        try:
            raw = self._blob(name, int(meta.generation)).download_as_bytes(timeout=GCS_TIMEOUT)
        except Exception as exc:
            if _is_status(exc, 404):  # that generation was replaced or deleted between the two calls
                raise Conflict(f"Plugin '{name}' changed while it was being read; try again.") from None
            raise
        return raw.decode("utf-8"), str(meta.generation)

    def delete(self, name: str) -> bool:
        """Delete the live object; False if there was none."""
        try:
            self._blob(name).delete(timeout=GCS_TIMEOUT)
        except Exception as exc:
            if _is_status(exc, 404):
                return False
            raise
        return True

    def get_index(self) -> bytes | None:
        """The tenant index beside the modules (``tenant_index``): a fresh instance's mirror starts without one."""
        blob = self.client.bucket(self.bucket_name).get_blob(self.prefix + INDEX_OBJECT, timeout=GCS_TIMEOUT)
        return None if blob is None else bytes(blob.download_as_bytes(timeout=GCS_TIMEOUT))

    def put_index(self, data: bytes) -> None:
        """Write the tenant index (a hidden name: the mirror and ``list`` never take it for a module)."""
        import google.cloud.storage as storage

        blob = storage.Blob(self.prefix + INDEX_OBJECT, self.client.bucket(self.bucket_name))
        blob.upload_from_string(data, content_type="application/json", timeout=GCS_TIMEOUT)

    def list(self) -> list[str]:
        """Names of ``<prefix><name>.py`` objects directly under the prefix."""
        names: list[str] = []
        for blob in self.client.list_blobs(self.bucket_name, prefix=self.prefix, delimiter="/", timeout=GCS_TIMEOUT):
            rest = blob.name[len(self.prefix) :]
            if rest.endswith(".py") and is_upload_name(rest[:-3]):
                names.append(rest[:-3])
        return sorted(names)
