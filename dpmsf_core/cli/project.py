"""The project a ``dpmsf`` command runs in: found from the working directory, walking up to its root, as git does.

A project root is a folder whose ``pyproject.toml`` has a ``[tool.dpmsf]`` table (what ``dpmsf init`` writes),
or, for projects made before that and for the repository itself, a folder with ``plugins/`` beside
``infra/template.yaml``. Its ``plugins/``, ``infra/template.yaml``, ``requirements.txt`` and ``.dpmsf/`` state
folder are what the commands use unless a flag or a variable names others. Without a project, a command that
needs plugins (or the state folder) stops with one line naming the flag and the folder it looked from, instead
of serving nothing from wherever the package happens to be installed.

Standard library only: ``dpmsf package`` runs under a bare ``python3`` (infra/Makefile).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

PYPROJECT = "pyproject.toml"
TABLE = "tool.dpmsf"

# What each command needs from where it stands (tenant: its own subcommands, which open the state folder).
PLUGINS = "plugins"
STATE = "state"
TEMPLATE = "template"
NEEDS: dict[str, frozenset[str]] = {
    "serve": frozenset({PLUGINS, STATE}),
    "routes": frozenset({PLUGINS, STATE}),
    "openapi": frozenset({PLUGINS, STATE}),
    "invoke": frozenset({PLUGINS, STATE}),
    "package": frozenset({PLUGINS}),
    "deploy": frozenset({TEMPLATE}),
    "token": frozenset({STATE}),
    "tenant": frozenset({STATE}),
}

# Commands that read Settings (and .env); package and deploy run under a bare python3 and read neither.
READS_SETTINGS = frozenset({"serve", "routes", "openapi", "invoke", "token", "tenant"})


@dataclass(frozen=True)
class Project:
    """A project folder and the places in it the commands use; ``own`` when ``[tool.dpmsf]`` marks it (a project
    made by ``dpmsf init``), not when it is recognised by its folders (the repository itself)."""

    root: Path
    own: bool = True

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def template(self) -> Path:
        return self.root / "infra" / "template.yaml"

    @property
    def state(self) -> Path:
        return self.root / ".dpmsf"

    @property
    def requirements(self) -> Path | None:
        """The plugins' libraries (``dpmsf package`` bundles them): a ``dpmsf init`` project's ``requirements.txt``;
        the repository's is App Engine's server, not its plugins'."""
        return self.root / "requirements.txt" if self.own else None


def marked(folder: Path) -> bool:
    """``pyproject.toml`` with a ``[tool.dpmsf]`` table."""
    pyproject = folder / PYPROJECT
    if not pyproject.is_file():
        return False
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return isinstance(data.get("tool"), dict) and "dpmsf" in data["tool"]


def find(start: Path) -> Project | None:
    """The project ``start`` is in (itself or the nearest folder above it that is a root), or None."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if marked(folder):
            return Project(folder)
        if (folder / "plugins").is_dir() and (folder / "infra" / "template.yaml").is_file():
            return Project(folder, own=False)
    return None


def _nowhere(cwd: Path, fix: str) -> ConfigError:
    return ConfigError(
        f"{cwd} is not in a DPMSF project (no folder from there up has {PYPROJECT} with [{TABLE}], "
        f"or plugins/ beside infra/template.yaml). Run it in your project's folder (dpmsf init DIR makes one), "
        f"or {fix}."
    )


def _is_url(entry: str) -> bool:
    return "://" in entry


def resolve(
    command: str, plugins_flag: str | None, env: Mapping[str, str], cwd: Path
) -> tuple[Project | None, dict[str, str]]:
    """The project and the variables to set for ``command`` run in ``cwd`` (pure: no environment is changed).

    ``--plugins`` (or DPMSF_PLUGINS) wins over the project's ``plugins/``; each local folder becomes an absolute
    path (``.`` is the project's ``plugins/``), and one that does not exist is refused. DPMSF_STATE_DIR wins over
    the project's ``.dpmsf/``, so that the token a command mints is one the project's server accepts.
    """
    needs = NEEDS.get(command, frozenset())
    project = find(cwd)
    updates: dict[str, str] = {}
    if PLUGINS in needs:
        given = plugins_flag or env.get("DPMSF_PLUGINS") or ""
        where = "--plugins" if plugins_flag else "DPMSF_PLUGINS"
        if not given:
            if project is None:
                raise _nowhere(cwd, "pass --plugins FOLDER")
            given, where = str(project.plugins), f"the project's {project.plugins}"
        updates["DPMSF_PLUGINS"] = _plugin_folders(given, where, project, cwd)
    if STATE in needs and not (env.get("DPMSF_STATE_DIR") or "").strip():
        if project is not None:
            updates["DPMSF_STATE_DIR"] = str(project.state)
        elif command in ("token", "tenant") and not env.get("DPMSF_TENANTS"):
            raise _nowhere(cwd, "set DPMSF_STATE_DIR to the state folder of the server the token is for")
    return project, updates


def _plugin_folders(given: str, where: str, project: Project | None, cwd: Path) -> str:
    from ..config import BUNDLED_PLUGINS, Settings

    out: list[str] = []
    for entry in Settings.from_env({"DPMSF_PLUGINS": given}, dotenv=None).plugins:  # split as the server splits
        if _is_url(entry):
            out.append(entry)
            continue
        if entry == ".":
            folder = project.plugins if project is not None else Path(BUNDLED_PLUGINS)
        else:
            folder = (cwd / os.path.expanduser(entry)).resolve()
        if not folder.is_dir():
            shown = entry if entry == str(folder) else f"{entry} ({folder})"
            raise ConfigError(f"the plugin folder {shown}, from {where}, does not exist.")
        out.append(str(folder))
    return ":".join(out)


def stand_in_project(command: str, plugins_flag: str | None, cwd: Path | None = None) -> Project | None:
    """``resolve`` for this process: its environment (over ``.env``, as Settings reads it) gets the variables."""
    cwd = cwd or Path.cwd()
    env: dict[str, str] = {}
    dotenv = cwd / ".env"
    if command in READS_SETTINGS and dotenv.is_file():
        from dotenv import dotenv_values  # only paid when a .env exists

        env.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    env.update(os.environ)
    project, updates = resolve(command, plugins_flag, env, cwd)
    os.environ.update(updates)
    return project
