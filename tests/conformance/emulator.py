"""serverless-offline (npm ``serverless@3`` + ``serverless-offline@13``) in front of ``handler/aws_lambda.py``.

Installed with ``npm ci`` from the committed lock file into ``build/sls/`` (gitignored; reinstalled only when the
lock file changes), which is also the service folder: the ``serverless*.yml`` files of this folder are copied
there, and ``build/sls/handler`` links to the repository's ``handler/`` package. serverless-offline spawns
``python3`` (the virtualenv's: ``VIRTUAL_ENV``) with its ``invoke.py``, which imports ``handler.aws_lambda``
and keeps it warm, as a Lambda container does.

Two instances: one with the REST API under its stage (``/dev/...``) and the HTTP API (payload 2.0) at ``/``;
one with ``--noPrependStageInUrl`` (a REST API whose URLs carry no stage, like a custom domain).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ports import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SERVICE = REPO / "build" / "sls"
CONFIGS = ("serverless.yml", "serverless-nostage.yml")


class EmulatorUnavailable(RuntimeError):
    """node/npm are not on this machine: the emulator cannot run here (the test skips saying so)."""


@dataclass(frozen=True)
class Instance:
    """A running serverless-offline: its base URL and the file its output (EMF lines included) goes to."""

    url: str
    log: Path


def install(service: Path = SERVICE) -> Path:
    """``npm ci`` into ``service`` unless the same lock file was installed there already; the configs copied."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise EmulatorUnavailable("node and npm are needed for serverless-offline and are not on PATH")
    service.mkdir(parents=True, exist_ok=True)
    lock = (HERE / "package-lock.json").read_bytes()
    stamp = service / ".installed-lock.sha256"
    digest = hashlib.sha256(lock + (HERE / "package.json").read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest and (service / "node_modules").is_dir()):
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, service / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=service,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm ci failed in {service}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        stamp.write_text(digest)
    for name in CONFIGS:
        shutil.copyfile(HERE / name, service / name)
    link = service / "handler"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(REPO / "handler", target_is_directory=True)
    return service


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serverless-offline exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if "Server ready" in log.read_text(errors="replace"):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"serverless-offline did not start in time:\n{log.read_text()[-3000:]}")


@dataclass
class _Started:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        """SIGTERM to its whole process group (node and the python3 handlers it spawned), SIGKILL if it lingers."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def _start(service: Path, config: str, env: Mapping[str, str], extra: list[str]) -> _Started:
    http_port, lambda_port = free_port(), free_port()
    log = service / f"{Path(config).stem}.log"
    cli = service / "node_modules" / "serverless" / "bin" / "serverless.js"
    argv = [shutil.which("node") or "node", str(cli), "offline", "start", "--config", config]
    argv += ["--host", "127.0.0.1", "--httpPort", str(http_port), "--lambdaPort", str(lambda_port), *extra]
    with log.open("wb") as out:
        # its own session: the python3 handler processes it spawns (through a shell) stop with it
        proc = subprocess.Popen(argv, cwd=service, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return _Started(proc, http_port, log)


@contextmanager
def serverless_offline(env: Mapping[str, str], state: Path) -> Iterator[dict[str, Instance]]:
    """Both instances, started together; ``env`` holds the ``DPMSF_*`` settings the handler processes get."""
    service = install()
    home = service / "home"  # serverless writes its settings file under $HOME: not the user's
    home.mkdir(exist_ok=True)
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DPMSF_", "POWERTOOLS_"))},
        **env,
        "HOME": str(home),
        "VIRTUAL_ENV": sys.prefix,  # serverless-offline then runs this virtualenv's python3
        "SLS_TELEMETRY_DISABLED": "1",
        "SLS_NOTIFICATIONS_MODE": "off",
        "SLS_DEPRECATION_DISABLE": "*",
        "CONFORMANCE_STATE": str(state),
    }
    started: dict[str, _Started] = {}
    try:  # both start at once, then both are waited for
        started["staged"] = _start(service, CONFIGS[0], environ, [])
        started["flat"] = _start(service, CONFIGS[1], environ, ["--noPrependStageInUrl"])
        deadline = time.monotonic() + 90
        for one in started.values():
            _wait_ready(one.proc, one.log, one.port, deadline)
        yield {name: Instance(f"http://127.0.0.1:{one.port}", one.log) for name, one in started.items()}
    finally:
        for one in started.values():
            one.stop()
