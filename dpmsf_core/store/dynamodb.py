"""The DynamoDB document store: the single DPMSF table, ``pk="store#<tenant>#<collection>"``, ``sk=<id>``, the
document as a JSON string in ``doc``; boto3 is imported on first use."""

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
from .validation import check_key, check_limit, decode_cursor, encode_cursor, encode_doc

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
    ) -> None:
        self.table_name = table_name
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

    def _item(self, tenant: str, collection: str, doc_id: str, text: str) -> dict[str, Any]:
        return {
            **self._key(tenant, collection, doc_id),
            "doc": {"S": text},
            "ver": {"S": uuid.uuid4().hex},
            "tenant": {"S": tenant},
            "collection": {"S": collection},
            "updated_at": {"N": repr(round(time.time(), 3))},
        }

    def _read(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        with self._errors():
            answer = self._client.get_item(
                TableName=self.table_name,
                Key=self._key(tenant, collection, doc_id),
                ConsistentRead=True,
                ProjectionExpression="doc, ver",
            )
        return answer.get("Item")

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        item = self._read(tenant, collection, doc_id)
        return json.loads(item["doc"]["S"]) if item else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc)
        with self._errors():
            self._client.put_item(TableName=self.table_name, Item=self._item(tenant, collection, doc_id, text))
        return json.loads(text)

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        encode_doc(changes, "Changes")
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            item = self._read(tenant, collection, doc_id)
            if item is None:
                return None
            text = encode_doc({**json.loads(item["doc"]["S"]), **changes})
            with self._errors():
                try:
                    self._client.put_item(
                        TableName=self.table_name,
                        Item=self._item(tenant, collection, doc_id, text),
                        ConditionExpression="ver = :ver",  # nobody wrote in between (and it was not deleted)
                        ExpressionAttributeValues={":ver": item["ver"]},
                    )
                except self._client.exceptions.ConditionalCheckFailedException:
                    continue  # read again and merge into the newer version
            return json.loads(text)
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} updates; retry.")

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        with self._errors():
            answer = self._client.delete_item(
                TableName=self.table_name, Key=self._key(tenant, collection, doc_id), ReturnValues="ALL_OLD"
            )
        return bool(answer.get("Attributes"))

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
        items: list[dict[str, Any]] = []
        start = {"pk": self._pk(tenant, collection), "sk": {"S": after}} if after else None
        while len(items) <= limit:  # one more than asked tells whether there is a next page
            query: dict[str, Any] = {
                "TableName": self.table_name,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": self._pk(tenant, collection)},
                "ProjectionExpression": "sk, doc",
                "ConsistentRead": True,
                "Limit": limit + 1 - len(items),
            }
            if start:
                query["ExclusiveStartKey"] = start
            with self._errors():
                answer = self._client.query(**query)
            items.extend(answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if not start:
                break
        page = items[:limit]
        next_cursor = encode_cursor(page[-1]["sk"]["S"]) if len(items) > limit else None
        return [json.loads(item["doc"]["S"]) for item in page], next_cursor
