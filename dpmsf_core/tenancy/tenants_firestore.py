"""Tenants in a Firestore root collection, for deployments whose instances share them (App Engine, Cloud Run).

``DPMSF_TENANTS=firestore://<collection>[?database=<name>]``; the project is the environment's
(``GOOGLE_CLOUD_PROJECT``, set by App Engine), and ``FIRESTORE_EMULATOR_HOST`` points the client at the emulator.
Each tenant is the document ``tenant#<uuid>`` with ``kind="tenant"``, so the replay store (``token#<jti>``) and the
document store (``store#<tenant>/...``) can share the same root collection, as they share the DynamoDB table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .._backends import FirestorePerProcess, firestore_no_document
from .keys import MasterKey, Sealer, load_master_key
from .model import Tenant, TenantNotFound, already_exists, new_tenant
from .model import tenant_id as canonical_tenant_id
from .tenant_quotas import changed_quotas
from .tokens import generate_key

log = logging.getLogger("dpmsf.tenants")

KIND = "tenant"


class FirestoreTenantRegistry:
    """Tenants as Firestore documents ``tenant#<uuid>``; google-cloud-firestore imported on first use.

    ``master_key`` (``DPMSF_MASTER_KEY``) is required for the same reason as in the DynamoDB registry: every
    instance reads the same documents, so the key that wraps tenant keys cannot be a file on one machine. A key
    stored in clear (written by hand or by an older tool) is wrapped the first time it is read, only if the
    document has not changed since (an ``update_time`` precondition).
    """

    def __init__(
        self,
        collection: str,
        *,
        database: str | None = None,
        client: Any = None,
        master_key: MasterKey | bytes | str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if master_key is None or master_key == "":
            raise ValueError(
                f"The Firestore tenant registry '{collection}' needs DPMSF_MASTER_KEY (32 bytes as base64url,"
                " e.g. from dpmsf_core.tenancy.tokens.generate_key()): tenant keys are stored wrapped with it."
            )
        self.collection = collection
        self._sealer = Sealer(load_master_key(master_key, None), f"tenant collection {collection}")
        self._firestore = FirestorePerProcess(database, client=client, timeout=timeout)

    def _ref(self, tid: str) -> Any:
        return self._firestore.client().collection(self.collection).document(f"tenant#{tid}")

    def _tenant(self, snapshot: Any) -> Tenant:
        data = snapshot.to_dict()
        tid, stored = data["id"], data["key"]
        key, clear = self._sealer.open(tid, stored)
        if clear:
            self._rewrap(snapshot, key)
        return Tenant(
            id=tid,
            name=data.get("name", ""),
            key=key,
            enabled=bool(data["enabled"]),
            admin=bool(data.get("admin", False)),
            quotas=dict(data.get("quotas") or {}),
        )

    def _rewrap(self, snapshot: Any, key: str) -> None:
        """Replace a clear key with its wrapped form, only if nobody changed the document meanwhile."""
        from google.api_core.exceptions import FailedPrecondition, NotFound

        tid = snapshot.get("id")
        client = self._firestore.client()
        try:
            snapshot.reference.update(
                {"key": self._sealer.seal(tid, key)},
                option=client.write_option(last_update_time=snapshot.update_time),
                **self._firestore.options(),
            )
        except (FailedPrecondition, NotFound):
            return
        log.warning(
            "tenant collection %s: wrapped the key of tenant %s, stored in clear by an older version",
            self.collection,
            tid,
        )

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        from google.api_core.exceptions import AlreadyExists

        tenant = new_tenant(name, tenant_id, key, admin)
        document = {
            "kind": KIND,
            "id": tenant.id,
            "name": tenant.name,
            "key": self._sealer.seal(tenant.id, tenant.key),
            "enabled": True,
            "admin": tenant.admin,
            "created_at": time.time(),
        }
        try:
            self._ref(tenant.id).create(document, **self._firestore.options())
        except AlreadyExists:
            raise already_exists(tenant.id) from None
        return tenant

    def get(self, tenant_id: str) -> Tenant | None:
        snapshot = self._ref(canonical_tenant_id(tenant_id)).get(**self._firestore.options())
        return self._tenant(snapshot) if snapshot.exists else None

    def list(self) -> list[Tenant]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self._firestore.client().collection(self.collection).where(filter=FieldFilter("kind", "==", KIND))
        snapshots = list(query.stream(**self._firestore.options()))
        snapshots.sort(key=lambda s: (float(s.get("created_at") or 0), s.get("id")))
        return [self._tenant(s) for s in snapshots]

    def _set(self, tid: str, field: str, value: Any) -> Tenant:
        """Change one field of an existing tenant (``update()`` fails on a missing document), then read it back."""
        from google.api_core.exceptions import NotFound

        ref = self._ref(tid)
        try:
            ref.update({field: value}, **self._firestore.options())
        except NotFound as exc:
            if not firestore_no_document(exc):
                raise  # a missing database, not a missing tenant
            raise TenantNotFound(tid) from None
        snapshot = ref.get(**self._firestore.options())
        if not snapshot.exists:  # deleted right after the update
            raise TenantNotFound(tid)
        return self._tenant(snapshot)

    def disable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", False)

    def enable(self, tenant_id: str) -> Tenant:
        return self._set(canonical_tenant_id(tenant_id), "enabled", True)

    def rotate_key(self, tenant_id: str) -> Tenant:
        tid = canonical_tenant_id(tenant_id)
        return self._set(tid, "key", self._sealer.seal(tid, generate_key()))

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """The overrides as the map field ``quotas``, replaced whole."""
        tid = canonical_tenant_id(tenant_id)
        tenant = self.get(tid)
        if tenant is None:
            raise TenantNotFound(tid)
        return self._set(tid, "quotas", changed_quotas(tenant.quotas, changes))
