"""``dpmsf token`` and ``dpmsf tenant add|list|disable|enable|rotate-key``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import Settings
from ..errors import ConfigError


def _security() -> Any:
    """The app's Security (same registry, master key and state directory as the server would use).

    A registry that cannot be opened (DynamoDB without DPMSF_MASTER_KEY, an unreadable master key file, a bad
    path) is a ConfigError: ``dpmsf`` prints one line and exits 2, never a traceback.
    """
    from ..tenancy.security import Security

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


def _show(tenant: Any, with_key: bool) -> dict[str, Any]:
    out = {"id": tenant.id, "name": tenant.name, "enabled": tenant.enabled, "admin": tenant.admin}
    if with_key:
        out["key"] = tenant.key
    return out


def cmd_tenant(args: argparse.Namespace) -> int:
    from ..tenancy.tenants import TenantNotFound

    if args.action == "usage":  # reads the usage the server persisted: no tenant registry needed
        from .usage import cmd_usage

        return cmd_usage(args)
    registry = _security().tenants
    try:
        if args.action == "add":
            tenant = registry.add(name=args.name or "", tenant_id=args.id)
            print(json.dumps(_show(tenant, True)))
        elif args.action == "list":
            for tenant in registry.list():
                print(json.dumps(_show(tenant, False)))
        elif args.action in ("disable", "enable", "rotate-key"):
            if not args.id:
                print(f"dpmsf: tenant {args.action} needs a tenant id", file=sys.stderr)
                return 2
            method = {"disable": registry.disable, "enable": registry.enable, "rotate-key": registry.rotate_key}
            tenant = method[args.action](args.id)
            print(json.dumps(_show(tenant, args.action == "rotate-key")))
    except (TenantNotFound, ValueError) as exc:
        print(f"dpmsf: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("token", help="mint a single-use token (default: the admin's)")
    p.add_argument("--tenant", help="tenant UUID (default: ADMIN_ID)")
    p.add_argument(
        "--ttl", type=float, help="seconds the token lives (default DPMSF_TOKEN_TTL, at most DPMSF_TOKEN_MAX_TTL)"
    )
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "tenant", help="manage tenants: add | list | disable ID | enable ID | rotate-key ID | usage [ID]"
    )
    p.add_argument("action", choices=["add", "list", "disable", "enable", "rotate-key", "usage"])
    p.add_argument("id", nargs="?", help="tenant UUID (add: optional, default a new one)")
    p.add_argument("--name", help="a label for the tenant (add)")
    p.add_argument("--since", help="usage: from this ISO time or this long ago (90s, 15m, 6h, 30d); default: all")
    p.set_defaults(func=cmd_tenant)
