"""Pure URL resolution: path segments + a registry snapshot -> the endpoint and its URL params, or an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .errors import Conflict, MethodNotAllowed, NotFound
from .expose import allowed_methods, runs_for
from .loading.registry import Endpoint, ModuleEntry, Snapshot

SERVICES_PREFIX = "/rest/services"


def visible_to(tenant: str | None, admin_id: str | None) -> Callable[[str | None], bool]:
    """A tenant sees the admin's (and untagged) modules and its own; the admin and anonymous local use see theirs."""
    if tenant is not None and admin_id is not None and tenant == admin_id:
        return lambda owner: True

    def visible(owner: str | None) -> bool:
        return owner is None or owner == admin_id or owner == tenant

    return visible


class Route(NamedTuple):
    """What a URL (and method) resolved to: the endpoint, the URL segments after its API name, the values of its
    path template by name (empty without one), and every method the URL answers (``Allow``)."""

    endpoint: Endpoint
    params: list[str]
    path_values: dict[str, str]
    allow: tuple[str, ...] = ()


def resolve(
    snapshot: Snapshot,
    segments: list[str],
    *,
    max_url_params: int,
    visible: Callable[[str | None], bool] = lambda owner: owner is None,
) -> tuple[Endpoint, list[str]]:
    """``[module-or-alias, api, p1..]`` or ``[api, p1..]``; qualified wins when both segments match."""
    route = resolve_route(snapshot, segments, max_url_params=max_url_params, visible=visible)
    return route.endpoint, route.params


def resolve_route(
    snapshot: Snapshot,
    segments: list[str],
    *,
    max_url_params: int,
    visible: Callable[[str | None], bool] = lambda owner: owner is None,
    method: str | None = None,
) -> Route:
    """The endpoint for a URL and method: first the API (qualified or not), then among its routes the one whose
    template fits the remaining segments and whose methods include ``method``.

    404 when no template fits, 405 (with every method the URL answers) when one fits but not for ``method``;
    ``OPTIONS`` without a route declaring it resolves to the first that fits (the caller answers the preflight).
    """
    if not segments:
        raise NotFound("Name an API: /rest/services/<api>/ or /rest/services/<module>/<api>/ (see __dir__).")
    first = segments[0]
    module: ModuleEntry | None = snapshot.modules.get(first)
    endpoint: Endpoint | None = None
    if module is not None and len(segments) > 1 and visible(module.tenant):
        endpoint = module.endpoints.get(segments[1])
        params = segments[2:]
        if endpoint is not None and not module.trusted and any(ep.trusted for ep in snapshot.by_api.get(first, ())):
            endpoint = None  # a trusted API keeps its URL: a tenant's module of the same name never captures it
    if endpoint is None:
        found = [ep for ep in snapshot.by_api.get(first, ()) if visible(ep.tenant)]
        found = [ep for ep in found if ep.trusted] or found  # a tenant's API never shadows nor contests a trusted one
        if not found:
            shown = module if module is not None and visible(module.tenant) else None
            if shown is not None and len(segments) == 1:
                apis = sorted(shown.endpoints)
                raise NotFound(
                    f"Module '{shown.name}' is not an API; name one of its APIs: "
                    f"{SERVICES_PREFIX}/{shown.name}/<api>/ with <api> one of {', '.join(apis) or '(none)'}.",
                    extra={"apis": apis},
                )
            raise NotFound(_unknown(snapshot, segments, shown, visible))
        if len(found) > 1:
            urls = [f"{SERVICES_PREFIX}/{ep.module}/{ep.api}/" for ep in found]
            raise Conflict(
                f"API '{first}' is defined by {len(found)} modules; call it qualified: {', '.join(urls)}",
                candidates=urls,
            )
        endpoint = found[0]
        params = segments[1:]
    routes = snapshot.modules[endpoint.module].routes.get(endpoint.api, (endpoint,))
    if len(routes) == 1 and endpoint.template is None:
        if len(params) > max_url_params:
            raise NotFound(f"API '{endpoint.api}' takes at most {max_url_params} URL parameters; got {len(params)}.")
        return Route(endpoint, params, {}, tuple(endpoint.allow()))
    return _pick(routes, params, method)


def _pick(routes: tuple[Endpoint, ...], params: list[str], method: str | None) -> Route:
    """Among one API's routes: templates that fit exactly come first, then the one without a template, which
    beside templates answers only the bare API URL (no URL segments): an API's URLs are exactly those OpenAPI
    documents, so ``PUT /welcome/fr/`` beside ``GET welcome/{lang}`` is a 405, ``/welcome/fr/extra/`` a 404."""
    fitting: list[tuple[Endpoint, dict[str, str]]] = []
    for ep in sorted(routes, key=lambda e: e.template is None):
        values = ep.match(params)
        if values is not None and (ep.template is not None or not params):
            fitting.append((ep, values))
    if not fitting:
        first = routes[0]
        shapes = ", ".join(dict.fromkeys(f"{SERVICES_PREFIX}/{first.module}/{ep.route()}/" for ep in routes))
        got = "/".join([first.api, *params])
        raise NotFound(f"API '{first.api}' answers {shapes}; not .../{got}/.")
    allow = allowed_methods(m for ep, _ in fitting for m in ep.methods)
    if method is None:
        return Route(fitting[0][0], params, fitting[0][1], tuple(allow))
    for ep, values in fitting:
        if runs_for(ep.methods, method):
            return Route(ep, params, values, tuple(allow))
    if method == "OPTIONS":
        return Route(fitting[0][0], params, fitting[0][1], tuple(allow))
    first = fitting[0][0]
    raise MethodNotAllowed(
        f"{SERVICES_PREFIX}/{first.module}/{'/'.join([first.api, *params])}/ answers {', '.join(allow)}; not {method}.",
        allow,
    )


def _unknown(
    snapshot: Snapshot, segments: list[str], module: ModuleEntry | None, visible: Callable[[str | None], bool]
) -> str:
    import difflib  # error path only

    first = segments[0]
    if module is not None:
        names = list(module.endpoints)
        wanted = segments[1]
        msg = f"Module '{module.name}' has no API '{wanted}'."
        close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.75)
    else:
        names = [api for api, eps in snapshot.by_api.items() if any(visible(ep.tenant) for ep in eps)]
        names += [m.name for m in snapshot.modules.values() if visible(m.tenant)]
        msg = f"No API or module named '{first}'."
        wanted = first
        close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.75)
    if close:
        msg += f" Did you mean '{close[0]}'?"
    return msg
