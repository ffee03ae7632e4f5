"""Mangum's handlers for the rarer HTTP event kinds, with DPMSF's fixes: ALB target groups, payload 1.0 on an HTTP
API, and Lambda@Edge (Mangum's own). Imported when such an event first arrives: importing Mangum imports
``asyncio``, which a cold start behind API Gateway or a Function URL (``gateway``) never needs.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from mangum.adapter import HANDLERS
from mangum.handlers import ALB, HTTPGateway

from .gateway import http_api_paths, identity_fixed, without_nulls

if TYPE_CHECKING:
    from mangum.types import LambdaConfig, LambdaContext


class HTTPAPIv1(HTTPGateway):
    """Payload 1.0 on an HTTP API: Mangum's scope and answer, null-safe, the path decoded once."""

    def __init__(self, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> None:
        event = without_nulls(event, ("headers", "multiValueHeaders", "rawQueryString"))
        super().__init__(identity_fixed(event), context, config)

    @cached_property
    def scope(self) -> Any:
        return http_api_paths(super().scope, self.event, self.config)


class LoadBalancer(ALB):
    """ALB target group (single- or multi-value mode): null-safe, scope built once; answers of at most 1 MB."""

    response_limit = 1024 * 1024

    def __init__(self, event: dict[str, Any], context: LambdaContext, config: LambdaConfig) -> None:
        super().__init__(without_nulls(event, ("headers", "multiValueHeaders")), context, config)

    @cached_property
    def scope(self) -> Any:
        return super().scope


# in Mangum's order: ALB before the HTTP API (an ALB event may carry ``version``), Mangum's defaults last
HANDLERS_IN_ORDER: list[Any] = [LoadBalancer, HTTPAPIv1, *HANDLERS]
