"""``dpmsf init DIR``: a project of one's own (as ``chalice new-project``), for someone who installed the package.

The files come from ``templates/project`` (package data): ``name.ext.tmpl`` is written as ``name.ext``,
``gitignore.tmpl`` as ``.gitignore`` (``gcloudignore.tmpl`` likewise); ``{{project}}``, ``{{version}}`` and
``{{requirement}}`` are filled in. DPMSF's own wheel goes into ``vendor/`` when it was installed from a file.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .vendor import VENDOR, installed_from_file, vendor_wheel

EXTRAS = "gae,gcp"
TEMPLATE_SUFFIX = ".tmpl"
_DOTFILES = {"gitignore": ".gitignore", "gcloudignore": ".gcloudignore"}
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
    """Every template file, filled in, under ``target`` (and DPMSF's wheel in ``vendor/`` when it came from a file);
    returns the paths written, in order."""
    target.mkdir(parents=True, exist_ok=True)
    wheel, line = requirement(target)
    values = {"project": project, "version": _version(), "requirement": line}
    written: list[Path] = [wheel] if wheel is not None else []
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


def requirement(project: Path) -> tuple[Path | None, str]:
    """The wheel vendored into ``project`` (or None) and the ``requirements.txt`` line that names DPMSF.

    From a package index: ``dpmsf[gae,gcp]==<version>``. From a wheel, a folder or a checkout (PEP 610
    ``direct_url.json``): that DPMSF's wheel in ``vendor/``, named by a relative path, so that the project
    installs the very DPMSF its tests were written against on any machine (``pip install -r requirements.txt``
    from the project folder, ``gcloud app deploy``). ``gae``: the App Engine server (gunicorn, uvicorn-worker);
    ``gcp``: the Firestore client ``app.yaml``'s store needs.
    """
    found = list(metadata.distributions(name="dpmsf"))  # a checkout's dpmsf.egg-info may come before the install
    dist = next((d for d in found if installed_from_file(d)), None)
    if dist is None:
        return None, f"dpmsf[{EXTRAS}]=={found[0].version if found else _version()}"
    wheel = vendor_wheel(dist, project)
    return wheel, f"./{VENDOR}/{wheel.name}[{EXTRAS}]"
