"""Per-tenant quotas: what one tenant may make the server hold or spend, set globally and per tenant.

The operator sets defaults by environment (``DPMSF_TENANT_*``, ``DPMSF_STORE_MAX_DOC``); ``dpmsf tenant quota ID
--...`` stores overrides with the tenant (every tenant registry keeps them). ``Quotas.merged`` lays a tenant's
overrides over the defaults; a value nobody set keeps its default. Exceeding one is a ``QuotaExceeded``:
problem+json naming the quota, with ``Retry-After`` for the rate and concurrency quotas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import DPMSFError

__all__ = ["QUOTA_ENV", "QuotaBook", "QuotaExceeded", "Quotas"]

log = logging.getLogger("dpmsf.quotas")


@dataclass(frozen=True)
class Quotas:
    """One tenant's limits; the defaults are the README's table."""

    modules: int = 100  # modules a tenant may store
    upload_mb: float = 10.0  # bytes of modules a tenant may store, all modules together
    store_mb: float = 100.0  # bytes of documents a tenant may keep in the document store
    max_doc: int = 400_000  # bytes of one document (DynamoDB's item limit)
    concurrency: int = 2  # a tenant's calls running at once (a bounded queue waits beyond that)
    rate: float = 0.0  # requests per second, averaged over a one-second burst; 0 = no limit

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * 1024 * 1024)

    @property
    def store_bytes(self) -> int:
        return int(self.store_mb * 1024 * 1024)

    def merged(self, overrides: Mapping[str, Any] | None) -> Quotas:
        """These defaults with a tenant's stored overrides laid over; unknown names are ignored."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {name: _coerce(name, value) for name, value in overrides.items() if name in known}
        return replace(self, **changes) if changes else self

    def as_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Quotas:
        """The operator's defaults; ValueError naming the first bad variable."""
        values: dict[str, Any] = {}
        for name, variable in QUOTA_ENV.items():
            raw = env.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                values[name] = _coerce(name, raw.strip())
            except ValueError as exc:
                raise ValueError(f"Config '{variable}' has value '{raw}'. {exc}") from None
        return cls(**values)


QUOTA_ENV: dict[str, str] = {
    "modules": "DPMSF_TENANT_MODULES",
    "upload_mb": "DPMSF_TENANT_UPLOAD_MB",
    "store_mb": "DPMSF_TENANT_STORE_MB",
    "max_doc": "DPMSF_STORE_MAX_DOC",
    "concurrency": "DPMSF_TENANT_CONCURRENCY",
    "rate": "DPMSF_TENANT_RATE",
}
_INTEGERS = {"modules", "max_doc", "concurrency"}
_MINIMUM = {"concurrency": 1, "max_doc": 1}


def _coerce(name: str, value: Any) -> int | float:
    """A quota value as its field's type, checked: numbers only, not negative, at least the field's minimum."""
    if isinstance(value, bool):
        raise ValueError("Not a number.")
    try:
        number: int | float = int(value) if name in _INTEGERS else float(value)
    except (TypeError, ValueError):
        raise ValueError("Not a whole number." if name in _INTEGERS else "Not a number.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("Not a finite number.")
    minimum = _MINIMUM.get(name, 0)
    if number < minimum:
        raise ValueError(f"Must be at least {minimum}.")
    return number


class QuotaExceeded(DPMSFError):
    """A tenant went over one of its quotas: nothing was stored or run. 429 for rate and concurrency (with
    ``Retry-After``), 413 for sizes, 409 for counts; ``quota`` names which one."""

    status, title, slug = 429, "Quota Exceeded", "quota-exceeded"

    def __init__(
        self, quota: str, detail: str, *, status: int = 429, retry_after: float | None = None, **kw: Any
    ) -> None:
        headers = dict(kw.pop("headers", None) or {})
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        extra = {"quota": quota, **(kw.pop("extra", None) or {})}
        super().__init__(detail, status=status, headers=headers, extra=extra, **kw)
        self.quota = quota


class QuotaBook:
    """Each tenant's quotas, read through ``lookup`` (tenant id -> its stored overrides, or None) and cached for
    ``ttl`` seconds, as tenant keys are: a quota changed by ``dpmsf tenant quota`` holds everywhere within that.

    Without a lookup (no tenant registry configured) every tenant has the defaults. A lookup that fails keeps
    the last value it gave, or the defaults: a registry outage must not lift or tighten anyone's limits.
    """

    def __init__(
        self,
        defaults: Quotas | None = None,
        lookup: Callable[[str], Mapping[str, Any] | None] | None = None,
        ttl: float = 5.0,
    ) -> None:
        self.defaults = defaults or Quotas()
        self._lookup = lookup
        self._ttl = ttl
        self._cache: dict[str, tuple[float, Quotas]] = {}

    def for_tenant(self, tenant: str | None) -> Quotas:
        if tenant is None or self._lookup is None:
            return self.defaults
        now = time.monotonic()
        cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            quotas = self.defaults.merged(self._lookup(tenant))
        except Exception as exc:  # any backend's failure: the last known limits stay
            log.warning("quotas of tenant %s could not be read, keeping the last known: %s", tenant, exc)
            quotas = cached[1] if cached is not None else self.defaults
        if len(self._cache) > 10_000:  # bounded: tenants are many only when ids are forged; drop the oldest half
            for key in sorted(self._cache, key=lambda k: self._cache[k][0])[:5_000]:
                del self._cache[key]
        self._cache[tenant] = (now, quotas)
        return quotas
