"""``/rest/admin/plugins/<name>``: upload, read, list and delete plugin modules over REST, with a token."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..context import metered
from ..errors import Conflict, MethodNotAllowed, NotFound
from ..exchange import Receive, Responder, Scope, read_body
from ..loading.registry import Registry
from ..loading.tenant_index import RemoteIndex, TenantIndex
from ..security import LazySecurity, Security, bearer, require
from .ledger import UploadLedger
from .reading import UploadBudget, UploadReader
from .stores import PluginStore

if TYPE_CHECKING:
    from ..loading.snapshot import Snapshot
    from ..sources.mirror import MirroredSource
    from .reading import ReadUpload


@dataclass(frozen=True)
class UploadTarget:
    """Where uploads are written (``store``), the folder the registry reads them from, and the S3 source to
    refresh at once after a change (None for a folder)."""

    store: PluginStore
    folder: str
    source: MirroredSource | None = None


class PluginUpload:
    """The admin uploads trusted modules; a tenant's upload is always stamped with that tenant's id."""

    def __init__(self, target: UploadTarget, settings: Settings, registry: Registry, security: LazySecurity) -> None:
        self.store = target.store
        self.folder = target.folder
        self.source = target.source
        self.settings = settings
        self.registry = registry
        self.security = security
        index = registry.indexes.for_folder(self.folder) or TenantIndex(self.folder)
        if isinstance(self.store, RemoteIndex):  # an object store: the index travels with the modules
            index.remote = self.store
        self.ledger = UploadLedger(self.store, index)
        budget = UploadBudget(cpu_seconds=settings.upload_cpu, wall_seconds=4 * settings.upload_cpu + 2)
        self.reader = UploadReader(budget, settings.upload_max)
        self._commit_lock = threading.Lock()
        self.changes: Any = None  # changes.PluginChanges: tells the other replicas (set by create_app)

    async def handle(
        self, scope: Scope, receive: Receive, responder: Responder, headers: dict[str, str], rest: str
    ) -> None:
        """Who uploads (a token is required), then the list or one module: each its own step."""
        security = self.security()
        tenant = self._uploader(security, headers, responder)
        admin = security.is_admin(tenant)
        parts = [p for p in rest.split("/") if p]
        if not parts or parts[0] != "plugins" or len(parts) > 2:
            raise NotFound("Admin routes: /rest/admin/plugins/ and /rest/admin/plugins/<name>.")
        if len(parts) == 1:
            await self._serve_list(scope["method"], responder, tenant, admin)
            return
        await self._serve_module(scope, receive, responder, headers, parts[1], tenant, admin)

    def _uploader(self, security: Security, headers: dict[str, str], responder: Responder) -> str:
        """The caller's tenant id, from a token it must have (401 without), and the next token on the answer."""
        token = bearer(headers)
        tenant = require(security.verify(token) if token else None)
        next_token = security.next_token(tenant)
        if next_token:
            responder.add_header("X-DPMSF-Next-Token", next_token)
        return tenant

    async def _serve_list(self, method: str, responder: Responder, tenant: str, admin: bool) -> None:
        """``/rest/admin/plugins/``: the modules this caller may see (the admin: all), GET only."""
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed("The plugin list answers GET.", ["GET", "HEAD"])
        import asyncio

        await responder.json(200, {"results": await asyncio.to_thread(self._list, tenant, admin)})

    async def _serve_module(
        self,
        scope: Scope,
        receive: Receive,
        responder: Responder,
        headers: dict[str, str],
        raw_name: str,
        tenant: str,
        admin: bool,
    ) -> None:
        """``/rest/admin/plugins/<name>``: read, replace or delete one module; one another owner holds is not
        there for this caller (404), and its name cannot be taken (409)."""
        from .validation import check_module_name

        name = check_module_name(raw_name)
        import asyncio  # here: a cold start without uploads does not pay for it

        # the store (a network call for S3) and the index (a file read) are asked in a thread, never on the loop
        stored, owner = await asyncio.to_thread(self._stored, name)
        existing = stored[0] if stored else None
        mine = admin or (existing is not None and owner == tenant)
        method = scope["method"]
        if method in ("GET", "HEAD"):
            if existing is None or not mine:
                raise NotFound(f"No uploaded plugin '{name}'.")
            await responder.send(200, existing.encode("utf-8"), b"text/x-python; charset=utf-8")
        elif method == "PUT":
            if existing is not None and not mine:
                raise Conflict(f"The module name '{name}' is taken by another owner; choose another name.")
            await self._put(scope, receive, responder, headers, name, tenant, admin, stored)
        elif method == "DELETE":
            if existing is None or not mine:
                raise NotFound(f"No uploaded plugin '{name}'.")
            await asyncio.to_thread(self._delete, name)
            await responder.send(204, b"", b"text/plain")
        else:
            raise MethodNotAllowed(f"Plugin '{name}' answers GET, PUT and DELETE.", ["GET", "HEAD", "PUT", "DELETE"])

    async def _put(
        self,
        scope: Scope,
        receive: Receive,
        responder: Responder,
        headers: dict[str, str],
        name: str,
        tenant: str,
        admin: bool,
        stored: Any,
    ) -> None:
        """An upload: read in a child process within its budget (metered whatever the outcome), then committed;
        201 for a new module, 200 for a replaced one."""
        import asyncio

        body = await read_body(scope, receive, headers, self.settings.upload_max)
        try:
            read = await self.reader.read(name, body, tenant, admin)  # a child process, within its budget
        finally:  # metering: every upload read costs its bytes, refused (422, 429) or accepted
            metered(tenant, upload_bytes=len(body))
        status = await asyncio.to_thread(self._commit, name, tenant, admin, read, stored)
        existing = stored[0] if stored else None
        await responder.json(
            201 if existing is None else 200,
            {
                "results": {
                    "name": name,
                    "tenant": None if admin else tenant,
                    "url": f"/rest/services/{read.alias or name}/",
                    **status,
                }
            },
        )

    def _stored(self, name: str) -> tuple[tuple[str, str] | None, str | None]:
        """Module ``name`` as stored (source, version) and its owner. Blocks: runs in a thread."""
        stored = self.store.get_versioned(name)
        return stored, self.ledger.owner(name, stored[0] if stored else None)

    def _commit(
        self, name: str, tenant: str, admin: bool, read: ReadUpload, stored: tuple[str, str] | None
    ) -> dict[str, Any]:
        """Check, index, store and load an upload that was read: in a thread (the index rewrite and the registry
        rebuild once stalled every request), one upload at a time (the quota check and the store agree). The
        module is live when this returns, as the answer says."""
        with self._commit_lock:
            source, alias = read.source, read.alias
            share = None
            if not admin:
                _check_names_free(self.registry.snapshot, {name, alias or name}, tenant)
                quotas = self.security.quotas.for_tenant(tenant)
                if self.source is not None:  # count what the bucket holds, not what this instance mirrored
                    self.source.sync(force=True)
                self.ledger.check_quota(tenant, name, len(source.encode("utf-8")), quotas)
                share = max(256 << 10, quotas.upload_bytes // 8)  # its index entries, in proportion to its quota
            else:  # the admin's module would lose a public name another trusted file serves: say so, store nothing
                _check_trusted_name_free(self.registry.snapshot, alias or name, self.folder, name)
            # first the index entry, then the module: no rebuild in any server process parses it again
            self.ledger.index.put(name, source, tenant, alias, read.description, share)
            # Conditional: created only if still absent, replaced only if still the version whose owner we checked.
            self.store.put(name, source, expect=stored[1] if stored else None)
            status = self._reload(name)
        self._announce(name, "put")
        return status

    def _delete(self, name: str) -> None:
        with self._commit_lock:
            self.store.delete(name)
            self.ledger.index.drop(name)
            self._reload(name)
        self._announce(name, "delete")

    def _announce(self, name: str, change: str) -> None:
        """The other replicas re-list the shared source now, not at their next poll (when a server carries it)."""
        if self.changes is not None:
            self.changes.announce(name, change)

    def _list(self, tenant: str, admin: bool) -> list[dict[str, Any]]:
        """Every module ``tenant`` may see, with its owner. Blocks: runs in a thread."""
        out = []
        for name in self.store.list():
            owner = self.ledger.listed_owner(name)  # a stat per module, not a read
            if owner is None:
                owner = self.ledger.owner(name, self.store.get(name))
            if admin or owner == tenant:
                out.append({"name": name, "tenant": owner})
        return out

    def _reload(self, name: str) -> dict[str, Any]:
        if self.source is not None:
            self.source.sync(force=True)
        snapshot = self.registry.refresh()
        report = next((r for r in snapshot.reports if r.real_name == name and r.folder == self.folder), None)
        if report is None:
            return {"status": "removed"}
        return {"status": report.status, "error": report.error, "endpoints": report.endpoints}


def _check_names_free(snapshot: Snapshot, names: set[str], tenant: str) -> None:
    """A tenant may not take a public name (module name or alias) that another owner serves or has stored, nor
    the name of a trusted API: in ``/rest/services/<name>/...`` a module name would capture the API's calls."""
    trusted_apis = {api for api, endpoints in snapshot.by_api.items() if any(ep.trusted for ep in endpoints)}
    taken_api = sorted(trusted_apis & names)
    if taken_api:
        raise Conflict(f"The name '{taken_api[0]}' is the name of a trusted API; choose another name or __alias__.")
    for report in snapshot.reports:
        if report.tenant == tenant:
            continue
        taken = {report.name, report.real_name} & names
        if taken:
            raise Conflict(
                f"The module name '{sorted(taken)[0]}' is taken by another owner; choose another name"
                + (" or __alias__." if report.name in names else ".")
            )


def _check_trusted_name_free(snapshot: Snapshot, public: str, folder: str, name: str) -> None:
    """409 when another trusted module (a bundled one, say) serves ``public``: this upload would never load."""
    holder = snapshot.modules.get(public)
    if holder is None or not holder.trusted:
        return
    if os.path.realpath(holder.path) == os.path.realpath(os.path.join(folder, f"{name}.py")):
        return  # this very upload, replaced
    what = "__alias__" if public != name else "module name"
    raise Conflict(
        f"The {what} '{public}' is served by {os.path.basename(holder.path)} already; "
        f"this module would not load. Choose another {'__alias__' if public != name else 'name'}."
    )


def plan_upload(settings: Settings, folders: list[str], sources: list[MirroredSource]) -> UploadTarget | None:
    """Where uploads go: ``DPMSF_UPLOAD_DIR``, else the first S3 or Cloud Storage source, else ``<state dir>/uploads``.

    A new folder is added to ``folders`` (the plugin path) so that uploads are live on the next request.
    """
    if not settings.admin_id:
        return None
    from .stores import FolderPluginStore

    if settings.upload_dir:
        folder = os.path.abspath(settings.upload_dir)
    elif sources:
        from ..sources import upload_store

        return UploadTarget(upload_store(sources[0]), str(sources[0].cache_dir), sources[0])
    else:
        folder = os.path.abspath(os.path.join(settings.state_dir, "uploads"))
    from ..tenancy.state_files import claim_state_dir  # its modules run as trusted code: ours alone, or no start

    lambda_tmp = folder.startswith("/tmp/") and bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))  # its own, fresh
    if not settings.upload_dir:
        claim_state_dir(settings.state_dir, fresh_ok=lambda_tmp)
    folder = str(claim_state_dir(folder, what="Upload folder", fresh_ok=lambda_tmp))
    if folder not in folders:
        folders.append(folder)
    return UploadTarget(FolderPluginStore(folder), folder)
