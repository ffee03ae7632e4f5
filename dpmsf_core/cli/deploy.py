"""`dpmsf deploy`: ``sam build`` then ``sam deploy`` (guided the first time), as ``chalice deploy`` is one verb.

``sam build`` runs infra/Makefile, which runs ``dpmsf package`` under the ``PYTHON`` it is given: this
interpreter, so the build uses the same DPMSF and pip as the command. The guided deploy asks the template's
parameters once and saves the answers in ``samconfig.toml`` (in the working directory, where sam looks);
later deploys reuse them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .project import Project

INSTALL_HINT = (
    "install it in its own virtualenv: python3 -m venv ~/.sam-cli && ~/.sam-cli/bin/pip install aws-sam-cli, "
    "then put ~/.sam-cli/bin on PATH or pass --sam ~/.sam-cli/bin/sam "
    "(https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/install-sam-cli.html)"
)


def plan(args: argparse.Namespace, sam: str, where: Path) -> list[list[str]]:
    """The two commands, decided from the arguments and the folder they run in (pure but for one stat)."""
    guided = args.guided if args.guided is not None else not (where / "samconfig.toml").exists()
    build = [sam, "build", "--template-file", str(args.template)]
    extra = args.sam_args[1:] if args.sam_args[:1] == ["--"] else args.sam_args
    deploy = [sam, "deploy", *(["--guided"] if guided else []), *extra]
    return [build, deploy]


def cmd_deploy(args: argparse.Namespace) -> int:
    sam = args.sam or shutil.which("sam")
    if not sam or not (Path(sam).is_file() and os.access(sam, os.X_OK)):
        why = f"{args.sam} is not an executable" if args.sam else "the AWS SAM CLI ('sam') is not on PATH"
        print(f"dpmsf deploy: {why}; {INSTALL_HINT}", file=sys.stderr)
        return 2
    project: Project | None = getattr(args, "project", None)
    if args.template is None and project is None:
        print(
            f"dpmsf deploy: {Path.cwd()} is not in a DPMSF project (dpmsf init DIR makes one); run it in your "
            "project's folder, or pass --template infra/template.yaml",
            file=sys.stderr,
        )
        return 2
    template = Path(args.template) if args.template else project.template if project is not None else Path()
    if not template.is_file():
        print(f"dpmsf deploy: template {template} does not exist (--template)", file=sys.stderr)
        return 2
    args.template = str(template)
    where: Path = project.root if project is not None else Path.cwd()  # samconfig.toml: the project's, wherever one is
    env = {**os.environ, "PYTHON": sys.executable}  # infra/Makefile: PYTHON ?= python3
    for cmd in plan(args, sam, where):
        print("dpmsf deploy: " + shlex.join(cmd), file=sys.stderr)
        if args.dry_run:
            continue
        code = subprocess.run(cmd, env=env, cwd=where, check=False).returncode
        if code != 0:
            print(f"dpmsf deploy: {shlex.join(cmd[1:2])} failed (exit {code})", file=sys.stderr)
            return code
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deploy", help="sam build + sam deploy (guided the first time) of infra/template.yaml")
    p.add_argument("--template", help="SAM template (default: the project's infra/template.yaml)")
    p.add_argument("--sam", help="the sam executable (default: sam on PATH)")
    guided = p.add_mutually_exclusive_group()
    guided.add_argument("--guided", dest="guided", action="store_true", default=None, help="ask the parameters")
    guided.add_argument("--no-guided", dest="guided", action="store_false", help="use samconfig.toml as it is")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    p.add_argument("sam_args", nargs=argparse.REMAINDER, help="after --: more sam deploy options")
    p.set_defaults(func=cmd_deploy)
