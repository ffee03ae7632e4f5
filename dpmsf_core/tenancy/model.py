"""What a tenant is, and what every tenant registry answers: the model its backends (``tenants``,
``tenants_dynamodb``, ``tenants_firestore``, ``tenants_postgres``) share, apart from the factory that picks one."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .tokens import decode_key, encode_key, generate_key

__all__ = ["Tenant", "TenantNotFound", "TenantRegistry", "already_exists", "new_tenant", "tenant_id"]


@dataclass(frozen=True)
class Tenant:
    """One tenant; ``key`` is base64url text from ``tokens.generate_key()`` and is kept out of ``repr``.

    ``key`` is ``""`` when the stored key cannot be unwrapped (the registry was written under another master
    key): such a tenant cannot mint or verify tokens until its key is rotated or the right master key is set.
    """

    id: str
    key: str = field(repr=False)
    enabled: bool
    name: str = ""
    admin: bool = False
    quotas: dict[str, float] = field(default_factory=dict, hash=False)  # overrides of the operator's defaults


class TenantNotFound(LookupError):
    """No tenant has this id."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"No tenant with id '{tenant}'.")
        self.tenant = tenant


def tenant_id(value: str) -> str:
    """The canonical (lowercase, hyphenated) form of a tenant UUID; ValueError quoting the bad value."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"Tenant id {value!r} is not a UUID. Expected e.g. '{uuid.uuid4()}'.") from None


def new_tenant(name: str, tid: str | None, key: str | None, admin: bool) -> Tenant:
    key = encode_key(decode_key(key)) if key is not None else generate_key()  # ValueError before anything is stored
    return Tenant(
        id=tenant_id(tid) if tid is not None else str(uuid.uuid4()), key=key, enabled=True, name=name, admin=admin
    )


def already_exists(tenant: str) -> ValueError:
    return ValueError(f"Tenant '{tenant}' already exists.")


class TenantRegistry(Protocol):
    """Where tenants are kept; every method validates the id and raises TenantNotFound for unknown ones."""

    def add(self, name: str = "", tenant_id: str | None = None, key: str | None = None, admin: bool = False) -> Tenant:
        """Create an enabled tenant (new UUID and key unless given); ValueError if the id exists."""
        ...

    def get(self, tenant_id: str) -> Tenant | None: ...

    def list(self) -> list[Tenant]: ...

    def disable(self, tenant_id: str) -> Tenant: ...

    def enable(self, tenant_id: str) -> Tenant: ...

    def rotate_key(self, tenant_id: str) -> Tenant:
        """Give the tenant a new key; tokens minted with the old one stop working."""
        ...

    def set_quotas(self, tenant_id: str, changes: Mapping[str, Any]) -> Tenant:
        """Change the tenant's quota overrides (None clears one); servers see them within ``DPMSF_KEY_CACHE``."""
        ...
