"""The framework's test command never reads the user's plugins/: the suite serves a copy of the bundled plugins as
committed (tests/bundled.py), so a module a reader adds to plugins/ is neither loaded nor able to fail a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import bundled, copy_bundled, tracked_plugins
from conftest import ROOT

from dpmsf_core.app import create_app
from dpmsf_core.config import Settings


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _repo(tmp_path: Path) -> Path:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "plugins" / "pkg").mkdir(parents=True)
    (repo / "plugins" / "hello.py").write_text("A = 1\n")
    (repo / "plugins" / "pkg" / "__init__.py").write_text("")
    _git("init", "-q", cwd=repo)
    _git("add", "plugins", cwd=repo)
    return repo


def test_the_copy_holds_tracked_files_with_their_edits_and_nothing_added(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "plugins" / "hello.py").write_text("A = 2\n")  # an edit to a bundled plugin is what gets tested
    (repo / "plugins" / "welcome.py").write_text("raise SystemExit('a user plugin')\n")  # the reader's own
    (repo / "plugins" / "mine").mkdir()
    (repo / "plugins" / "mine" / "__init__.py").write_text("")
    assert sorted(tracked_plugins(repo) or []) == ["plugins/hello.py", "plugins/pkg/__init__.py"]
    copy = copy_bundled(repo, tmp_path / "copy")
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == ["hello.py", "pkg/__init__.py"]
    assert (copy / "hello.py").read_text() == "A = 2\n"


def test_without_git_the_folder_is_copied_as_shipped(tmp_path: Path) -> None:
    (tmp_path / "archive" / "plugins").mkdir(parents=True)
    (tmp_path / "archive" / "plugins" / "hello.py").write_text("A = 1\n")
    assert tracked_plugins(tmp_path / "archive") is None
    copy = copy_bundled(tmp_path / "archive", tmp_path / "copy")
    assert [p.name for p in copy.iterdir()] == ["hello.py"]


def test_dot_means_the_runs_copy_in_this_process(tmp_path: Path) -> None:
    assert (
        bundled() != ROOT / "plugins"
        and (bundled() / "hello.py").read_bytes() == (ROOT / "plugins" / "hello.py").read_bytes()
    )
    app = create_app(Settings.from_env({"DPMSF_PLUGINS": ".", "DPMSF_STATE_DIR": str(tmp_path)}, dotenv=None))
    try:
        sources = {m.path for m in app.registry.load().modules.values()}
    finally:
        app.close()
    assert sources and all(Path(s).is_relative_to(bundled()) for s in sources), sources


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plugin_added_to_a_clone_breaks_no_test_and_is_never_imported(tmp_path: Path) -> None:
    """A fresh clone with a user module in plugins/ that would fail the suite (it takes hello-world, making the
    README's examples 409) and leaves a mark when imported: the tests that serve the bundled plugins pass."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    _git("clone", "-q", "--no-hardlinks", str(ROOT), str(clone), cwd=tmp_path)
    mark = tmp_path / "imported"
    (clone / "plugins" / "zz_mine.py").write_text(
        "from pathlib import Path\n"
        "from dpmsf_core import expose\n"
        f"Path({str(mark)!r}).write_text('imported')\n\n"
        '@expose.endpoint(API="hello-world")\n'
        "def mine():\n"
        "    return 'mine'\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPMSF_")}
    files = [
        "tests/test_readme_examples.py",
        "tests/test_bundled_plugins.py::test_dot_means_the_runs_copy_in_this_process",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "[100%]" in done.stdout and "F" not in done.stdout.split("[")[0] and not mark.exists(), done.stdout
    # The trap works: served from the clone's plugins/ as they are, the module is imported and takes hello-world.
    control = (
        "from dpmsf_core.testing import http_client\n"
        "with http_client(%r) as c:\n"
        "    print(c.get('/rest/services/hello-world/').status_code)\n"
    )
    served = subprocess.run(
        [sys.executable, "-c", control % str(clone / "plugins")], env=env, capture_output=True, text=True, timeout=60
    )
    assert served.stdout.strip() == "409" and mark.exists(), served.stdout + served.stderr


def test_the_bundled_plugins_keep_the_projects_style() -> None:
    """The committed plugins are ours, so ruff checks them (the run's copy: a user's additions to plugins/ are theirs
    to format as they like, and the test command leaves them alone)."""
    ruff = Path(sys.executable).parent / "ruff"
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config, str(bundled())], ["format", "--check", *config, str(bundled())]):
        done = subprocess.run([str(ruff), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
