"""What every store backend checks, the same way (so backends are interchangeable): keys, documents, limits and
the opaque cursors of ``list``; invalid input is a 422 that names it."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ..errors import UnprocessableArguments

ANONYMOUS_TENANT = "_"  # the tenant of anonymous, local and admin calls (real tenants are UUIDs)
DEFAULT_URL = "sqlite:///.dpmsf/store.db"
MAX_ID_LENGTH = 256
MAX_LIMIT = 1000
MAX_DOC_BYTES = 350_000  # DynamoDB's item limit is 400 KB; the same cap everywhere keeps backends interchangeable
_COLLECTION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


NO_ID: Any = object()


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
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_ID_LENGTH:
        shown = doc_id if not isinstance(doc_id, str) else doc_id[:40] + ("..." if len(doc_id) > 40 else "")
        raise UnprocessableArguments(
            f"Document id {shown!r} is not valid. Expected a non-empty string of at most {MAX_ID_LENGTH} characters.",
            errors=[{"param": "id", "reason": "invalid document id"}],
        )


def encode_doc(doc: Any, what: str = "Document") -> str:
    """The document as compact JSON; 422 for anything that is not a JSON object within the size cap."""
    if not isinstance(doc, dict):
        raise UnprocessableArguments(
            f"{what} must be a JSON object (dict), not {type(doc).__name__}.", errors=[{"param": "doc"}]
        )
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UnprocessableArguments(f"{what} is not JSON-encodable: {exc}.", errors=[{"param": "doc"}]) from None
    if len(text.encode()) > MAX_DOC_BYTES:
        raise UnprocessableArguments(
            f"{what} is {len(text.encode())} bytes as JSON. Expected at most {MAX_DOC_BYTES}.",
            errors=[{"param": "doc"}],
        )
    return text


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
    if not isinstance(after, str) or not after:
        raise UnprocessableArguments(
            f"cursor {str(cursor)[:60]!r} is not valid. Pass back the cursor a previous list() returned.",
            errors=[{"param": "cursor"}],
        )
    return after
