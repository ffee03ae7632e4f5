"""Tenants in the single DPMSF DynamoDB table, for deployments whose instances share them (Lambda)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .._backends import aws_client
from .keys import MasterKey, Sealer, load_master_key
from .model import Tenant, TenantNotFound, already_exists, new_tenant
from .model import tenant_id as canonical_tenant_id
from .tenant_quotas import changed_quotas
from .tokens import generate_key

log = logging.getLogger("dpmsf.tenants")


class DynamoDBTenantRegistry:
    """Tenants in the single DPMSF DynamoDB table (``pk="tenant#<uuid>"``, ``sk="tenant"``); boto3 imported lazily.

    ``master_key`` (``DPMSF_MASTER_KEY``) is required: the table is shared by every instance, so a key file made
    on one machine would leave the others unable to read the tenants. An item whose key is still in clear (an
    older version wrote it) is rewritten wrapped the first time it is read, with a condition so a concurrent
    change is never overwritten; ``list()`` (``dpmsf tenant list``) therefore wraps them all.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        master_key: MasterKey | bytes | str | None = None,
    ) -> None:
        if master_key is None or master_key == "":
            raise ValueError(
                f"The DynamoDB tenant registry '{table_name}' needs DPMSF_MASTER_KEY (32 bytes as base64url,"
                " e.g. from dpmsf_core.tenancy.tokens.generate_key()): tenant keys are stored wrapped with it."
            )
        self.table_name = table_name
        self._sealer = Sealer(load_master_key(master_key, None), f"tenant table {table_name}")
        self._client = aws_client("dynamodb", endpoint_url, client=client)

    @staticmethod
    def _key(tid: str) -> dict[str, Any]:
        return {"pk": {"S": f"tenant#{tid}"}, "sk": {"S": "tenant"}}

    def _tenant(self, item: dict[str, Any]) -> Tenant:
        tid, stored = item["id"]["S"], item["key"]["S"]
        key, clear = self._sealer.open(tid, stored)
        if clear:
            self._rewrap(tid, key, stored)
        return Tenant(
            id=tid,
            name=item.get("name", {}).get("S", ""),
            key=key,
            enabled=item["enabled"]["BOOL"],
            admin=item.get("admin", {}).get("BOOL", False),
            quotas={name: _number(value.get("N", "0")) for name, value in item.get("quotas", {}).get("M", {}).items()},
        )

    def _rewrap(self, tid: str, key: str, stored: str) -> None:
        """Replace a clear key with its wrapped form, only if nobody changed it meanwhile."""
        client = self._client
        try:
            client.update_item(
                TableName=self.table_name,
                Key=self._key(tid),
                UpdateExpression="SET #key = :wrapped",
                ConditionExpression="#key = :clear",
                ExpressionAttributeNames={"#key": "key"},
                ExpressionAttributeValues={":wrapped": {"S": self._sealer.seal(tid, key)}, ":clear": {"S": stored}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return
        log.warning(
            "tenant table %s: wrapped the key of tenant %s, stored in clear by an older version", self.table_name, tid
        )

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        tenant = new_tenant(name, tenant_id, key, admin)
        item = {
            **self._key(tenant.id),
            "id": {"S": tenant.id},
            "name": {"S": tenant.name},
            "key": {"S": self._sealer.seal(tenant.id, tenant.key)},
            "enabled": {"BOOL": True},
            "admin": {"BOOL": tenant.admin},
            "created_at": {"N": repr(time.time())},
        }
        client = self._client
        try:
            client.put_item(TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except client.exceptions.ConditionalCheckFailedException:
            raise already_exists(tenant.id) from None
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        answer = self._client.get_item(
            TableName=self.table_name, Key=self._key(canonical_tenant_id(tenant_id)), ConsistentRead=True
        )
        return self._tenant(answer["Item"]) if "Item" in answer else None

    def list(self) -> list[Tenant]:
        items: list[dict[str, Any]] = []
        pages = self._client.get_paginator("scan").paginate(
            TableName=self.table_name,
            FilterExpression="sk = :sk AND begins_with(pk, :prefix)",
            ExpressionAttributeValues={":sk": {"S": "tenant"}, ":prefix": {"S": "tenant#"}},
            ConsistentRead=True,
        )
        for page in pages:
            items.extend(page.get("Items", []))
        items.sort(key=lambda item: (float(item.get("created_at", {}).get("N", "0")), item["id"]["S"]))
        return [self._tenant(item) for item in items]

    def _set(self, tid: str, attribute: str, value: dict[str, Any]) -> Tenant:
        client = self._client
        try:
            answer = client.update_item(
                TableName=self.table_name,
                Key=self._key(tid),
                UpdateExpression="SET #attr = :value",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#attr": attribute},
                ExpressionAttributeValues={":value": value},
                ReturnValues="ALL_NEW",
            )
        except client.exceptions.ConditionalCheckFailedException:
            raise TenantNotFound(tid) from None
        return self._tenant(answer["Attributes"])

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", {"BOOL": False})

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", {"BOOL": True})

    def rotate_key(self, tenant_id: str) -> Tenant:
        tid = canonical_tenant_id(tenant_id)
        return self._set(tid, "key", {"S": self._sealer.seal(tid, generate_key())})

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """The overrides as the map attribute ``quotas`` (``{"store_mb": {"N": "5"}}``)."""
        tid = canonical_tenant_id(tenant_id)
        tenant = self.get(tid)
        if tenant is None:
            raise TenantNotFound(tid)
        quotas = changed_quotas(tenant.quotas, changes)
        return self._set(tid, "quotas", {"M": {name: {"N": repr(value)} for name, value in quotas.items()}})


def _number(text: str) -> float:
    """A DynamoDB number as Python's: ``5`` stays an int, ``2.5`` a float."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
