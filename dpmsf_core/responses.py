"""Return values -> ``{"results": ...}`` JSON; framework Responses pass through untouched."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import sys
from typing import Any

from .errors import FunctionFailed


def _default(value: Any) -> Any:
    _dt = sys.modules.get("datetime")  # a date exists only once its module is imported: ours need not be
    if _dt is not None and isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    decimal = sys.modules.get("decimal")  # a Decimal (or a UUID) exists only once its module is imported: ours
    if decimal is not None and isinstance(value, decimal.Decimal):  # need not be, for every cold start
        return int(value) if value == value.to_integral_value() else float(value)
    uuid, pathlib = sys.modules.get("uuid"), sys.modules.get("pathlib")
    if (uuid is not None and isinstance(value, uuid.UUID)) or (
        pathlib is not None and isinstance(value, pathlib.PurePath)
    ):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if _dt is not None and isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic v2 models, without importing pydantic
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# the C encoder ``_encoder.encode`` would build anew on every call, built once; without ``markers`` (it keeps the
# ids of the containers being written, and after a failed call its leftovers could refuse a later value): a value
# that contains itself then fails as RecursionError instead of ValueError (see ``encode_results``). typeshed does
# not declare json.encoder.c_make_encoder (the C accelerator, None without it): hence the ignore
_c_encode = json.encoder.c_make_encoder and json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _default, json.encoder.encode_basestring, None, ":", ",", False, False, False
)


def dumps(value: Any) -> bytes:
    if _c_encode is None:  # an interpreter without the C accelerator
        return _encoder.encode(value).encode("utf-8")
    return "".join(_c_encode(value, 0)).encode("utf-8")


def too_large(api: str, size: int, limit: int, *, at_least: bool = False) -> FunctionFailed:
    """The 500 for an answer over ``DPMSF_MAX_RESPONSE``, whichever way the function answered."""
    amount = f"more than {limit}" if at_least else str(size)
    return FunctionFailed(
        f"API '{api}' answered {amount} bytes, over the limit of {limit} bytes (DPMSF_MAX_RESPONSE).",
        title="Response Too Large",
    )


class _OverLimit(Exception):
    """Raised inside the bounded encoder as soon as the pieces written pass the limit."""


def _pieces(value: Any, out: list[bytes], room: list[int], depth: int) -> None:
    """``value`` as JSON into ``out``, one piece per item of the outer containers, stopping once ``room`` is spent:
    a list of a thousand large documents is never encoded whole before its size is known."""
    if depth and isinstance(value, list | tuple) and value:
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _pieces(item, out, room, depth - 1)
        out.append(b"]")
        room[0] -= len(value) + 1
    elif depth and isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        out.append(b"{")
        for i, (key, item) in enumerate(value.items()):
            name = json.encoder.encode_basestring(key).encode("utf-8")
            out.append(b"," + name + b":" if i else name + b":")
            room[0] -= len(name) + 1 + (1 if i else 0)
            _pieces(item, out, room, depth - 1)
        out.append(b"}")
        room[0] -= 2
    else:
        piece = dumps(value)
        out.append(piece)
        room[0] -= len(piece)
    if room[0] < 0:
        raise _OverLimit


def encode_results(value: Any, api: str, limit: int | None = None) -> bytes:
    """The 200 body; a value JSON cannot carry answers 500 naming the type instead of a half-written body, and one
    over ``limit`` bytes answers 500 too, found before more than about the limit (plus one item) is encoded."""
    try:
        if limit is None:
            return dumps({"results": value})
        out: list[bytes] = []
        room = [limit]
        try:
            _pieces({"results": value}, out, room, depth=3)
        except _OverLimit:
            if len(out) == 3:  # the result was one piece, encoded whole: its size is known exactly
                raise too_large(api, sum(map(len, out)) + 1, limit) from None
            raise too_large(api, 0, limit, at_least=True) from None
        body = b"".join(out)
        if len(body) > limit:  # separators are counted only when a container closes
            raise too_large(api, len(body), limit)
        return body
    except (TypeError, ValueError, RecursionError) as exc:
        raise FunctionFailed(f"API '{api}' returned a value that is not JSON-encodable: {exc}") from None


def is_framework_response(value: Any) -> bool:
    """A Starlette/FastAPI Response (or anything ASGI-callable with a status) is sent as the function built it."""
    return hasattr(value, "status_code") and hasattr(value, "raw_headers") and callable(value)
