"""``dpmsf gcp-run`` says what is wrong in one line before anything starts: no app.yaml where it stands, an
emulator named by FIRESTORE_EMULATOR_HOST that does not answer; it reads a generated project's app.yaml as App
Engine does (the repository's is read by tests/test_gae.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from ports import free_port

from dpmsf_core.cli.init import write_project


def _gcp_run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DPMSF_", "GOOGLE_", "FIRESTORE_", "GAE_"))}
    return subprocess.run(
        [sys.executable, "-m", "dpmsf_core", "gcp-run", *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_app_yaml_it_names_the_folder(tmp_path: Path) -> None:
    done = _gcp_run(tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"dpmsf: no app.yaml in {tmp_path} (run it in a project made by dpmsf init, or in the repository)"
    )


def test_an_emulator_that_does_not_answer_is_named(tmp_path: Path) -> None:
    write_project(tmp_path / "shop", "shop")
    host = f"127.0.0.1:{free_port()}"
    done = _gcp_run(tmp_path / "shop" / "plugins", FIRESTORE_EMULATOR_HOST=host)  # from a sub-folder: its project
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dpmsf: FIRESTORE_EMULATOR_HOST={host} does not answer; start it, or unset it for one here"
    ]


def test_a_generated_projects_app_yaml_is_what_runs(tmp_path: Path) -> None:
    write_project(tmp_path / "shop", "shop")
    done = _gcp_run(tmp_path / "shop", "--show", "--port", "9191", DPMSF_STORE="sqlite:///mine.db")
    assert done.returncode == 0, done.stderr
    *variables, command = done.stdout.strip().splitlines()
    env = dict(line.split("=", 1) for line in variables)
    assert env["DPMSF_PLUGINS"] == "plugins" and env["DPMSF_REPLAY_STORE"] == "firestore://dpmsf-replay"
    assert env["DPMSF_STORE"] == "sqlite:///mine.db"  # the caller's variable wins over app.yaml's
    assert env["PORT"] == "9191" and env["GAE_ENV"] == "localdev" and env["NO_GCE_CHECK"] == "true"
    assert env["GOOGLE_CLOUD_PROJECT"] == "demo-dpmsf-local"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # this interpreter's gunicorn
    assert command.startswith("gunicorn -c python:dpmsf_core.gunicorn_conf ") and "-b 127.0.0.1:$PORT" in command
