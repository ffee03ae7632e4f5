"""A small per-tenant document store, so a plugin's data (the todo API's tasks) outlives requests and instances.

Plugins use collections; the tenant comes from the request being served::

    from dpmsf_core import store

    tasks = store.collection("tasks")
    task = tasks.create({"title": "write docs", "done": False})   # -> {"id": "3f2a...", "title": ..., "done": False}
    tasks.update(task["id"], {"done": True})
    page, cursor = tasks.list(limit=50)                            # pass ``cursor`` back for the next page

Documents are JSON objects (dicts) of at most the tenant's ``max_doc`` quota (``DPMSF_STORE_MAX_DOC``, default
``MAX_DOC_BYTES``); ids are non-empty strings of up to 256 characters of valid Unicode; collection names match
``[A-Za-z0-9_.-]{1,64}``. Each document belongs to one tenant: the caller's tenant, or the literal ``"_"``
(``ANONYMOUS_TENANT``) for anonymous, local and admin use. A tenant's documents together may take its
``store_mb`` quota (``DPMSF_TENANT_STORE_MB``; each document counts its JSON bytes plus 100). Invalid input raises
UnprocessableArguments (422); a write over a quota raises QuotaExceeded (413, naming the quota) and stores
nothing; a backend that cannot be reached raises ServiceUnavailable (503) and writes nothing. A ``list`` page
holds at most ``limit`` documents and ``MAX_PAGE_BYTES`` of them (always at least one), so a listing never makes
the server hold more than about a page: pass the cursor back for the rest.

Backends, chosen with ``make_store(url)``; the app opens its own (``DPMSF_STORE``) and hands it to plugin code
through the request's context, so two apps in one process never share one:

- ``sqlite:///path.db``      one machine, several worker processes (WAL; ``sqlite:////abs/path.db`` is absolute),
- ``dynamodb://table-name``  the single DPMSF table: ``pk="store#<tenant>#<collection>"``, ``sk=<id>``, the
                             document as a JSON string in ``doc``; add ``?endpoint_url=http://...`` for a local one,
- ``firestore://collection`` a Firestore root collection, a subcollection per tenant and collection
                             (``<collection>/store#<tenant>/<name>/<id>``); ``?database=name`` for a named database,
                             the project from ``GOOGLE_CLOUD_PROJECT``, the emulator from ``FIRESTORE_EMULATOR_HOST``,
- ``postgresql://user:password@host:5432/dbname``  replicas anywhere (Kubernetes, Knative, Cloud Run): tables
                             ``dpmsf_store`` and ``dpmsf_store_usage``, made on first use
                             (``pip install 'dpmsf[postgres]'``).

The app's default is ``sqlite:///.dpmsf/store.db`` (its state folder). Outside a request of an app (a script, a
test calling a function directly) there is no store, unless the code runs in ``with store.using(backend):``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from .._backends import parse_backend_url
from ..context import current_store, current_tenant, metered_store, reset_store, set_store
from ..errors import ServiceUnavailable, UnprocessableArguments
from .validation import (
    ANONYMOUS_TENANT,
    MAX_DOC_BYTES,
    MAX_ID_LENGTH,
    MAX_LIMIT,
    MAX_PAGE_BYTES,
    QuotaLookup,
    check_doc,
    check_key,
)

if TYPE_CHECKING:
    from .dynamodb import DynamoDBStore
    from .firestore import FirestoreStore
    from .postgres import PostgresStore
    from .sqlite import SQLiteStore

_BACKENDS = {
    "DynamoDBStore": "dynamodb",
    "FirestoreStore": "firestore",
    "PostgresStore": "postgres",
    "SQLiteStore": "sqlite",
}

__all__ = [
    "MAX_DOC_BYTES",
    "MAX_ID_LENGTH",
    "MAX_LIMIT",
    "MAX_PAGE_BYTES",
    "ANONYMOUS_TENANT",
    "Collection",
    "DynamoDBStore",
    "FirestoreStore",
    "PostgresStore",
    "SQLiteStore",
    "StoreBackend",
    "collection",
    "get_backend",
    "make_store",
    "using",
]

log = logging.getLogger("dpmsf.store")


class StoreBackend(Protocol):
    """Where documents live; every method is keyed by (tenant, collection, id) and validates its input."""

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; returns the stored document."""
        ...

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Shallow-merge ``changes`` into the document; None if there is no such document."""
        ...

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        """True if a document was deleted."""
        ...

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents in id order, fewer when they pass the backend's page bytes (or ``max_bytes``, if
        smaller; at least one document), and a cursor for the next page (None on the last one)."""
        ...

    def usage(self, tenant: str) -> int:
        """Bytes the tenant stores: what its ``store_mb`` quota counts (JSON bytes plus 100 a document)."""
        ...


