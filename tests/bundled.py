"""The framework's bundled plugins as committed, for the test suite: a user's module added to ``plugins/`` (the
README's ``welcome.py``) is theirs, and the suite must neither load it nor fail because of it.

The copy holds the files git tracks under ``plugins/`` with their working-tree content (an edit to a bundled
plugin is tested); a checkout without git (a source archive) copies the folder as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENV = "DPMSF_TEST_BUNDLED_PLUGINS"  # set by conftest.py for the run (subprocesses inherit it)


def tracked_plugins(root: Path) -> list[str] | None:
    """Paths under ``plugins/`` that git tracks in ``root``, or None when ``root`` is not a git checkout."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    done = subprocess.run(
        [git, "-C", str(root), "ls-files", "-z", "--", "plugins"], capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        return None
    return [name for name in done.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


def copy_bundled(root: Path, dest: Path) -> Path:
    """``dest/plugins``: the bundled plugins of the checkout at ``root`` without anything a user added."""
    target = dest / "plugins"
    names = tracked_plugins(root)
    if names is None:
        shutil.copytree(root / "plugins", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = root / name
        if source.is_file():  # a tracked file deleted in the working tree is gone for the tests too
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out)
    return target


def bundled() -> Path:
    """The run's copy (see conftest.py): what every test that serves "the bundled plugins" serves."""
    return Path(os.environ[ENV])
