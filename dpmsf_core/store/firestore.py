"""The Firestore document store: ``DPMSF_STORE=firestore://<collection>[?database=<name>]``.

Each tenant's collection is a Firestore subcollection: document ``id`` of collection ``tasks`` of tenant ``T`` is
``<collection>/store#T/tasks/<id>``, holding the document as a JSON string in ``doc`` (JSON round-trips exactly;
Firestore maps would refuse nested arrays and integers past 64 bits) and the id in ``id``, which ``list`` orders
and pages by. Ids that Firestore would refuse as names (``/``, ``.``, ``..``, ``__x__``) are escaped by
``firestore_id``; the ``id`` field keeps them as given. The project is the environment's
(``GOOGLE_CLOUD_PROJECT``; on App Engine the runtime sets it), ``FIRESTORE_EMULATOR_HOST`` selects the emulator,
and google-cloud-firestore is imported on first use. The same root collection can hold the tenants
(``tenant#<uuid>``) and the used tokens (``token#<jti>``).
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
from .validation import check_key, check_limit, decode_cursor, encode_cursor, encode_doc

log = logging.getLogger("dpmsf.store")


class FirestoreStore:
    """Documents in a Firestore root collection, one subcollection per (tenant, collection); updates are optimistic
    (the read's ``update_time`` is the write's precondition, retried with jitter, as ``ver`` is in DynamoDB)."""

    _UPDATE_ATTEMPTS = 12  # with jittered backoff: ~1 s of contention on one document before a 503

    def __init__(
        self, collection: str, *, database: str | None = None, client: Any = None, timeout: float = 10.0
    ) -> None:
        self.collection = collection
        self._firestore = FirestorePerProcess(database, client=client, timeout=timeout)

    def _docs(self, tenant: str, collection: str) -> Any:
        root = self._firestore.client().collection(self.collection)
        return root.document(f"store#{firestore_id(tenant)}").collection(firestore_id(collection))

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
        }

    def get(self, tenant: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        check_key(tenant, collection, doc_id)
        with self._errors():
            snapshot = self._ref(tenant, collection, doc_id).get(field_paths=["doc"], **self._firestore.options())
        return json.loads(snapshot.get("doc")) if snapshot.exists else None

    def put(self, tenant: str, collection: str, doc_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        check_key(tenant, collection, doc_id)
        text = encode_doc(doc)
        with self._errors():
            self._ref(tenant, collection, doc_id).set(
                self._item(tenant, collection, doc_id, text), **self._firestore.options()
            )
        return json.loads(text)

    def update(self, tenant: str, collection: str, doc_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        from google.api_core.exceptions import FailedPrecondition, NotFound

        check_key(tenant, collection, doc_id)
        encode_doc(changes, "Changes")
        options = self._firestore.options()
        for attempt in range(self._UPDATE_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            with self._errors():
                ref = self._ref(tenant, collection, doc_id)
                snapshot = ref.get(field_paths=["doc"], **options)
            if not snapshot.exists:
                return None
            text = encode_doc({**json.loads(snapshot.get("doc")), **changes})
            with self._errors():
                try:
                    ref.update(
                        {"doc": text, "updated_at": round(time.time(), 3)},
                        # nobody wrote in between (and it was not deleted)
                        option=self._firestore.client().write_option(last_update_time=snapshot.update_time),
                        **options,
                    )
                except FailedPrecondition:
                    continue  # read again and merge into the newer version
                except NotFound as exc:
                    if not firestore_no_document(exc):
                        raise
                    continue  # deleted meanwhile: the next read says so
            return json.loads(text)
        raise ServiceUnavailable(f"Document '{doc_id}' kept changing under {self._UPDATE_ATTEMPTS} updates; retry.")

    def delete(self, tenant: str, collection: str, doc_id: str) -> bool:
        from google.api_core.exceptions import NotFound

        check_key(tenant, collection, doc_id)
        with self._errors():
            client = self._firestore.client()
            try:
                self._ref(tenant, collection, doc_id).delete(
                    option=client.write_option(exists=True), **self._firestore.options()
                )
            except NotFound as exc:
                if not firestore_no_document(exc):
                    raise
                return False
        return True

    def list(
        self, tenant: str, collection: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        check_key(tenant, collection)
        limit = check_limit(limit)
        after = decode_cursor(cursor)
        with self._errors():
            query = self._docs(tenant, collection)
            if after:
                query = query.where(filter=FieldFilter("id", ">", after))
            query = query.order_by("id").limit(limit + 1).select(["id", "doc"])  # one more: is there a next page?
            snapshots = list(query.stream(**self._firestore.options()))
        page = snapshots[:limit]
        next_cursor = encode_cursor(page[-1].get("id")) if len(snapshots) > limit else None
        return [json.loads(s.get("doc")) for s in page], next_cursor
