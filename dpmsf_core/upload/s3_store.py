"""Uploads kept in S3: ``S3PluginStore`` writes ``<prefix><name>.py`` objects conditionally (``If-None-Match``
to create, ``If-Match`` on the ETag to replace), the same prefix an ``s3://`` plugin path reads."""

from __future__ import annotations

from typing import Any

from .._backends import aws_client, aws_error_code
from ..errors import Conflict
from .stores import ANY_VERSION, INDEX_OBJECT, VersionedStore, is_upload_name
from .validation import check_module_name

__all__ = ["S3PluginStore"]


class S3PluginStore(VersionedStore):
    """Uploaded modules as objects ``<prefix><name>.py`` in S3, the same prefix an ``s3://`` plugin path reads."""

    def __init__(self, url: str, *, client: Any = None, endpoint_url: str | None = None) -> None:
        from ..sources.s3 import parse_s3_url

        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self._client = client
        self._endpoint_url = endpoint_url

    @property
    def client(self) -> Any:
        """Created on first use so that importing DPMSF never imports boto3."""
        if self._client is None:
            self._client = aws_client("s3", self._endpoint_url)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}{check_module_name(name)}.py"

    def put(self, name: str, source: str, *, expect: str | None = ANY_VERSION) -> None:
        """One PutObject, conditional: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace."""
        condition: dict[str, str] = {}
        if expect is None:
            condition = {"IfNoneMatch": "*"}
        elif expect != ANY_VERSION:
            condition = {"IfMatch": expect}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(name),
                Body=source.encode("utf-8"),
                ContentType="text/x-python; charset=utf-8",
                **condition,
            )
        except Exception as exc:
            if aws_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                raise Conflict(f"Plugin '{name}' was created or changed by someone else meanwhile.") from None
            raise

    def get_versioned(self, name: str) -> tuple[str, str] | None:
        """The source and its ETag (the version ``put(expect=...)`` sends as ``If-Match``)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:
            if aws_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return response["Body"].read().decode("utf-8"), str(response["ETag"])

    def delete(self, name: str) -> bool:
        """HeadObject then DeleteObject (S3's delete is idempotent and cannot say whether anything was there)."""
        key = self._key(name)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if aws_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def get_index(self) -> bytes | None:
        """The tenant index beside the modules (``tenant_index``): a fresh Lambda's mirror starts without one."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + INDEX_OBJECT)
        except Exception as exc:
            if aws_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    def put_index(self, data: bytes) -> None:
        """Write the tenant index (a hidden name: the mirror and ``list`` never take it for a module)."""
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + INDEX_OBJECT, Body=data)

    def list(self) -> list[str]:
        """Names of ``<prefix><name>.py`` objects directly under the prefix."""
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.prefix) :]
                if rest.endswith(".py") and is_upload_name(rest[:-3]):
                    names.append(rest[:-3])
        return sorted(names)
