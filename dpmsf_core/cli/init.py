"""``dpmsf init DIR``: a project of one's own (as ``chalice new-project``), for someone who installed the package.

The files come from ``templates/project`` (package data): ``name.ext.tmpl`` is written as ``name.ext``,
``gitignore.tmpl`` as ``.gitignore``; ``{{project}}``, ``{{version}}`` and ``{{requirement}}`` are filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

TEMPLATE_SUFFIX = ".tmpl"
_DOTFILES = {"gitignore": ".gitignore"}
_SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
SERVE = f"{_SETUP} && .venv/bin/dpmsf serve"  # the generated README's two commands
TEST = f"{_SETUP} pytest httpx && .venv/bin/python -m pytest"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dpmsf init`` to the command line."""
    p = sub.add_parser(
        "init",
        help="write a new project: plugins/, tests/, infra/template.yaml, app.yaml, README.md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", help="the project folder to create (it must not exist or be empty)")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        print(f"dpmsf: {target} exists and is not an empty folder; nothing written.", file=sys.stderr)
        return 1
    project = target.resolve().name
    written = write_project(target, project)
    for path in written:
        print(f"wrote {path}")
    print(f"\nNext, in {target} (as its README says):\n  {SERVE}\n  {TEST}")
    return 0


def write_project(target: Path, project: str) -> list[Path]:
    """Every template file, filled in, under ``target``; returns the paths written, in order."""
    values = {"project": project, "version": _version(), "requirement": requirement()}
    written: list[Path] = []
    for relative, source in _templates(files(__package__ or "dpmsf_core.cli").joinpath("templates", "project")):
        text = source.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        written.append(out)
    return written


def _templates(root: Traversable, prefix: Path = Path()) -> list[tuple[Path, Traversable]]:
    found: list[tuple[Path, Traversable]] = []
    for item in sorted(root.iterdir(), key=lambda t: t.name):
        if item.is_dir():
            if item.name != "__pycache__":
                found.extend(_templates(item, prefix / item.name))
        elif item.name.endswith(TEMPLATE_SUFFIX):
            name = item.name[: -len(TEMPLATE_SUFFIX)]
            found.append((prefix / _DOTFILES.get(name, name), item))
    return found


def _version() -> str:
    from .. import __version__

    return __version__


def requirement() -> str:
    """What the new project's ``requirements.txt`` names: this very DPMSF, with the App Engine server.

    Installed from PyPI: ``dpmsf[gae]==<version>``; from a wheel or a folder (PEP 610 ``direct_url.json``):
    ``dpmsf[gae] @ file:///...``, so the project installs what its tests were written against.
    """
    try:
        dist = metadata.distribution("dpmsf")
    except metadata.PackageNotFoundError:
        return f"dpmsf[gae]=={_version()}"
    direct = dist.read_text("direct_url.json")
    try:
        url = json.loads(direct).get("url", "") if direct else ""
    except (ValueError, AttributeError):
        url = ""
    if url.startswith("file://"):  # a wheel or a folder (an editable checkout is installed from the folder)
        return f"dpmsf[gae] @ {url}"
    return f"dpmsf[gae]=={dist.version}"
