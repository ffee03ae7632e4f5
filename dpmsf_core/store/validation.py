"""What every store backend checks, the same way (so backends are interchangeable): keys, documents, limits and
the opaque cursors of ``list``; invalid input is a 422 that names it, a document over its tenant's quotas a 413."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable
from typing import Any

from ..errors import UnprocessableArguments
from ..tenancy.quotas import QuotaExceeded, Quotas

ANONYMOUS_TENANT = "_"  # the tenant of anonymous, local and admin calls (real tenants are UUIDs)
DEFAULT_URL = "sqlite:///.dpmsf/store.db"
MAX_ID_LENGTH = 256
MAX_LIMIT = 1000
MAX_DOC_BYTES = Quotas.max_doc  # the default of DPMSF_STORE_MAX_DOC: DynamoDB's item limit, the same everywhere
MAX_PAGE_BYTES = 1_000_000  # a listing stops at this many bytes of documents (and returns a cursor for the rest)
DOC_OVERHEAD = 100  # bytes a document costs beyond its JSON, as DynamoDB counts an item's: many tiny ones add up
_COLLECTION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


NO_ID: Any = object()

QuotaLookup = Callable[[str], Quotas]  # a tenant id -> its quotas (the app's ``QuotaBook.for_tenant``)


def quota_lookup(quotas: QuotaLookup | Quotas | None) -> QuotaLookup:
    """A backend's way to each tenant's quotas: the one given, else the operator's defaults from the environment
    (``DPMSF_STORE_MAX_DOC``, ``DPMSF_TENANT_STORE_MB``) for every tenant."""
    if callable(quotas):
        return quotas
    fixed = quotas if quotas is not None else Quotas.from_env(os.environ)
    return lambda tenant: fixed


def check_key(tenant: str, collection: str, doc_id: Any = NO_ID) -> None:
    if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
        raise UnprocessableArguments(f"Store tenant {tenant!r} is not valid. Expected a non-empty string.")
    if not isinstance(collection, str) or not _COLLECTION.match(collection):
        raise UnprocessableArguments(
            f"Collection name {collection!r} is not valid. Expected 1-64 characters from [A-Za-z0-9_.-].",
            errors=[{"param": "collection", "value": str(collection)[:100]}],
        )
    if doc_id is not NO_ID:
        check_id(doc_id)


def check_id(doc_id: Any) -> None:
    """A non-empty string of at most ``MAX_ID_LENGTH`` characters that UTF-8 can encode (no lone surrogate:
    every backend would fail on it with a traceback instead of an answer)."""
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_LENGTH or not _encodable(doc_id):
        shown = doc_id if not isinstance(doc_id, str) else doc_id[:40] + ("..." if len(doc_id) > 40 else "")
        raise UnprocessableArguments(
            f"Document id {shown!r} is not valid. Expected a non-empty string of at most {MAX_ID_LENGTH} characters"
            " of valid Unicode (no lone surrogates).",
            errors=[{"param": "id", "reason": "invalid document id"}],
        )


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_doc(doc: Any, what: str = "Document") -> dict[str, Any]:
    """422 for anything that is not a dict, before any work is done on it."""
    if not isinstance(doc, dict):
        raise UnprocessableArguments(
            f"{what} must be a JSON object (dict), not {type(doc).__name__}.", errors=[{"param": "doc"}]
        )
    return doc


def encode_doc(doc: Any, what: str = "Document", max_bytes: int = MAX_DOC_BYTES) -> str:
    """The document as compact JSON; 422 for anything that is not a JSON object of valid Unicode, 413 naming the
    ``max_doc`` quota for one over ``max_bytes`` (the tenant's DPMSF_STORE_MAX_DOC) bytes of UTF-8."""
    check_doc(doc, what)
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except UnicodeEncodeError:
        raise UnprocessableArguments(
            f"{what} holds a string that is not valid Unicode (a lone surrogate).", errors=[{"param": "doc"}]
        ) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnprocessableArguments(f"{what} is not JSON-encodable: {exc}.", errors=[{"param": "doc"}]) from None
    if size > max_bytes:
        raise QuotaExceeded(
            "max_doc",
            f"{what} is {size} bytes as JSON. Expected at most {max_bytes} (the max_doc quota, DPMSF_STORE_MAX_DOC).",
            status=413,
        )
    return text


def stored_size(text: str) -> int:
    """What a stored document counts against its tenant's ``store_mb`` quota: its JSON's bytes and the overhead."""
    return len(text.encode()) + DOC_OVERHEAD


def check_room(tenant: str, quotas: Quotas, used: int, delta: int) -> None:
    """413 naming ``store_mb`` when a write that grows the tenant's stored bytes (``delta`` > 0) would pass its
    quota; a write that shrinks them is always allowed, so a tenant over a lowered quota can clean up."""
    if delta > 0 and used + delta > quotas.store_bytes:
        raise QuotaExceeded(
            "store_mb",
            f"The tenant stores {used} bytes of documents; {delta} more would pass its quota of"
            f" {quotas.store_mb:g} MB (store_mb, DPMSF_TENANT_STORE_MB). Nothing was stored.",
            status=413,
        )


def page_budget(page_bytes: int, max_bytes: Any) -> int:
    """A listing's byte budget: the backend's, or the caller's ``max_bytes`` when that is smaller (a caller can
    only lower it); 422 for a ``max_bytes`` that is not a positive integer."""
    if max_bytes is None:
        return page_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise UnprocessableArguments(
            f"max_bytes={max_bytes!r} is not valid. Expected a positive integer.", errors=[{"param": "max_bytes"}]
        )
    return min(page_bytes, max_bytes)


def within_page(page_bytes: int, size: int, budget: int, count: int) -> bool:
    """Whether one more document of ``size`` bytes still fits a listing page: the first always does (a page
    is never empty), the others while the page's bytes stay within ``budget``."""
    return count == 0 or page_bytes + size <= budget


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UnprocessableArguments(
            f"limit={limit!r} is not valid. Expected an integer from 1 to {MAX_LIMIT}.", errors=[{"param": "limit"}]
        )
    return limit


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The id a page starts after; 422 for a cursor this store did not issue."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (TypeError, ValueError, KeyError, binascii.Error):
        after = None
    if not isinstance(after, str) or not after or not _encodable(after):  # a forged cursor may hold anything
        raise UnprocessableArguments(
            f"cursor {str(cursor)[:60]!r} is not valid. Pass back the cursor a previous list() returned.",
            errors=[{"param": "cursor"}],
        )
    return after
