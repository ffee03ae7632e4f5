"""Mirror plugin modules from an S3 prefix into a local folder, so S3 plugins load like any plugin folder.

``S3PluginSource("s3://bucket/plugins", "/tmp/dpmsf-s3").sync()`` lists the prefix, downloads only
objects whose ETag changed, removes local files whose objects are gone, and never leaves a half-written
module or a half-applied sync behind. The refresh logic is shared with the Cloud Storage source
(``dpmsf_core/sources/mirror.py``); this module only lists and fetches S3 objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._backends import aws_client, aws_error
from .mirror import MirroredSource, SyncResult, parse_bucket_url, select_plugin_keys

__all__ = ["S3PluginSource", "SyncResult", "parse_s3_url", "select_plugin_keys"]

_STAGING_NAME = ".s3-staging"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix is empty or ends with '/'."""
    return parse_bucket_url(url, "s3", "S3")


class S3PluginSource(MirroredSource):
    """One ``s3://bucket/prefix`` entry of the plugin path, mirrored into ``cache_dir`` and refreshed by ETag."""

    manifest_name = ".s3-manifest.json"  # what the mirror fetched (loading/manifest.py is the routing one)
    staging_name = _STAGING_NAME
    kind = "S3"

    def __init__(
        self,
        url: str,
        cache_dir: str | Path,
        refresh_seconds: float = 30.0,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        page_size: int = 1000,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        super().__init__(url, cache_dir, refresh_seconds, clock=clock)
        self._client = client
        self._endpoint_url = endpoint_url
        self._page_size = page_size

    @property
    def client(self) -> Any:
        """The S3 client, created on first use so that importing DPMSF never imports boto3."""
        if self._client is None:
            self._client = aws_client("s3", self._endpoint_url)
        return self._client

    def _describe(self, exc: BaseException) -> str:
        """``s3://bucket/prefix: NoSuchBucket (The specified bucket does not exist)``."""
        code, message = aws_error(exc) or ("", "")
        code, message = code or type(exc).__name__, message or str(exc)
        return f"s3://{self.bucket}/{self.prefix}: {code} ({message})"

    def _list(self) -> dict[str, str]:
        """Every object under the prefix as relative key -> ETag (paginated ListObjectsV2)."""
        objects: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self._page_size}
        ):
            for obj in page.get("Contents", []):
                objects[obj["Key"][len(self.prefix) :]] = obj.get("ETag", "")
        return objects

    def _fetch(self, rel: str, version: str) -> tuple[bytes, str | None]:
        """GetObject: the body and the ETag it was served with."""
        response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + rel)
        return response["Body"].read(), response.get("ETag")
