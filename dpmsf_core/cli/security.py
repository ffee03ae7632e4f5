"""``dpmsf token`` and ``dpmsf tenant add|list|show|disable|enable|rotate-key|quota``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..tenancy.model import Tenant


def _security() -> Any:
    """The app's Security (same registry, master key and state directory as the server would use).

    A registry that cannot be opened (DynamoDB without DPMSF_MASTER_KEY, an unreadable master key file, a bad
    path) is a ConfigError: ``dpmsf`` prints one line and exits 2, never a traceback.
    """
    from ..security import Security

    try:
        return Security(Settings.from_env())
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token; ``--ttl`` may not exceed DPMSF_TOKEN_MAX_TTL, since the server would refuse the token."""
    from ..tenancy.tokens import mint

    settings = Settings.from_env()
    ttl = args.ttl if args.ttl is not None else settings.token_ttl
    if not 0 < ttl <= settings.token_max_ttl:
        print(
            f"dpmsf: --ttl {ttl:g} is not valid. Expected more than 0 and at most DPMSF_TOKEN_MAX_TTL"
            f" ({settings.token_max_ttl} s): the server refuses longer-lived tokens.",
            file=sys.stderr,
        )
        return 2
    security = _security()
    tenant_id = args.tenant or settings.admin_id
    if not tenant_id:
        print("dpmsf: name a tenant with --tenant, or set ADMIN_ID for the admin's token.", file=sys.stderr)
        return 2
    try:
        tenant = security.tenants.get(tenant_id)
    except ValueError as exc:
        print(f"dpmsf: {exc}", file=sys.stderr)
        return 2
    if tenant is None:
        print(f"dpmsf: no tenant '{tenant_id}' (see: dpmsf tenant list).", file=sys.stderr)
        return 1
    if not tenant.enabled:
        print(f"dpmsf: tenant '{tenant_id}' is disabled.", file=sys.stderr)
        return 1
    if not tenant.key:
        print(
            f"dpmsf: tenant '{tenant_id}' has no usable key: it does not unwrap with this master key"
            " (DPMSF_MASTER_KEY). Set the right one, or: dpmsf tenant rotate-key ID.",
            file=sys.stderr,
        )
        return 1
    print(mint(tenant.id, tenant.key, ttl=ttl, max_ttl=settings.token_max_ttl))
    return 0


# ``dpmsf tenant quota`` options: the Quotas field each one sets (``--store-mb 5``; ``default`` clears it)
_QUOTA_OPTIONS = {
    "modules": "--modules",
    "upload_mb": "--upload-mb",
    "store_mb": "--store-mb",
    "max_doc": "--max-doc",
    "concurrency": "--concurrency",
    "rate": "--rate",
}


def _show(tenant: Tenant, with_key: bool, settings: Settings | None = None) -> dict[str, Any]:
    """A tenant as one JSON line: ``quotas`` are its overrides; with ``settings``, ``effective`` is what holds."""
    out = {"id": tenant.id, "name": tenant.name, "enabled": tenant.enabled, "admin": tenant.admin}
    out["quotas"] = dict(tenant.quotas)
    if settings is not None:
        out["effective"] = settings.quotas.merged(tenant.quotas).as_dict()
    if with_key:
        out["key"] = tenant.key
    return out