# -- choosing and installing a backend ---------------------------------------------------------------------------


def make_store(url: str, quotas: QuotaLookup | None = None) -> StoreBackend:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``dynamodb://table[?endpoint_url=...]`` or
    ``firestore://collection[?database=name]`` or ``postgresql://user:password@host:port/dbname``; ``quotas`` gives
    each tenant's (default: the environment's)."""
    found = parse_backend_url(url, "Store URL", ("sqlite", "dynamodb", "firestore", "postgresql"))
    if found.kind == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(found.target, quotas=quotas)
    if found.kind == "firestore":
        from .firestore import FirestoreStore

        return FirestoreStore(found.target, database=found.database, quotas=quotas)
    if found.kind == "postgresql":
        from .postgres import PostgresStore

        return PostgresStore(found.target, quotas=quotas)
    from .dynamodb import DynamoDBStore

    return DynamoDBStore(found.target, endpoint_url=found.endpoint_url, quotas=quotas)


def __getattr__(name: str) -> Any:
    """The backend classes load with their module, on first use: a cold start that never stores imports none."""
    if name in _BACKENDS:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_BACKENDS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def using(backend: StoreBackend) -> Iterator[StoreBackend]:
    """Plugin code run in this block (and the threads and tasks it starts with its context) stores in ``backend``:
    for tests, benchmarks and scripts that call plugin functions without an app; an app binds its own per request.
    """
    token = set_store(lambda: backend)
    try:
        yield backend
    finally:
        reset_store(token)


def get_backend() -> StoreBackend:
    """The store of the app serving this request (``DPMSF_STORE``, opened on first use), or of ``using``."""
    backend = current_store()
    if backend is None:
        raise ServiceUnavailable(
            "The document store is reached through the app serving a request: store.collection() was used outside "
            "one (in a thread that did not copy the request's context, or in a script). Call the function through "
            "the app (dpmsf_core.testing), or wrap the call in `with store.using(store.make_store(url)):`."
        )
    return cast(StoreBackend, backend)


@dataclass(frozen=True)
class Collection:
    """A named set of documents of the calling tenant (``"_"`` outside a tenant's request)."""

    name: str
    backend: StoreBackend | None = None  # None: the serving app's (``get_backend``), looked up on each call
    tenant: str | None = None  # None: the tenant of the request being served (the sandbox passes its call's)

    def __post_init__(self) -> None:
        check_key(self.tenant or ANONYMOUS_TENANT, self.name)

    def _where(self) -> tuple[StoreBackend, str]:
        return metered_store(self.backend or get_backend(), self.tenant or current_tenant() or ANONYMOUS_TENANT)

    def get(self, id: str) -> dict[str, Any] | None:
        backend, tenant = self._where()
        return backend.get(tenant, self.name, id)

    def put(self, id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Create or replace document ``id``; the stored document carries ``"id": id``."""
        check_doc(doc)
        backend, tenant = self._where()
        return backend.put(tenant, self.name, id, {"id": id, **{k: v for k, v in doc.items() if k != "id"}})

    def create(self, doc: dict[str, Any], id: str | None = None) -> dict[str, Any]:
        """Store a new document under ``id`` or a fresh uuid4 hex id, kept in the document as ``"id"``."""
        if id is None:
            import uuid  # here: it imports platform, and most cold starts never create a document

            id = uuid.uuid4().hex
        return self.put(id, doc)

    def update(self, id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Shallow-merge ``changes``; None if there is no document ``id``. The id itself cannot change."""
        if isinstance(changes, dict) and "id" in changes and changes["id"] != id:
            raise UnprocessableArguments(
                f"Changes may not set 'id' to {changes['id']!r}: the document's id is {id!r}.",
                errors=[{"param": "id"}],
            )
        backend, tenant = self._where()
        return backend.update(tenant, self.name, id, changes)

    def delete(self, id: str) -> bool:
        backend, tenant = self._where()
        return backend.delete(tenant, self.name, id)

    def list(
        self, limit: int = 100, cursor: str | None = None, *, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents in id order, fewer when they pass ``MAX_PAGE_BYTES`` (or ``max_bytes``, if
        smaller); and the cursor for the next page (None on the last one)."""
        backend, tenant = self._where()
        return backend.list(tenant, self.name, limit, cursor, max_bytes)


def collection(name: str) -> Collection:
    """``store.collection("tasks")``: documents of the calling tenant in collection ``name``."""
    return Collection(name)
