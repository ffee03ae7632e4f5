"""Tokens and tenants for the app: built on first need, so an app without them pays nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import Unauthorized
from .tenancy.quotas import QuotaBook

if TYPE_CHECKING:
    from .tenancy.model import TenantRegistry
    from .tenancy.replay import ReplayStore

log = logging.getLogger("dpmsf.security")


class Security:
    """Verifies ``Authorization: Bearer`` tokens (single use) and mints the next one for the same tenant.

    The registry gets ``DPMSF_MASTER_KEY`` (tenant keys are stored wrapped) and the state directory (its SQLite
    files are private there); the verifier refuses tokens that live longer than ``DPMSF_TOKEN_MAX_TTL``.
    """

    def __init__(
        self, settings: Settings, tenants: TenantRegistry | None = None, replay: ReplayStore | None = None
    ) -> None:
        from .tenancy.replay import make_replay_store
        from .tenancy.tenants import key_lookup, make_tenant_registry
        from .tenancy.tokens import TokenVerifier

        self.settings = settings
        self.tenants = (
            tenants
            if tenants is not None
            else make_tenant_registry(
                settings.tenants_url, master_key=settings.master_key, state_dir=settings.state_dir
            )
        )
        self.replay = (
            replay if replay is not None else make_replay_store(settings.replay_store, state_dir=settings.state_dir)
        )
        if settings.admin_id:
            ensure_admin(self.tenants, settings.admin_id, settings.admin_key)
        self._key_for = key_lookup(self.tenants, cache_seconds=settings.key_cache_seconds)
        self.verifier = TokenVerifier(
            self._key_for, self.replay, skew=settings.token_skew, max_ttl=settings.token_max_ttl
        )

    def verify(self, authorization: str) -> str:
        """The tenant of a valid, unused token; 401, or 403 for an authentic token of a disabled tenant."""
        return self.verifier.verify(authorization).tenant

    def next_token(self, tenant: str) -> str | None:
        """A fresh token for an enabled tenant with a usable key (the ``X-DPMSF-Next-Token`` header), else None."""
        from .tenancy.tokens import TenantKey, mint

        found = self._key_for(tenant)
        key: bytes | None
        if isinstance(found, TenantKey):
            key = found.key if found.enabled else None
        else:
            key = found
        if not key:
            return None
        return mint(tenant, key, ttl=self.settings.token_ttl, max_ttl=self.settings.token_max_ttl)

    def is_admin(self, tenant: str | None) -> bool:
        return tenant is not None and tenant == self.settings.admin_id


def ensure_admin(tenants: TenantRegistry, admin_id: str, admin_key: str | None) -> None:
    """The ``ADMIN_ID`` tenant exists in the registry (with ``DPMSF_ADMIN_KEY`` when given)."""
    if tenants.get(admin_id) is not None:
        return
    try:
        tenants.add(name="admin", tenant_id=admin_id, key=admin_key, admin=True)
        log.info("created the admin tenant %s", admin_id)
    except ValueError:  # another worker created it first
        if tenants.get(admin_id) is None:
            raise


def bearer(headers: dict[str, str]) -> str | None:
    """The Authorization header when it carries a Bearer token (other schemes are left to plugins)."""
    value = headers.get("authorization")
    if value is None or not value[:7].lower() == "bearer ":
        return None
    return value


def require(tenant: str | None) -> str:
    if tenant is None:
        raise Unauthorized("missing bearer token")
    return tenant


class LazySecurity:
    """The app's Security, built on first need (a token arrives, or an endpoint requires one): an app that never
    sees a token never opens the tenant registry or the replay store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._security: Security | None = None
        self._lock = threading.Lock()
        # every tenant's quotas: the operator's defaults, with each tenant's stored overrides laid over them, read
        # from the tenant registry only when a tenant's code needs them (cached as long as tenant keys)
        self.quotas = QuotaBook(settings.quotas, lookup=self._stored_quotas, ttl=settings.key_cache_seconds)

    def __call__(self) -> Security:
        security = self._security
        if security is None:
            with self._lock:
                if self._security is None:
                    self._security = Security(self.settings)
                security = self._security
        return security

    def _stored_quotas(self, tenant: str) -> Mapping[str, Any] | None:
        """A tenant's quota overrides; None (the defaults) for the anonymous tenant ``_`` and any id that is no
        tenant's, without opening the registry."""
        from .tenancy.tenants import tenant_id

        try:
            tid = tenant_id(tenant)
        except ValueError:
            return None
        found = self().tenants.get(tid)
        return found.quotas if found is not None else None

    def tenant_for_read(self, headers: dict[str, str]) -> str | None:
        """The caller of a read-only document (``__dir__``, ``/openapi.json``): None when anonymous is allowed."""
        token = bearer(headers)
        if token is None:
            if self.settings.require_tokens:
                raise Unauthorized("missing bearer token")
            return None
        return self().verify(token)