def _quota_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides the command line changes: a value, or None for ``default`` and for each ``--reset NAME``."""
    changes: dict[str, Any] = {}
    for name in _QUOTA_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = None if value.strip().lower() == "default" else value.strip()
    for name in args.reset or []:
        key = name.replace("-", "_")
        if key not in _QUOTA_OPTIONS:
            raise ValueError(f"--reset {name!r}: no such quota. Expected one of: {', '.join(_QUOTA_OPTIONS)}.")
        changes[key] = None
    return changes


def cmd_tenant(args: argparse.Namespace) -> int:
    from ..tenancy.tenants import TenantNotFound

    if args.action == "usage":  # reads the usage the server persisted: no tenant registry needed
        from .usage import cmd_usage

        return cmd_usage(args)
    try:
        changes = _checked_tenant_args(args)
    except ValueError as exc:
        print(f"dpmsf: {exc}", file=sys.stderr)
        return 2
    security = _security()
    try:
        _run_tenant_action(args, security, changes)
    except (TenantNotFound, ValueError) as exc:
        print(f"dpmsf: {exc}", file=sys.stderr)
        return 1
    return 0


def _checked_tenant_args(args: argparse.Namespace) -> dict[str, Any]:
    """The quota changes asked for, once the command line is known to make sense (a usage error, exit 2, before
    any tenant registry is opened): quota options only with ``quota``, an id where the action needs one."""
    changes = _quota_changes(args)
    if changes and args.action != "quota":
        raise ValueError(f"quota options belong to 'dpmsf tenant quota ID', not to 'tenant {args.action}'")
    if args.action in ("show", "disable", "enable", "rotate-key", "quota") and not args.id:
        raise ValueError(f"tenant {args.action} needs a tenant id")
    return changes


def _run_tenant_action(args: argparse.Namespace, security: Any, changes: dict[str, Any]) -> None:
    """One tenant action, its result printed as JSON lines; the key is shown only where it was just made."""
    from ..tenancy.tenants import TenantNotFound

    registry = security.tenants
    if args.action == "add":
        tenant = registry.add(name=args.name or "", tenant_id=args.id)
        print(json.dumps(_show(tenant, True)))
    elif args.action == "list":
        for tenant in registry.list():
            print(json.dumps(_show(tenant, False)))
    elif args.action == "show":
        found = registry.get(args.id)
        if found is None:
            raise TenantNotFound(args.id)
        print(json.dumps(_show(found, False, security.settings)))
    elif args.action == "quota":  # no option: show them
        tenant = registry.set_quotas(args.id, changes) if changes else registry.get(args.id)
        if tenant is None:
            raise TenantNotFound(args.id)
        print(json.dumps(_show(tenant, False, security.settings)))
    else:
        method = {"disable": registry.disable, "enable": registry.enable, "rotate-key": registry.rotate_key}
        tenant = method[args.action](args.id)
        print(json.dumps(_show(tenant, args.action == "rotate-key")))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="mint a single-use token (default: the admin's)")
    p.add_argument("--tenant", help="tenant UUID (default: ADMIN_ID)")
    p.add_argument(
        "--ttl", type=float, help="seconds the token lives (default DPMSF_TOKEN_TTL, at most DPMSF_TOKEN_MAX_TTL)"
    )
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "tenant",
        help="manage tenants: add | list | show ID | disable ID | enable ID | rotate-key ID | quota ID | usage [ID]",
    )
    p.add_argument("action", choices=["add", "list", "show", "disable", "enable", "rotate-key", "quota", "usage"])
    p.add_argument("id", nargs="?", help="tenant UUID (add: optional, default a new one)")
    p.add_argument("--name", help="a label for the tenant (add)")
    p.add_argument("--since", help="usage: from this ISO time or this long ago (90s, 15m, 6h, 30d); default: all")
    quota = p.add_argument_group(
        "quota ID",
        "override the operator's defaults (DPMSF_TENANT_*, DPMSF_STORE_MAX_DOC) for one tenant;"
        " the value 'default' clears an override",
    )
    helps = {
        "modules": "modules the tenant may store",
        "upload_mb": "MB of modules, all together",
        "store_mb": "MB of documents in the store",
        "max_doc": "bytes of one document",
        "concurrency": "calls running at once",
        "rate": "requests per second (0: no limit)",
    }
    for name, option in _QUOTA_OPTIONS.items():
        quota.add_argument(option, dest=name, metavar="N", help=helps[name])
    quota.add_argument("--reset", action="append", metavar="NAME", help="clear one override (repeatable)")
    p.set_defaults(func=cmd_tenant)
