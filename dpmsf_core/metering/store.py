"""A tenant's document-store traffic, counted: operations, and the JSON bytes of the documents written and read.

``context.metered_store`` puts this in front of the backend for the calls of a tenant (its sandboxed module's
store requests, or an in-process plugin serving the tenant's request), so both paths are counted in one place.
Bytes are measured as the store's own size limit counts them (compact JSON, UTF-8), after the operation: the
figure a DynamoDB bill is made of.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

_COUNTED = frozenset({"get", "put", "update", "delete", "list"})
_SIZE_OPTIONS: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False, "default": str}


def json_bytes(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON (0 for None)."""
    if value is None:
        return 0
    return len(json.dumps(value, **_SIZE_OPTIONS).encode())


class Counter(Protocol):
    """What is counted into: ``metering.UsageMeter``, named here by shape (``context`` imports this module, and
    the meter's module leads back to ``context``)."""

    def count(self, tenant: str, **counts: float) -> None: ...


class MeteredStore:
    """A StoreBackend that counts each operation of ``tenant`` in ``meter`` (even one that fails: it was asked).

    Methods are forwarded whatever their parameters, so a backend that grows one (a byte budget for ``list``)
    is metered the same without a change here.
    """

    def __init__(self, backend: object, tenant: str, meter: Counter) -> None:
        self._backend = backend
        self._tenant = tenant
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._backend, name)
        if name not in _COUNTED:
            return method  # ``close`` and the like: the backend's own, uncounted

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = None
            try:
                result = method(*args, **kwargs)
                return result
            finally:
                moved = None if name == "delete" else result[0] if isinstance(result, tuple) else result
                self._meter.count(self._tenant, store_ops=1, store_bytes=json_bytes(moved))

        return counted
