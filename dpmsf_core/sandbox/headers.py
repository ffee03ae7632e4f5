"""The response headers a tenant's code may set: an allow-list, a bounded count and size, safe values only.

A tenant answers on the operator's domain, so a header that the proxy, the browser or a cache in front acts on is
the operator's to set, not a tenant's: ``X-Accel-Redirect``/``X-Sendfile`` make nginx or Apache serve a host file,
``WWW-Authenticate`` prompts for the operator's credentials, ``Cache-Control: public`` lets a shared cache serve
one caller's answer to another, ``Set-Cookie`` and CORS headers speak for the whole origin. Admin (trusted)
modules keep full control: this filter is applied to sandboxed answers only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_HEADERS", "MAX_HEADER_BYTES", "tenant_headers"]

MAX_HEADERS = 32
MAX_HEADER_BYTES = 8192  # names and values together

# What describes the answer itself, or asks the caller to come back later: nothing a proxy or browser acts on
# beyond this one answer. Not Content-Type/-Encoding/-Length: the body is our problem+json, framed by us.
ALLOWED = frozenset(
    {
        "content-language",
        "content-disposition",
        "content-location",
        "etag",
        "last-modified",
        "expires",
        "location",
        "cache-control",
        "vary",
        "link",
        "retry-after",
        "allow",
        "accept-patch",
        "preference-applied",
    }
)
_CACHE_DIRECTIVES = frozenset({"private", "no-store", "no-cache", "max-age", "must-revalidate", "no-transform"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name


def _cache_control(value: str) -> str | None:
    """The value to send, or None to drop it: known directives only (never ``public``/``s-maxage``), and always
    ``private`` or ``no-store``, added when missing. RFC 9111 3.5 lets a shared cache store an answer to a request
    with ``Authorization`` when it says ``public``, ``s-maxage`` or ``must-revalidate``; ``private`` forbids it."""
    directives = set()
    for part in value.split(","):
        directive = part.strip().split("=", 1)[0].strip().lower()
        if directive not in _CACHE_DIRECTIVES:
            return None
        directives.add(directive)
    if directives & {"private", "no-store"}:
        return value
    return f"private, {value}" if value.strip() else "private"


def _value_ok(text: str) -> bool:
    """Latin-1 without controls (no line breaks): anything else is dropped, never sent."""
    return text.isprintable() and all(ord(c) < 256 for c in text)


def tenant_headers(raw: Any) -> dict[str, str]:
    """The headers of a guest's answer that may go out: allowed names, safe values, at most ``MAX_HEADERS`` and
    ``MAX_HEADER_BYTES`` in all (the rest dropped, first come first kept)."""
    if not isinstance(raw, Mapping):
        return {}
    kept: dict[str, str] = {}
    size = 0
    for name, value in raw.items():
        if len(kept) >= MAX_HEADERS:
            break
        if not isinstance(name, str) or not isinstance(value, str | int):
            continue
        text = str(value)
        lowered = name.lower()
        if lowered not in ALLOWED or not _TOKEN.match(name) or not _value_ok(text):
            continue
        if lowered == "cache-control":
            fixed = _cache_control(text)
            if fixed is None:
                continue
            text = fixed
        if lowered in (k.lower() for k in kept):
            continue
        size += len(name) + len(text)
        if size > MAX_HEADER_BYTES:
            break
        kept[name] = text
    return kept
