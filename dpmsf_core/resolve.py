"""Pure URL resolution: path segments + a registry snapshot -> the endpoint and its URL params, or an error."""

from __future__ import annotations

from collections.abc import Callable

from .errors import Conflict, NotFound
from .registry import Endpoint, ModuleEntry, Snapshot

SERVICES_PREFIX = "/rest/services"


def visible_to(tenant: str | None, admin_id: str | None) -> Callable[[str | None], bool]:
    """A tenant sees the admin's (and untagged) modules and its own; the admin and anonymous local use see theirs."""
    if tenant is not None and admin_id is not None and tenant == admin_id:
        return lambda owner: True

    def visible(owner: str | None) -> bool:
        return owner is None or owner == admin_id or owner == tenant

    return visible


def resolve(
    snapshot: Snapshot,
    segments: list[str],
    *,
    max_url_params: int,
    visible: Callable[[str | None], bool] = lambda owner: owner is None,
) -> tuple[Endpoint, list[str]]:
    """``[module-or-alias, api, p1..]`` or ``[api, p1..]``; qualified wins when both segments match."""
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
    if len(params) > max_url_params:
        raise NotFound(f"API '{endpoint.api}' takes at most {max_url_params} URL parameters; got {len(params)}.")
    return endpoint, params


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
