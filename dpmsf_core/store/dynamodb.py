"""The DynamoDB document store: the single DPMSF table, ``pk="store#<tenant>#<collection>"``, ``sk=<id>``, the
document as a JSON string in ``doc`` and its stored size in ``size``; boto3 is imported on first use.

Each tenant's stored bytes are an atomic counter, ``pk="store-usage#<tenant>"``, ``sk="bytes"``, changed in the
same ``TransactWriteItems`` as the document, with the ``store_mb`` quota as the counter's condition: a refused
or failed write changes neither. Documents written before the counter existed (no ``size``) count once rewritten."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .._backends import aws_client, aws_error_code
from ..errors import ServiceUnavailable
from ..tenancy.quotas import Quotas
from .validation import (
    MAX_DOC_BYTES,
    MAX_PAGE_BYTES,
    QuotaLookup,
    check_doc,
    check_key,
    check_limit,
    check_room,
    decode_cursor,
    encode_cursor,
    encode_doc,
    page_budget,
    quota_lookup,
    stored_size,
    within_page,
)

log = logging.getLogger("dpmsf.store")


class DynamoDBStore:
    """Documents in the single DPMSF DynamoDB table; updates are optimistic (a ``ver`` token, retried)."""

    _UPDATE_ATTEMPTS = 12  # with jittered backoff: ~1 s of contention on one document before a 503

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        endpoint_url: str | None = None,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        quotas: QuotaLookup | Quotas | None = None,
        page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self.table_name = table_name
        self._quotas = quota_lookup(quotas)
        self.page_bytes = page_bytes
        self._client = aws_client(
            "dynamodb",
            endpoint_url,
            client=client,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )

    @staticmethod
    def _pk(tenant: str, collection: str) -> dict[str, str]:
        return {"S": f"store#{tenant}#{collection}"}

    def _key(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any]:
        return {"pk": self._pk(tenant, collection), "sk": {"S": doc_id}}

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Connection failures, throttling and a missing table become 503 (nothing was written)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = aws_error_code(exc) or "ClientError"
            log.warning("document store table %s failed: %s", self.table_name, exc)
            raise ServiceUnavailable(f"The document store is unavailable: DynamoDB answered {code}.") from None
        except BotoCoreError as exc:
            log.warning("document store table %s failed: %s", self.table_name, exc)
            raise ServiceUnavailable(f"The document store is unavailable: {type(exc).__name__}.") from None

    def _max_doc(self, tenant: str) -> int:
        """The tenant's ``max_doc``, never past DynamoDB's own item limit (which would fail as a 503)."""
        return min(self._quotas(tenant).max_doc, MAX_DOC_BYTES)

    def _item(self, tenant: str, collection: str, doc_id: str, text: str) -> dict[str, Any]:
        return {
            **self._key(tenant, collection, doc_id),
            "doc": {"S": text},
            "size": {"N": str(stored_size(text))},
            "ver": {"S": uuid.uuid4().hex},
            "tenant": {"S": tenant},
            "collection": {"S": collection},
            "updated_at": {"N": repr(round(time.time(), 3))},
        }

    def _read(
        self, tenant: str, collection: str, doc_id: str, fields: str = "doc, ver, #size"
    ) -> dict[str, Any] | None:
        with self._errors():
            answer = self._client.get_item(
                TableName=self.table_name,
                Key=self._key(tenant, collection, doc_id),
                ConsistentRead=True,
                ProjectionExpression=fields,
                ExpressionAttributeNames={"#size": "size"},  # a reserved word
            )
        item: dict[str, Any] | None = answer.get("Item")  # boto3's answers are untyped here
        return item

    @staticmethod
    def _usage_key(tenant: str) -> dict[str, Any]:
        return {"pk": {"S": f"store-usage#{tenant}"}, "sk": {"S": "bytes"}}

    def usage(self, tenant: str) -> int:
        """Bytes the tenant stores (its ``store_mb`` quota counts these)."""
        with self._errors():
            answer = self._client.get_item(TableName=self.table_name, Key=self._usage_key(tenant), ConsistentRead=True)
        return int(answer.get("Item", {}).get("bytes", {}).get("N", "0"))

    def _usage_change(self, tenant: str, delta: int, room: int | None) -> dict[str, Any]:
        """The counter's part of a transaction: ``ADD delta``, on condition that ``room`` bytes are left."""
        update: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": self._usage_key(tenant),
            "UpdateExpression": "ADD #bytes :delta",
            "ExpressionAttributeNames": {"#bytes": "bytes"},
            "ExpressionAttributeValues": {":delta": {"N": str(delta)}},
        }
        if room is not None:
            update["ConditionExpression"] = "attribute_not_exists(#bytes) OR #bytes <= :room"
            update["ExpressionAttributeValues"][":room"] = {"N": str(room)}
        return {"Update": update}

    def _transact(self, tenant: str, action: dict[str, Any], old: dict[str, Any] | None, delta: int) -> bool:
        """One ``Put`` or ``Delete`` of a document (conditional on the version read) and the tenant's counter, all
        or nothing. False when the document changed since it was read (the caller reads again); QuotaExceeded when
        the counter's condition failed because the quota has no room."""
        from botocore.exceptions import ClientError

        kind, write = next(iter(action.items()))
        if old is None:
            write["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            write["ConditionExpression"] = "ver = :ver"
            write["ExpressionAttributeValues"] = {":ver": old["ver"]}
        actions = [{kind: {"TableName": self.table_name, **write}}]
        quotas = self._quotas(tenant)
        if delta:
            actions.append(self._usage_change(tenant, delta, quotas.store_bytes - delta if delta > 0 else None))
        with self._errors():
            try:
                self._client.transact_write_items(TransactItems=actions)
            except ClientError as exc:
                if aws_error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = [reason.get("Code") for reason in exc.response.get("CancellationReasons", [])]
                if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                    check_room(tenant, quotas, self.usage(tenant), delta)  # raises unless room appeared meanwhile
                if any(code not in (None, "None", "ConditionalCheckFailed", "TransactionConflict") for code in reasons):
                    raise
                return False
        return True

    @staticmethod
    def _old_size(item: dict[str, Any] | None) -> int:
        """What a stored item counts: 0 for none, and for one written before sizes were kept (never counted)."""
        return int(item["size"]["N"]) if item is not None and "size" in item else 0

    def _write(self, tenant: str, collection: str, doc_id: str, text: str, old: dict[str, Any] | None) -> bool:
        delta = stored_size(text) - self._old_size(old)
        if delta > 0:  # a write the quota cannot hold fails here, before anything is sent
            check_room(tenant, self._quotas(tenant), 0, delta)
        return self._transact(tenant, {"Put": {"Item": self._item(tenant, collection, doc_id, text)}}, old, delta)

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        item = self._read(tenant, collection, doc_id)
        return json.loads(item["doc"]["S"]) if item else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc, max_bytes=self._max_doc(tenant))
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            if self._write(tenant, collection, doc_id, text, self._read(tenant, collection, doc_id, "ver, #size")):
                stored: dict[str, Any] = json.loads(text)
                return stored
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} writes; retry.")

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        max_doc = self._max_doc(tenant)
        encode_doc(check_doc(changes, "Changes"), "Changes", max_bytes=max_doc)
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            item = self._read(tenant, collection, doc_id)
            if item is None:
                return None
            text = encode_doc({**json.loads(item["doc"]["S"]), **changes}, max_bytes=max_doc)
            if self._write(tenant, collection, doc_id, text, item):  # nobody wrote in between, or read again
                stored: dict[str, Any] = json.loads(text)
                return stored
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} updates; retry.")

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            item = self._read(tenant, collection, doc_id, "ver, #size")
            if item is None:
                return False
            delete = {"Delete": {"Key": self._key(tenant, collection, doc_id)}}
            if self._transact(tenant, delete, item, -self._old_size(item)):
                return True
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} deletes; retry.")

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents and at most ``page_bytes`` of them (at least one); DynamoDB answers each
        query with at most 1 MB, and the answers are read one at a time, so the server holds about one page."""
        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
        budget = page_budget(self.page_bytes, max_bytes)
        page: list[dict[str, Any]] = []
        last_id, page_bytes, more = "", 0, False
        start = {"pk": self._pk(tenant, collection), "sk": {"S": after}} if after else None
        while not more:
            query: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": self._pk(tenant, collection)},
                "ProjectionExpression": "sk, doc",
                "ConsistentRead": True,
                "Limit": limit + 1 - len(page),  # one more than asked tells whether there is a next page
            }
            if start:
                query["ExclusiveStartKey"] = start
            with self._errors():
                answer = self._client.query(**query)
            for item in answer.get("Items", []):
                text = item["doc"]["S"]
                size = len(text.encode())
                if len(page) == limit or not within_page(page_bytes, size, budget, len(page)):
                    more = True
                    break
                page.append(json.loads(text))
                last_id, page_bytes = item["sk"]["S"], page_bytes + size
            start = answer.get("LastEvaluatedKey")
            if not start:
                break
        return page, encode_cursor(last_id) if more else None
