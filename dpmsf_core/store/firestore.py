"""The Firestore document store: ``DPMSF_STORE=firestore://<collection>[?database=<name>]``.

Each tenant's collection is a Firestore subcollection: document ``id`` of collection ``tasks`` of tenant ``T`` is
``<collection>/store#T/tasks/<id>``, holding the document as a JSON string in ``doc`` (JSON round-trips exactly;
Firestore maps would refuse nested arrays and integers past 64 bits) and the id in ``id``, which ``list`` orders
and pages by. Ids that Firestore would refuse as names (``/``, ``.``, ``..``, ``__x__``) are escaped by
``firestore_id``; the ``id`` field keeps them as given. The project is the environment's
(``GOOGLE_CLOUD_PROJECT``; on App Engine the runtime sets it), ``FIRESTORE_EMULATOR_HOST`` selects the emulator,
and google-cloud-firestore is imported on first use. The same root collection can hold the tenants
(``tenant#<uuid>``) and the used tokens (``token#<jti>``).

Each tenant's stored bytes are the field ``stored_bytes`` of ``<collection>/store#T`` (the parent of its
subcollections), an atomic counter changed by ``Increment`` in the same batch as the document, which carries its
stored size in ``size``. The ``store_mb`` quota is checked against the counter just before the batch: concurrent
writers of one tenant can pass it by at most one document each (a transaction would serialise all of a tenant's
writes on one document, which Firestore sustains at about one per second).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

from .._backends import FirestorePerProcess, firestore_id, firestore_no_document
from ..errors import ServiceUnavailable
from ..tenancy.quotas import Quotas
from .validation import (
    MAX_PAGE_BYTES,
    QuotaLookup,
    check_doc,
    check_key,
    check_limit,
    check_room,
    decode_cursor,
    encode_cursor,
    encode_doc,
    page_budget,
    quota_lookup,
    stored_size,
    within_page,
)

log = logging.getLogger("dpmsf.store")

FIRESTORE_MAX_DOC = 1_000_000  # Firestore's own limits: 1 MiB a document, 1,048,487 bytes a string field


class FirestoreStore:
    """Documents in a Firestore root collection, one subcollection per (tenant, collection); updates are optimistic
    (the read's ``update_time`` is the write's precondition, retried with jitter, as ``ver`` is in DynamoDB)."""

    _UPDATE_ATTEMPTS = 12  # with jittered backoff: ~1 s of contention on one document before a 503

    def __init__(
        self,
        collection: str,
        *,
        database: str | None = None,
        client: Any = None,
        timeout: float = 10.0,
        quotas: QuotaLookup | Quotas | None = None,
        page_bytes: int = MAX_PAGE_BYTES,
    ) -> None:
        self.collection = collection
        self._firestore = FirestorePerProcess(database, client=client, timeout=timeout)
        self._quotas = quota_lookup(quotas)
        self.page_bytes = page_bytes

    def _max_doc(self, tenant: str) -> int:
        """The tenant's ``max_doc``, never past what Firestore itself accepts (which would fail as a 503)."""
        return min(self._quotas(tenant).max_doc, FIRESTORE_MAX_DOC)

    def _tenant_ref(self, tenant: str) -> Any:
        return self._firestore.client().collection(self.collection).document(f"store#{firestore_id(tenant)}")

    def _docs(self, tenant: str, collection: str) -> Any:
        return self._tenant_ref(tenant).collection(firestore_id(collection))

    def usage(self, tenant: str) -> int:
        """Bytes the tenant stores (its ``store_mb`` quota counts these)."""
        with self._errors():
            snapshot = self._tenant_ref(tenant).get(field_paths=["stored_bytes"], **self._firestore.options())
        return int((snapshot.get("stored_bytes") if snapshot.exists else 0) or 0)

    @staticmethod
    def _old_size(snapshot: Any) -> int:
        """What a stored document counts: 0 for none, and for one written before sizes were kept (never counted)."""
        if not snapshot.exists:
            return 0
        try:
            return int(snapshot.get("size") or 0)
        except KeyError:
            return 0

    def _doc_ref(self, tenant: str, collection: str, doc_id: str) -> Any:
        """``_ref``, where making the client may fail (no project, no credentials): a 503 like every other failure."""
        with self._errors():
            return self._ref(tenant, collection, doc_id)

    def _read(self, ref: Any, tenant: str, fields: list[str]) -> tuple[Any, int]:
        """The document's ``fields`` and the tenant's stored bytes, in one round trip (a batched get)."""
        with self._errors():
            counter = self._tenant_ref(tenant)
            found = self._firestore.client().get_all(
                [ref, counter], field_paths=[*fields, "stored_bytes"], **self._firestore.options()
            )
            snapshots = {snapshot.reference.path: snapshot for snapshot in found}
        used = snapshots[counter.path]
        return snapshots[ref.path], int((used.get("stored_bytes") if used.exists else 0) or 0)

    def _write(self, ref: Any, snapshot: Any, item: dict[str, Any] | None, tenant: str, used: int = 0) -> bool:
        """Write ``item`` (None: delete) where ``snapshot`` was read, and count the change on the tenant's counter
        (``used`` bytes when read), in one batch; False if the document changed since it was read (read again)."""
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound
        from google.cloud.firestore_v1 import Increment

        delta = (item["size"] if item is not None else 0) - self._old_size(snapshot)
        if delta > 0:
            check_room(tenant, self._quotas(tenant), used, delta)
        client = self._firestore.client()
        batch = client.batch()
        if item is None:
            batch.delete(ref, option=client.write_option(last_update_time=snapshot.update_time))
        elif snapshot.exists:  # every field is written: the same as a set, on condition nobody wrote in between
            batch.update(ref, item, option=client.write_option(last_update_time=snapshot.update_time))
        else:
            batch.create(ref, item)
        if delta:
            batch.set(self._tenant_ref(tenant), {"stored_bytes": Increment(delta)}, merge=True)
        with self._errors():
            try:
                batch.commit(**self._firestore.options())
            except (FailedPrecondition, AlreadyExists):
                return False
            except NotFound as exc:
                if not firestore_no_document(exc):
                    raise
                return False  # deleted meanwhile: the next read says so
        return True

    def _ref(self, tenant: str, collection: str, doc_id: str) -> Any:
        return self._docs(tenant, collection).document(firestore_id(doc_id))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Connection failures, timeouts, refusals and a missing database become 503 (nothing was written)."""
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        try:
            yield
        except (GoogleAPIError, GoogleAuthError, OSError) as exc:
            # OSError: no project could be determined; GoogleAuthError: no credentials; RetryError: gave up
            log.warning("document store collection %s failed: %s", self.collection, exc)
            reason, cause = type(exc).__name__, getattr(exc, "cause", None)
            if reason == "RetryError" and cause is not None:  # the retry policy gave up: name what it retried
                reason = f"{type(cause).__name__} until the {self._firestore.timeout:g} s timeout"
            raise ServiceUnavailable(f"The document store is unavailable: Firestore answered {reason}.") from None

    def _item(self, tenant: str, collection: str, doc_id: str, text: str) -> dict[str, Any]:
        return {
            "id": doc_id,
            "doc": text,
            "tenant": tenant,
            "collection": collection,
            "updated_at": round(time.time(), 3),
            "size": stored_size(text),
        }

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        with self._errors():
            snapshot = self._ref(tenant, collection, doc_id).get(field_paths=["doc"], **self._firestore.options())
        return json.loads(snapshot.get("doc")) if snapshot.exists else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc, max_bytes=self._max_doc(tenant))
        item = self._item(tenant, collection, doc_id, text)
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            ref = self._doc_ref(tenant, collection, doc_id)
            snapshot, used = self._read(ref, tenant, ["size"])
            if self._write(ref, snapshot, item, tenant, used):
                stored: dict[str, Any] = json.loads(text)
                return stored
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} writes; retry.")

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        max_doc = self._max_doc(tenant)
        encode_doc(check_doc(changes, "Changes"), "Changes", max_bytes=max_doc)
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            ref = self._doc_ref(tenant, collection, doc_id)
            snapshot, used = self._read(ref, tenant, ["doc", "size"])
            if not snapshot.exists:
                return None
            text = encode_doc({**json.loads(snapshot.get("doc")), **changes}, max_bytes=max_doc)
            if self._write(ref, snapshot, self._item(tenant, collection, doc_id, text), tenant, used):
                stored: dict[str, Any] = json.loads(text)
                return stored  # else somebody wrote in between: read again and merge into the newer one
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} updates; retry.")

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        check_key(tenant, collection, doc_id)
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            with self._errors():
                ref = self._ref(tenant, collection, doc_id)
                snapshot = ref.get(field_paths=["size"], **self._firestore.options())
            if not snapshot.exists:
                return False
            if self._write(ref, snapshot, None, tenant):
                return True
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} deletes; retry.")

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None, max_bytes: int | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` documents and at most ``page_bytes`` of them (at least one), read from the query's
        stream one at a time; the stream is closed as soon as the page is full."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
        budget = page_budget(self.page_bytes, max_bytes)
        page: list[dict[str, Any]] = []
        last_id, page_bytes, more = "", 0, False
        with self._errors():
            query = self._docs(tenant, collection)
            if after:
                query = query.where(filter=FieldFilter("id", ">", after))
            query = query.order_by("id").limit(limit + 1).select(["id", "doc"])  # one more: is there a next page?
            stream = query.stream(**self._firestore.options())
            try:
                for snapshot in stream:
                    text = snapshot.get("doc")
                    size = len(text.encode())
                    if len(page) == limit or not within_page(page_bytes, size, budget, len(page)):
                        more = True
                        break
                    page.append(json.loads(text))
                    last_id, page_bytes = snapshot.get("id"), page_bytes + size
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        return page, encode_cursor(last_id) if more else None
