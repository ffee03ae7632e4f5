"""One self-contained Lambda folder (and zip): core, handler, dependencies, plugins, bytecode, checked for its runtime.

The folder is what ``sam build`` leaves in ``.aws-sam/build/DpmsfFunction`` (infra/Makefile calls ``dpmsf
package``) and what ``aws lambda update-function-code --zip-file`` takes: the handler is
``handler.aws_lambda.handler`` and ``DPMSF_PLUGINS=.`` serves the bundled ``plugins/`` folder. Nothing else of
the repository goes in: no local state (``.dpmsf``), tests, bench or build folders, no dot-files.

Bytecode is compiled by the target's own interpreter (a ``.pyc`` only loads in the version that wrote it) with
``unchecked-hash`` invalidation: the code is read-only on Lambda and zip timestamps are unreliable, so every
import uses the ``.pyc`` without a stat or a recompile.

``plugins/.dpmsf-manifest.json`` (``packaging.manifest``) records what each bundled plugin serves, found by
importing them at build time, so that a cold start imports only the plugin its request calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import dependencies
from .manifest import write_manifest
from .target import PackagingError, Target, check_imports, check_native_code, find_python, top_level_modules

if TYPE_CHECKING:
    from importlib import metadata as md

CORE_DIR = Path(__file__).resolve().parent.parent
HANDLER_DIR = CORE_DIR.parent / "handler"
BUNDLED_PLUGINS = CORE_DIR.parent / "plugins"
MARKER = ".dpmsf-artifact.json"
_SKIP_DIRS = {"__pycache__", "tests", "test", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}
# Build-time only, never imported by the handler (tests/test_architecture.py): the CLI and this packaging code.
_CORE_BUILD_TIME = {"cli", "packaging", "__main__.py"}
# Our own modules the handler imports, checked beside the dependencies (the lambda adapter pulls in the app).
_OWN_MODULES = ("dpmsf_core", "dpmsf_core.app", "dpmsf_core.aws.lambda_adapter")


@dataclass
class Artifact:
    """What was built: the folder, its zip (if asked for), sizes in bytes, the bundled distributions, the checks."""

    folder: Path
    target: Target = field(default_factory=Target)
    zip_path: Path | None = None
    size: int = 0
    zip_size: int = 0
    files: int = 0
    distributions: list[str] = field(default_factory=list)
    bytecode: bool = False
    python: str | None = None  # the target interpreter that compiled and checked it
    imports_checked: int = 0
    manifest_modules: int | None = None  # plugins the routing manifest lists (None: built without one)

    def summary(self) -> str:
        line = f"{self.folder}: {self.files} files, {_mib(self.size)} unpacked"
        if self.zip_path is not None:
            line += f"; {self.zip_path}: {_mib(self.zip_size)} zipped"
        if self.python:
            line += f"; {self.imports_checked} modules import under Python {self.target.python} ({self.python})"
        else:
            line += f" (no bytecode, not import-checked: Python {self.target.python} was not found here)"
        return line


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def build(
    out: str | Path = "build/lambda",
    plugins: Sequence[str | Path] = (BUNDLED_PLUGINS,),
    *,
    target: Target | None = None,
    make_zip: bool = False,
    deps: str = "pip",
    requirements: Iterable[str] = dependencies.RUNTIME_REQUIREMENTS,
    sandbox: bool = False,
    target_python: str | None = None,
    strict: bool = False,
    log: Callable[[str], object] = print,
) -> Artifact:
    """Build the artifact into ``out`` (replaced if it is an earlier artifact); ``deps`` is pip | venv | none.

    ``strict=True`` (what ``sam build`` uses) refuses to finish without the target's interpreter, which compiles
    the bytecode and imports every bundled module. ``sandbox=True`` adds wasmtime and the pinned interpreter,
    compiled here for the target CPU so that no cold start compiles it (about 27 MB).
    """
    target = target or Target()
    python = _target_python(target, deps, target_python, strict)
    if sandbox:
        requirements = [*requirements, *_sandbox_requirements(target)]
    folder = Path(out).resolve()
    _prepare(folder)
    try:
        kept = _bundle(folder, plugins, list(requirements), deps, target, log)
        if sandbox:
            _bundle_sandbox(folder, python or sys.executable, target, log)
        artifact = Artifact(folder=folder, target=target, python=python)
        artifact.distributions = sorted(f"{d.metadata['Name']}=={d.version}" for d in kept.values())
        _compile_and_check(artifact, kept, log)
        artifact.manifest_modules = write_manifest(folder / "plugins", python or sys.executable, [folder], log)
        _write_marker(artifact, plugins)
        _measure(artifact)
        if make_zip:
            artifact.zip_path = folder.with_suffix(".zip")
            zip_folder(folder, artifact.zip_path)
            artifact.zip_size = artifact.zip_path.stat().st_size
    except BaseException:  # a failed or interrupted build leaves nothing behind, so the next run may start over
        shutil.rmtree(folder, ignore_errors=True)
        if make_zip:
            folder.with_suffix(".zip").unlink(missing_ok=True)
        raise
    return artifact


def _target_python(target: Target, deps: str, target_python: str | None, strict: bool) -> str | None:
    """The target's interpreter, checked before anything is written: a wrong ``deps`` or a venv that cannot be
    copied for this target stops the build, and so does a missing interpreter when ``strict``."""
    if deps not in ("pip", "venv", "none"):
        raise PackagingError(f"deps={deps!r}. Choices are: pip|venv|none")
    if deps == "venv":
        from .target import refuse_venv_copy

        refuse_venv_copy(target)
    python = find_python(target.python, target_python)
    if python is None and strict:
        raise PackagingError(
            f"Python {target.python} (the Lambda runtime's) is neither on PATH nor under pyenv: it compiles the "
            f"bytecode and checks that every dependency imports. Install it (pyenv install {target.python}, or "
            f"your package manager's python{target.python}), or point --target-python at it."
        )
    return python


def _sandbox_requirements(target: Target) -> list[str]:
    """What ``--sandbox`` adds, if it can: the interpreter is precompiled here, so only for this machine's CPU."""
    from ..sandbox import runtime as sandbox_runtime

    if target.arch != sandbox_runtime.arch():
        raise PackagingError(
            f"--sandbox for {target.arch}: the interpreter can only be precompiled on a {target.arch} machine"
        )
    return list(dependencies.SANDBOX_REQUIREMENTS)


