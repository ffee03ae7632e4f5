"""The wheel of the running DPMSF, written into a new project (``vendor/``) so that the project installs from itself.

A project made by a DPMSF that came from a file (a wheel, a folder, an editable checkout) cannot name that file
in its ``requirements.txt``: the path is the maker's, and neither ``gcloud app deploy``, ``sam build`` nor a
colleague has it. So the project carries the wheel and names it by a relative path. The wheel is the one pip
installed from when it still exists; otherwise it is packed again from what runs (the ``dpmsf_core`` and
``handler`` packages and the distribution's metadata), which is the same code. Only a DPMSF from a package
index is named by version instead (``dpmsf[...]==X``): the index serves it to everyone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import zipfile
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

VENDOR = "vendor"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's first date: the same code packs to the same bytes
_METADATA_FILES = ("METADATA", "entry_points.txt", "top_level.txt")
_WHEEL = "Wheel-Version: 1.0\nGenerator: dpmsf init\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def installed_from_file(dist: metadata.Distribution) -> bool:
    """PEP 610: pip records ``direct_url.json`` for a wheel, a folder or an editable install, not for an index."""
    direct = dist.read_text("direct_url.json")
    try:
        return bool(direct) and str(json.loads(direct or "{}").get("url", "")).startswith("file://")
    except ValueError:
        return False


def vendor_wheel(dist: metadata.Distribution, project: Path) -> Path:
    """Write the running DPMSF's wheel into ``project/vendor/``; return its path (relative paths name it)."""
    name = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    target = project / VENDOR / name
    target.parent.mkdir(parents=True, exist_ok=True)
    source = _original_wheel(dist)
    if source is not None and source.name == name:
        shutil.copyfile(source, target)
    else:
        _pack(dist, target)
    return target


def _original_wheel(dist: metadata.Distribution) -> Path | None:
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
        return None
    path = Path(unquote(urlparse(url).path))
    return path if url.startswith("file://") and path.suffix == ".whl" and path.is_file() else None


def _pack(dist: metadata.Distribution, target: Path) -> None:
    """A pure-Python wheel of the running packages and the distribution's metadata (PEP 427, with its RECORD)."""
    import dpmsf_core

    core = Path(dpmsf_core.__file__).resolve().parent
    files: list[tuple[str, bytes]] = []
    for package in (core, core.parent / "handler"):
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(package.parent)
            if path.is_file() and not _skipped(rel):
                files.append((rel.as_posix(), path.read_bytes()))
    info = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
    for meta in _METADATA_FILES:
        text = dist.read_text(meta)
        if text is not None:
            files.append((f"{info}/{meta}", text.encode("utf-8")))
    files.append((f"{info}/WHEEL", _WHEEL.encode()))
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files:
            entry = zipfile.ZipInfo(name, _EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)


def _skipped(rel: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or rel.suffix in (".pyc", ".pyo")


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
