"""`dpmsf invoke` (the Lambda handler on one event, like `sam local invoke` without Docker), `dpmsf package`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..testing import LambdaContext


def cmd_invoke(args: argparse.Namespace) -> int:
    from ..app import create_app
    from ..aws.lambda_adapter import build_handler
    from ..config import Settings

    if args.plugins:
        os.environ["DPMSF_PLUGINS"] = args.plugins
    raw = sys.stdin.read() if args.event == "-" else Path(args.event).read_text(encoding="utf-8")
    try:
        event = json.loads(raw)
    except ValueError as exc:
        print(f"dpmsf invoke: {args.event} is not JSON: {exc}", file=sys.stderr)
        return 2
    handler = build_handler(create_app(Settings.from_env()))
    try:
        response = handler(event, LambdaContext(function_name="dpmsf-local"))
    except Exception as exc:  # the invocation failed, as Lambda would report it
        print(json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)}, indent=2))
        return 1
    finally:
        handler.close()
    print(json.dumps(response, indent=2, default=str))
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from ..packaging import RUNTIME_REQUIREMENTS, PackagingError, Target, build
    from ..packaging.dependencies import project_requirements

    plugins = [Path(p) for p in args.plugins.split(":") if p and "://" not in p]  # absolute (cli.project)
    project = getattr(args, "project", None)
    out = args.out or (project.root / "build" / "lambda" if project is not None else Path("build/lambda"))
    try:
        requirements = [*RUNTIME_REQUIREMENTS]
        listed = project.requirements if project is not None else None
        if listed is not None and listed.is_file():  # the plugins' own libraries
            requirements += project_requirements(listed)
        artifact = build(
            out,
            plugins,
            requirements=requirements,
            target=Target(python=args.python_version, platform=args.platform),
            make_zip=args.zip,
            deps=args.deps,
            sandbox=args.sandbox,
            target_python=args.target_python,
            strict=args.strict,
            log=lambda line: print(line, file=sys.stderr),
        )
    except PackagingError as exc:
        print(f"dpmsf package: {exc}", file=sys.stderr)
        return 2
    print(artifact.summary())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("invoke", help="run the Lambda handler on one event JSON file and print the response")
    p.add_argument("--event", required=True, help="event JSON file ('-' = stdin), e.g. tests/events/apigw_v1.json")
    p.add_argument("--plugins", help="plugin folders, ':'-separated; unset: DPMSF_PLUGINS, else the project's plugins/")
    p.set_defaults(func=cmd_invoke)

    from ..packaging import LAMBDA_PLATFORM, LAMBDA_PYTHON

    p = sub.add_parser("package", help="build a self-contained Lambda folder (and zip): core, deps, plugins, .pyc")
    p.add_argument(
        "--plugins", help="plugin folders to bundle into plugins/, ':'-separated; unset: the project's plugins/"
    )
    p.add_argument("--out", help="output folder (default: the project's build/lambda; zip beside it)")
    p.add_argument("--zip", action="store_true", help="also write <out>.zip")
    p.add_argument(
        "--deps",
        default="pip",
        choices=["pip", "venv", "none"],
        help="pip wheels for the target (default), copy from this environment (same Python and CPU only), or none",
    )
    p.add_argument(
        "--platform",
        default=LAMBDA_PLATFORM,
        help=f"the target's pip platform tag (default {LAMBDA_PLATFORM}; manylinux2014_aarch64 for arm64)",
    )
    p.add_argument(
        "--python-version", default=LAMBDA_PYTHON, help=f"the Lambda runtime's Python (default {LAMBDA_PYTHON})"
    )
    p.add_argument("--target-python", help="that Python's interpreter (default: pythonX.Y on PATH, or pyenv's)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail without the target's interpreter (it compiles the bytecode and import-checks every dependency)",
    )
    p.add_argument(
        "--sandbox",
        action="store_true",
        help="include the WebAssembly sandbox for tenant modules, precompiled for this CPU (+~35 MB)",
    )
    p.set_defaults(func=cmd_package)

    from .deploy import register as register_deploy

    register_deploy(sub)
