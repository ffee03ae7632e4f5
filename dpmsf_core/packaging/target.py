"""The Lambda runtime an artefact is built for, and the checks that its native code is for that runtime.

An artefact with native modules for the wrong Python imports fine on the build machine and answers 500 on
Lambda (pydantic-core, cryptography). So the target is explicit (``Target``), copying this environment's
packages for another target is refused (``refuse_venv_copy``), every wheel tag and ELF file is checked
statically (``check_native_code``), and, when the target's interpreter is installed here (``find_python``),
every bundled distribution is imported under it from the artefact alone (``check_imports``).
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The template's ``Runtime: python3.12`` and ``Architectures: [x86_64]`` (tests/test_template.py keeps them equal).
LAMBDA_PYTHON = "3.12"
LAMBDA_PLATFORM = "manylinux2014_x86_64"
# Part of the Lambda Python runtime: never bundled, and an import that needs them is not a failure here.
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore", "s3transfer"})
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine: EM_X86_64, EM_AARCH64


class PackagingError(Exception):
    """The artefact cannot be built as asked, or would not run on its target; the message names the fix."""


@dataclass(frozen=True)
class Target:
    """``python`` is ``3.12``-style; ``platform`` a pip platform tag such as ``manylinux2014_x86_64``."""

    python: str = LAMBDA_PYTHON
    platform: str = LAMBDA_PLATFORM

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise PackagingError(f"--python-version {self.python!r}: expected the runtime's version, such as 3.12")
        if self.arch is None:
            raise PackagingError(
                f"--platform {self.platform!r}: Lambda runs Linux on x86_64 or arm64; "
                "use manylinux2014_x86_64 or manylinux2014_aarch64"
            )

    @property
    def arch(self) -> str | None:
        """``x86_64`` or ``aarch64``, read off the platform tag (None: not a Linux tag for a Lambda CPU)."""
        match = re.fullmatch(r"(?:many)?linux[0-9_]*_(x86_64|aarch64)", self.platform)
        return match.group(1) if match else None

    @property
    def cp(self) -> str:
        """The CPython tag: ``cp312``."""
        return "cp" + self.python.replace(".", "")


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def machine_arch() -> str:
    machine = _platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def refuse_venv_copy(target: Target) -> None:
    """``--deps venv`` copies this environment's files: only right when this *is* the target's Python and CPU."""
    here = f"Python {running_python()} on {sys.platform} {machine_arch()}"
    wanted = f"Python {target.python} on linux {target.arch}"
    if (running_python(), sys.platform, machine_arch()) != (target.python, "linux", target.arch):
        raise PackagingError(
            f"--deps venv would copy packages built for {here}, but the target is {wanted}: their native modules "
            f"(pydantic-core, cryptography) would not import there. Use --deps pip (downloads the target's wheels: "
            f"--platform {target.platform} --python-version {target.python}), or run dpmsf package from a "
            f"Python {target.python} environment on linux {target.arch}."
        )


def find_python(version: str, explicit: str | None = None) -> str | None:
    """An interpreter that really runs as CPython ``version``: this one, ``pythonX.Y`` on PATH, or pyenv's.

    A pyenv shim is on PATH for every installed version but fails unless that version is selected, so each
    candidate is run, not just found; and what is returned is the interpreter the candidate really ran (its
    ``sys.executable``), because the build later runs it with a stripped environment in which a shim, without
    ``PYENV_VERSION``, would pick another version or none.
    """
    if explicit:
        found = _reports(explicit)
        if found is not None and found[0] == version:
            return found[1]
        raise PackagingError(f"--target-python {explicit} is not a working CPython {version}")
    candidates: list[str] = [sys.executable] if running_python() == version else []
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    installed = sorted(versions.glob(f"{version}.*/bin/python{version}"), key=_version_key, reverse=True)
    candidates += [str(p) for p in installed]
    for candidate in candidates:
        found = _reports(candidate)
        if found is not None and found[0] == version:
            return found[1]
    return None


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in path.parent.parent.name.split("."))


def _reports(python: str) -> tuple[str, str] | None:
    """``(version, executable)`` of a CPython that runs, as run from here; the executable is the candidate itself
    unless that is a launcher (a pyenv shim, a script) that ran another one, which is then the one named."""
    code = "import sys; print(sys.implementation.name, '%d.%d' % sys.version_info[:2], sys.executable)"
    try:
        proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    name, version, executable = (proc.stdout.strip().split(" ", 2) + ["", ""])[:3]
    if proc.returncode != 0 or name != "cpython":
        return None
    return version, _same_or_real(python, executable)


def _same_or_real(candidate: str, executable: str) -> str:
    """The candidate when it is a binary (a venv's ``python`` must keep its own path), else what it launched."""
    try:
        with open(candidate, "rb") as fh:
            binary = fh.read(4) == b"\x7fELF"
    except OSError:
        binary = False
    return candidate if binary or not executable else executable


def check_native_code(folder: Path, target: Target) -> None:
    """Every wheel's tags and every ELF file must fit the target, whatever the build machine was."""
    problems: list[str] = []
    for wheel in sorted(folder.glob("*.dist-info/WHEEL")):
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        if tags and not any(_tag_fits(tag, target) for tag in tags):
            problems.append(f"{wheel.parent.name} is a wheel for {', '.join(tags)}")
    for path in sorted(folder.rglob("*.so*")):
        if not path.is_file():
            continue
        match = re.search(r"\.cpython-(\d)(\d+)-([a-z0-9_]+)-linux-gnu\.so$", path.name)
        if match and (f"{match.group(1)}.{match.group(2)}", match.group(3)) != (target.python, target.arch):
            problems.append(f"{path.relative_to(folder)} is built for CPython {match.group(1)}.{match.group(2)}")
            continue
        arch = _elf_arch(path)
        if arch is not None and arch != target.arch:
            problems.append(f"{path.relative_to(folder)} is {arch} machine code")
    if problems:
        raise PackagingError(
            f"native code for another runtime than Python {target.python} on linux {target.arch}: "
            + "; ".join(problems[:8])
            + ("; ..." if len(problems) > 8 else "")
        )


def _tag_fits(tag: str, target: Target) -> bool:
    """``cp312-cp312-manylinux_2_17_x86_64``, ``cp37-abi3-manylinux2014_x86_64``, ``py3-none-any`` fit 3.12 x86_64."""
    fits = False
    for interpreter in tag.split("-")[0].split("."):
        for abi in tag.split("-")[1].split("."):
            for plat in tag.split("-")[2].split("."):
                if plat != "any" and not (
                    plat.startswith(("manylinux", "linux_")) and plat.endswith(f"_{target.arch}")
                ):
                    continue
                if abi == "none" and (interpreter in ("py3", f"py{target.cp[2:]}") or interpreter == target.cp):
                    fits = True
                elif abi == "abi3" and interpreter.startswith("cp3") and int(interpreter[3:]) <= int(target.cp[3:]):
                    fits = True
                elif abi == interpreter == target.cp:
                    fits = True
    return fits


def _elf_arch(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"e_machine {machine}")


_IMPORT_CHECK = """
import importlib, json, sys
folder, names, provided = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
sys.path.insert(0, folder)
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in provided:
            failed[name] = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print("DPMSF-CHECK " + json.dumps({"version": "%d.%d" % sys.version_info[:2], "failed": failed}))
"""


def check_imports(folder: Path, python: str, modules: Iterable[str], scratch: Path) -> int:
    """Import each module under ``python -I -S -B`` with only the artefact on sys.path; return how many."""
    names = sorted(set(modules))
    scratch.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), "DPMSF_STATE_DIR": str(scratch)}
    proc = subprocess.run(
        [
            python,
            "-I",
            "-S",
            "-B",
            "-c",
            _IMPORT_CHECK,
            str(folder),
            json.dumps(names),
            json.dumps(sorted(PROVIDED_BY_LAMBDA)),
        ],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("DPMSF-CHECK ")), None)
    if line is None:
        raise PackagingError(f"the import check under {python} did not run: {proc.stderr.strip()[-2000:]}")
    result = json.loads(line[len("DPMSF-CHECK ") :])
    if result["failed"]:
        lines = "; ".join(f"{name}: {why}" for name, why in sorted(result["failed"].items()))
        raise PackagingError(f"these do not import under Python {result['version']} ({python}): {lines}")
    return len(names)


def top_level_modules(folder: Path, files: Iterable[str]) -> set[str]:
    """The importable top-level names among a distribution's RECORD paths (packages, modules, extensions)."""
    names: set[str] = set()
    for entry in files:
        parts = Path(entry).parts
        if not parts or parts[0] in ("..", "bin", "__pycache__") or parts[0].endswith((".dist-info", ".data", ".libs")):
            continue
        if len(parts) == 1:
            if parts[0].endswith(".py"):
                names.add(parts[0][:-3])
            elif ".so" in parts[0] or parts[0].endswith(".pyd"):
                names.add(parts[0].split(".")[0])
        elif parts[0].isidentifier() and (folder / parts[0]).is_dir():
            names.add(parts[0])
    return {n for n in names if n.isidentifier()}
