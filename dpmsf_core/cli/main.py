"""``dpmsf``: serve, routes, new, openapi, token, tenant, invoke, package."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from . import project

PLUGIN_TEMPLATE = '''"""{name}: what this plugin offers (this docstring is shown in /docs)."""

from dpmsf_core import HTTPError, expose

# __alias__ = "{name}_v1"  # optional public name of this module (API versioning)


@expose.endpoint(method="GET|POST", API="{api}")
def {name}(*args, **kwargs):
    """Answer GET/POST /rest/services/{api}/?name=you"""
    name = kwargs.get("name", "world")
    if not isinstance(name, str):
        raise HTTPError(422, "name must be a string")
    return {{"hello": name, "args": list(args)}}


@expose.endpoint(method="GET", API="{api}-typed")
async def {name}_typed(count: int, label: str = "item") -> list[str]:
    """Typed and async: /rest/services/{api}-typed/?count=3 (count=x answers 422)."""
    return [f"{{label}} {{i}}" for i in range(count)]
'''


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "plugins", None):
        os.environ["DPMSF_PLUGINS"] = args.plugins
    return Settings.from_env()


def cmd_serve(args: argparse.Namespace) -> int:
    if args.plugins:
        os.environ["DPMSF_PLUGINS"] = args.plugins
    if args.workers > 1 and not os.environ.get("DPMSF_REPLAY_STORE"):
        os.environ["DPMSF_REPLAY_STORE"] = "sqlite:///" + str(
            Path(os.environ.get("DPMSF_STATE_DIR", ".dpmsf")) / "replay.db"
        )
    settings = Settings.from_env()  # fail fast, with one line, before uvicorn starts
    from ..logconfig import dict_config

    log_config = dict_config(args.log_level, access=args.access_log)  # one format, uvicorn's lines and every worker's
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "log_config": log_config,
        "access_log": False,  # ours (dpmsf.access) has the request id, endpoint and latency
        "proxy_headers": True,
        # SIGTERM: stop accepting, let in-flight requests finish this long, then close them and exit 0
        "timeout_graceful_shutdown": settings.grace_seconds,
    }
    from . import serving  # the banner is printed once the port is bound, not before

    if args.workers > 1:
        banner = serving.banner_lines(args.host, args.port, None, [os.environ.get("DPMSF_PLUGINS", ".")])
        serving.run("dpmsf_core.asgi:create", common, args.workers, lambda: banner)
        return 0
    from ..app import create_app

    _configure_local_logging(log_config)  # before the plugins load: their errors are logged in the same format
    app = create_app(settings)
    count = sum(1 for _ in app.registry.snapshot.endpoints())
    serving.run(app, common, 1, lambda: serving.banner_lines(args.host, args.port, count, app.registry.folders))
    return 0


def _configure_local_logging(log_config: dict[str, Any]) -> None:
    import logging.config

    logging.config.dictConfig(log_config)


def cmd_routes(args: argparse.Namespace) -> int:
    import logging

    from ..app import create_app

    logging.getLogger("dpmsf.registry").setLevel(logging.CRITICAL)  # each broken plugin is listed once, below
    app = create_app(_settings(args))
    directory = app.directory()
    rows = [
        (",".join(e["methods"]), e["url"], f"{e['module']}.{e['api']}", (e["doc"] or "").split("\n")[0])
        for e in directory["endpoints"]
    ]
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(("METHODS", "URL", "ENDPOINT"))]
    print(f"{'METHODS':<{widths[0]}}  {'URL':<{widths[1]}}  {'ENDPOINT':<{widths[2]}}  DOC")
    for methods, url, name, doc in sorted(rows, key=lambda r: r[1]):
        print(f"{methods:<{widths[0]}}  {url:<{widths[1]}}  {name:<{widths[2]}}  {doc}")
    for folder in app.registry.folders:
        if not os.path.isdir(folder):
            print(f"! {folder}: no such plugin folder", file=sys.stderr)
    for module in directory["modules"]:
        if module["status"] != "loaded":
            print(f"! {module['source']}: {module['status']}: {module['error']}", file=sys.stderr)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from ..app import create_app

    print(json.dumps(create_app(_settings(args)).openapi(), indent=2, default=str))
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    name = args.name
    if not name.isidentifier() or name.startswith("_"):
        print(
            f"dpmsf: '{name}' is not a valid module name (letters, digits, '_'; not starting with '_').",
            file=sys.stderr,
        )
        return 2
    found = project.find(Path.cwd())
    folder = Path(args.dir) if args.dir else (found.plugins if found is not None else Path("plugins"))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.py"
    if target.exists():
        print(f"dpmsf: {target} already exists; not overwritten.", file=sys.stderr)
        return 1
    target.write_text(PLUGIN_TEMPLATE.format(name=name, api=name.replace("_", "-")), encoding="utf-8")
    print(f"wrote {target}: GET /rest/services/{name.replace('_', '-')}/")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except where there is none to show (``None``, an on/off flag): the help
    text says what happens then ("unset: DPMSF_PLUGINS, else '.'")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="dpmsf",
        description="Dynamic Pluggable Microservices Framework",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dpmsf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = HelpFormatter
    plugins_help = (
        "plugin folders, ':'-separated ('.' = the project's plugins/); unset: DPMSF_PLUGINS, else the plugins/ of "
        "the project the current folder is in"
    )

    p = sub.add_parser("serve", help="run the local server (uvicorn)", formatter_class=defaults)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="port ($PORT if set)")
    p.add_argument("--plugins", help=plugins_help)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="no log line per request (default: one per request)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("routes", help="list every endpoint", formatter_class=defaults)
    p.add_argument("--plugins", help=plugins_help)
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("openapi", help="print the OpenAPI document", formatter_class=defaults)
    p.add_argument("--plugins", help=plugins_help)
    p.set_defaults(func=cmd_openapi)

    p = sub.add_parser("new", help="write a plugin skeleton", formatter_class=defaults)
    p.add_argument("name", help="the module's name (a Python identifier)")
    p.add_argument("--dir", help="the folder to write it into; unset: the project's plugins/ (else ./plugins)")
    p.set_defaults(func=cmd_new)

    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands() -> list[Any]:
    """Commands that live beside the features they drive (tokens, tenants, Lambda tools)."""
    out = []
    for module in (
        "dpmsf_core.cli.init",
        "dpmsf_core.cli.security",
        "dpmsf_core.cli.aws",
        "dpmsf_core.cli.cost",
        "dpmsf_core.cli.gcprun",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        out.append(mod.register)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in project.READS_SETTINGS:
            Settings.from_env()  # a bad variable is named first, wherever the command runs
        args.project = project.stand_in_project(args.command, getattr(args, "plugins", None))
        if project.PLUGINS in project.NEEDS.get(args.command, ()):
            args.plugins = os.environ["DPMSF_PLUGINS"]  # absolute folders: the project's, or those named
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"dpmsf: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
