"""What a plugin function can do: async, typed arguments, pydantic bodies, the request, status codes, responses."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse, Response

from dpmsf_core import HTTPError, RequestInfo, expose


class Order(BaseModel):
    item: Annotated[str, Field(max_length=100)]
    quantity: Annotated[int, Field(ge=1, le=1000)] = 1


@expose.endpoint(method="GET", API="ping")
async def ping():
    """An async function: runs on the event loop, no thread hop."""
    await asyncio.sleep(0)
    return "pong"


@expose.endpoint(method="GET|POST", API="greet")
def greet(
    name: Annotated[str, Field(max_length=100)],
    times: Annotated[int, Field(ge=1, le=100)] = 1,
    shout: bool = False,
) -> str:
    """Typed parameters: query strings are converted and bounded; a missing or bad value answers 422 naming it."""
    text = " ".join([f"hello {name}"] * times)
    return text.upper() if shout else text


@expose.endpoint(method="POST", API="order")
def order(order: Order) -> dict:
    """A pydantic model parameter takes the JSON body."""
    return {"item": order.item, "quantity": order.quantity, "total": Decimal("2.50") * order.quantity}


@expose.endpoint(method="GET|POST", API="whoami")
def whoami(request: RequestInfo) -> dict:
    """Ask for the request by annotating a parameter with RequestInfo."""
    return {
        "method": request.method,
        "tenant": request.tenant,
        "request_id": request.request_id,
        "user_agent": request.header("user-agent"),
        "body_bytes": len(request.body),
    }


@expose.endpoint(method="GET", API="now")
def now() -> dict:
    """Datetimes, Decimals and models are encoded sensibly."""
    return {"utc": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "price": Decimal("9.99")}


@expose.endpoint(method="GET|DELETE", API="item")
def item(*args, **kwargs):
    """``raise HTTPError(status, detail)`` answers that status as problem+json."""
    item_id = kwargs.get("parm_1")
    if item_id != "42":
        raise HTTPError(404, f"no item {item_id!r}")
    return {"id": item_id}


@expose.endpoint(method="GET", API="text")
def text() -> Response:
    """A returned framework Response passes through untouched."""
    return PlainTextResponse("plain text", status_code=202, headers={"X-Custom": "yes"})


@expose.endpoint(method="GET", API="png")
def png() -> Response:
    """Binary bodies too (on Lambda they go out base64-encoded)."""
    return Response(b"\x89PNG\r\n\x1a\n" + bytes(range(16)), media_type="image/png")