def _bundle(
    folder: Path,
    plugins: Sequence[str | Path],
    requirements: list[str],
    deps: str,
    target: Target,
    log: Callable[[str], object],
) -> dict[str, md.Distribution]:
    """Core, handler, plugins and the dependencies ``deps`` says, pruned and checked for the target's CPU; the
    distributions kept, by name."""
    _copy_tree(CORE_DIR, folder / "dpmsf_core", skip=_CORE_BUILD_TIME)
    _copy_tree(HANDLER_DIR, folder / "handler")
    (folder / "plugins").mkdir()
    for source in plugins:
        _copy_plugins(Path(source), folder / "plugins", log)
    if deps == "pip":
        dependencies.pip_install(folder, requirements, target, log)
    elif deps == "venv":
        dependencies.copy_from_environment(folder, requirements)
    kept = dependencies.prune(folder, requirements) if deps != "none" else {}
    check_native_code(folder, target)
    return kept


def _bundle_sandbox(folder: Path, python: str, target: Target, log: Callable[[str], object]) -> None:
    """The sandbox interpreter precompiled for the target, its ``.wasm`` dropped: no cold start compiles it."""
    from ..sandbox import runtime as sandbox_runtime

    log("dpmsf package: precompiling the sandbox interpreter (a few seconds)")
    _precompile_with_artifact(folder, python, target.arch or "")
    for wasm in folder.rglob(sandbox_runtime.WASM_FILE):
        wasm.unlink()


def _compile_and_check(artifact: Artifact, kept: dict[str, md.Distribution], log: Callable[[str], object]) -> None:
    """Bytecode and the import check, both by the target's interpreter; without one, neither (and it says so)."""
    python = artifact.python
    if python is None:
        log(f"dpmsf package: no bytecode and no import check: Python {artifact.target.python} was not found here")
        return
    folder = artifact.folder
    _compile(folder, python, log)
    artifact.bytecode = True
    modules = {m for d in kept.values() for m in top_level_modules(folder, map(str, d.files or []))}
    with tempfile.TemporaryDirectory(prefix="dpmsf-check-") as scratch:
        artifact.imports_checked = check_imports(folder, python, {*modules, *_OWN_MODULES}, Path(scratch))


def _write_marker(artifact: Artifact, plugins: Sequence[str | Path]) -> None:
    """The record that makes the folder ours (a later build may replace it) and says what it was built for."""
    manifest = {
        "python": artifact.target.python,
        "platform": artifact.target.platform,
        "distributions": artifact.distributions,
        "plugins": [str(p) for p in plugins],
        "checked_with": artifact.python,
    }
    (artifact.folder / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")


def _measure(artifact: Artifact) -> None:
    """Files and unpacked bytes: what Lambda's 250 MB limit counts."""
    for path in artifact.folder.rglob("*"):
        if path.is_file():
            artifact.files += 1
            artifact.size += path.stat().st_size


def _compile(folder: Path, python: str, log: Callable[[str], object]) -> None:
    """``.pyc`` by the target's interpreter; a file that does not compile is reported, as Lambda would fail it."""
    cmd = [python, "-I", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        log(f"dpmsf package: some files did not compile under {python}:\n{proc.stdout.strip()[-2000:]}")


def _precompile_with_artifact(folder: Path, python: str, target_arch: str) -> None:
    """Compile with the artefact's own wasmtime and interpreter (not ours): a compiled module only loads in the
    wasmtime version that wrote it, and the record beside it names that version."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from dpmsf_core.sandbox.runtime import precompile_into;"
        "precompile_into(Path(sys.argv[1]) / 'dpmsf_core' / 'sandbox', sys.argv[2])"
    )
    subprocess.run([python, "-I", "-c", code, str(folder), target_arch], check=True)


def _prepare(folder: Path) -> None:
    """Start from an empty folder; refuse to wipe one that is not an earlier artifact."""
    if folder.exists():
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise PackagingError(f"{folder} exists and is not a dpmsf package artifact; choose another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # Claimed at once: a build killed before the end (no cleanup runs then) leaves a folder the next run replaces.
    (folder / MARKER).write_text(json.dumps({"incomplete": True}) + "\n")


def _copy_tree(source: Path, target: Path, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Source files only: no caches, dot-files or tests; ``skip`` names are left out at the top of ``source``."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == source
        return {
            n
            for n in names
            if n in _SKIP_DIRS or n.endswith((".pyc", ".pyo")) or n.startswith(".") or (top and n in skip)
        }

    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)


def _copy_plugins(source: Path, target: Path, log: Callable[[str], object]) -> None:
    if not source.is_dir():
        raise PackagingError(f"plugin folder {source} does not exist")
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


def zip_folder(folder: Path, target: Path) -> None:
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
