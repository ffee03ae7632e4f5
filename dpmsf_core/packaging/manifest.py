"""The artefact's routing manifest (``dpmsf_core.loading.manifest``): its plugins really imported, by the artefact's own
core, in a child interpreter with only the artefact (and the standard library) on its path.

A child, not this process: a plugin runs code at import, which must neither change nor stop the build, and it
must see the artefact's dependencies, not this environment's. A plugin that does not import there is left out
(it then imports at start-up, as without a manifest); when no manifest can be written at all the artefact is
built without one, and one line says why: it is an optimisation, never a reason to fail a build.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ..loading.manifest import MANIFEST_NAME, read_manifest

_DESCRIBE = """
import json, sys
plugins, out, paths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path[:0] = paths
import logging
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from dpmsf_core.loading.manifest import describe
from dpmsf_core.loading.registry import Registry
registry = Registry([plugins], reload=False)
snapshot = registry.load()
data = describe(snapshot, plugins)
with open(out, "w", encoding="utf-8") as fh:
    json.dump(data, fh, indent=1, sort_keys=True)
listed = {m["file"] for m in data["modules"]}
left = sorted(r.real_name for r in snapshot.reports if r.source[len(plugins) + 1:] not in listed)
print("DPMSF-LEFT-OUT " + json.dumps(left))
"""


def write_manifest(
    plugins: Path, python: str, paths: Sequence[str | Path], log: Callable[[str], object] = print
) -> int | None:
    """Write ``plugins/.dpmsf-manifest.json``; return how many modules it lists, or None (nothing written).

    ``python`` runs the imports (``-I -S``: no site-packages, no user environment) with ``paths`` in front of
    ``sys.path``: the artefact's folder, whose ``dpmsf_core`` and dependencies it holds.
    """
    target = plugins / MANIFEST_NAME
    target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="dpmsf-manifest-") as scratch:
        out = Path(scratch) / MANIFEST_NAME
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "DPMSF_STATE_DIR": scratch}
        cmd = [python, "-I", "-S", "-B", "-c", _DESCRIBE, str(plugins), str(out), json.dumps([str(p) for p in paths])]
        try:
            proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"dpmsf package: no plugin manifest (every plugin imports at start-up): {exc}")
            return None
        if proc.returncode != 0 or not out.is_file():
            why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            log(f"dpmsf package: no plugin manifest (every plugin imports at start-up): {why[:300]}")
            return None
        entries = read_manifest(scratch)  # what the runtime will accept, or a warning and None
        if entries is None:
            log("dpmsf package: no plugin manifest (every plugin imports at start-up): it did not read back")
            return None
        try:
            target.write_bytes(out.read_bytes())
        except OSError as exc:
            log(f"dpmsf package: no plugin manifest (every plugin imports at start-up): {exc}")
            return None
        left = next((x[15:] for x in proc.stdout.splitlines() if x.startswith("DPMSF-LEFT-OUT ")), "[]")
        try:
            names = ", ".join(map(str, json.loads(left)))
        except ValueError:
            names = ""
        log(
            f"dpmsf package: plugin manifest: {len(entries)} modules"
            + (f"; imported at start-up: {names}" if names else "")
        )
    return len(entries)
