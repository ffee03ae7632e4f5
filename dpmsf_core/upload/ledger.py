"""Who owns which upload, and how much each tenant stores: read from the tenant index, not by parsing modules.

An owner used to be found by parsing the stored module on the event loop (a second for a hostile one, on every
upload and for every module of a listing). The tenant index, written at upload time, says it for the file whose
bytes still hash to its entry; only a module the index does not describe is parsed, in a thread.
"""

from __future__ import annotations

import hashlib
import os

from ..errors import PluginError
from ..loading.discovery import metadata_from_source, stamped_owner, stamped_owner_of
from ..loading.tenant_index import TenantIndex
from ..tenancy.quotas import QuotaExceeded, Quotas
from .stores import PluginStore


class UploadLedger:
    """The uploads of one store, with its local folder's tenant index."""

    def __init__(self, store: PluginStore, index: TenantIndex) -> None:
        self.store = store
        self.index = index

    def owner(self, name: str, source: str | None) -> str | None:
        """The tenant stamped in ``source`` (module ``name``'s stored text), or None for none or unreadable.
        Reads the index and may parse: call it from a thread."""
        if source is None:
            return None
        entry = self.index.entries().get(name)
        raw = source.encode("utf-8")
        if entry is not None and entry.get("sha256") == hashlib.sha256(raw).hexdigest():
            tenant = entry.get("tenant")
            return tenant if isinstance(tenant, str) else None
        return _parsed_owner(source)  # not indexed: an upload from before the index

    def listed_owner(self, name: str) -> str | None:
        """The owner of module ``name`` for a listing: its index entry when the local file has the entry's size
        (a stat, where reading every module to hash it cost a listing megabytes per module); else None."""
        entry = self.index.entries().get(name)
        if entry is None or not isinstance(entry.get("tenant"), str):
            return None
        try:
            size = os.stat(os.path.join(self.index.folder, f"{name}.py")).st_size
        except OSError:
            return None
        return entry["tenant"] if entry.get("size") == size else None

    def check_quota(self, tenant: str, name: str, size: int, quotas: Quotas) -> None:
        """QuotaExceeded if storing ``size`` bytes as ``name`` takes ``tenant`` over its module count or bytes;
        a module replaced counts with its new size only."""
        count, total = self._usage(tenant, name)
        if count + 1 > quotas.modules:
            raise QuotaExceeded(
                "modules",
                f"Tenant stores {count} modules; the quota is {quotas.modules} (DPMSF_TENANT_MODULES). "
                "Delete one or ask the operator for more; nothing was stored.",
                status=409,
            )
        if total + size > quotas.upload_bytes:
            raise QuotaExceeded(
                "upload_mb",
                f"Tenant's modules would take {total + size} bytes; the quota is {quotas.upload_bytes} bytes "
                f"({quotas.upload_mb:g} MB, DPMSF_TENANT_UPLOAD_MB). Nothing was stored.",
                status=413,
            )

    def _usage(self, tenant: str, leaving_out: str) -> tuple[int, int]:
        """(modules, bytes) ``tenant`` stores in the folder, ``leaving_out`` aside: a stat per module, its owner
        from the index entry of that size, else from the stamp line (never a parse)."""
        entries = self.index.entries()
        count = total = 0
        for name in self.store.list():
            if name == leaving_out:
                continue
            path = os.path.join(self.index.folder, f"{name}.py")
            try:
                size = os.stat(path).st_size
            except OSError:  # stored (an object store's listing) but not mirrored here: ask the store
                counted = self._remote(name)
                if counted is not None and counted[0] == tenant:
                    count += 1
                    total += counted[1]
                continue
            entry = entries.get(name)
            owner = entry.get("tenant") if entry is not None and entry.get("size") == size else stamped_owner(path)
            if owner == tenant:
                count += 1
                total += size
        return count, total

    def _remote(self, name: str) -> tuple[str, int] | None:
        """(owner, bytes) of module ``name`` from the store itself; None if it is gone meanwhile."""
        source = self.store.get(name)
        if source is None:
            return None
        raw = source.encode("utf-8")
        return stamped_owner_of(raw), len(raw)


def _parsed_owner(source: str) -> str | None:
    try:
        return metadata_from_source(source).tenant
    except PluginError:
        return None
