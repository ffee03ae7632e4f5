"""``dpmsf gcp-run``: the project's App Engine entrypoint run here as App Engine would start it, in one command.

It reads ``app.yaml`` (its ``entrypoint`` and ``env_variables``; a variable already set wins), checks that this
interpreter has what the entrypoint and the stores import (the ``gae`` and ``gcp`` extras), uses the Firestore
emulator named by ``FIRESTORE_EMULATOR_HOST`` or starts one (and stops it with the server), and sets what App
Engine's runtime would: ``PORT``, ``GAE_*`` with ``GAE_ENV=localdev``, ``GOOGLE_CLOUD_PROJECT=demo-dpmsf-local``
(a ``demo-`` project never reaches Google) and ``NO_GCE_CHECK=true``, so google-auth never probes the cloud metadata
server from this machine. The repository's ``./gcprunner.sh`` is this command; a ``dpmsf init`` project has it
through its ``.venv/bin/dpmsf``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import project

STORES = ("DPMSF_STORE", "DPMSF_REPLAY_STORE", "DPMSF_TENANTS")
LOCAL_PROJECT = "demo-dpmsf-local"
_ENV_LINE = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_]*):\s*(\"([^\"]*)\"|'([^']*)'|([^#\s][^#]*?))?\s*(#.*)?$")


def read_app_yaml(path: Path) -> tuple[str, dict[str, str]]:
    """(``entrypoint``, ``env_variables``) of an app.yaml: the two keys this command needs, read line by line (the
    core install has no YAML library; App Engine's files keep both keys flat)."""
    entrypoint, variables, block = "", {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        found = re.match(r"^entrypoint:\s*(.*?)\s*(\s#.*)?$", line)
        if found and not entrypoint:
            entrypoint = found.group(1)
        if re.match(r"^env_variables:\s*(#.*)?$", line):
            block = True
            continue
        if block and line.strip() and not line.startswith((" ", "\t")):
            block = False  # the next top-level key
        item = _ENV_LINE.match(line) if block else None
        if item:
            variables[item.group(1)] = next((g for g in item.group(3, 4, 5) if g is not None), "")
    if not entrypoint:
        raise ConfigError(f"no 'entrypoint:' line in {path}")
    return entrypoint, variables


def environment(base: Mapping[str, str], app_yaml: dict[str, str], port: int) -> dict[str, str]:
    """The server's environment: ``base`` over app.yaml's variables, then what App Engine's runtime sets."""
    env = {**app_yaml, **base}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env |= {"PORT": str(port), "GAE_ENV": "localdev", "NO_GCE_CHECK": "true"}  # google-auth: never ask metadata
    for name, value in (
        ("GAE_SERVICE", "default"),
        ("GAE_VERSION", "local"),
        ("GAE_APPLICATION", "local~dpmsf"),
        ("GOOGLE_CLOUD_PROJECT", LOCAL_PROJECT),
    ):
        env.setdefault(name, value)
    return env


def firestore_settings(env: Mapping[str, str]) -> list[str]:
    """``NAME=url`` of each store setting that is Firestore."""
    return [f"{name}={env[name]}" for name in STORES if (env.get(name) or "").startswith("firestore://")]


def missing_modules(entrypoint: str, firestore: bool) -> list[str]:
    """What this interpreter cannot import of what the entrypoint and the stores need."""
    wanted = ["gunicorn"] if entrypoint.split()[0].endswith("gunicorn") else []
    wanted += ["uvicorn_worker"] if "UvicornWorker" in entrypoint else []
    wanted += ["google.cloud.firestore"] if firestore else []

    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    return [name for name in wanted if not found(name)]


def install_hint(where: project.Project | None) -> str:
    pip = Path(sys.executable).parent / "pip"
    pip_cmd = str(pip) if pip.exists() else f"{sys.executable} -m pip"
    if where is not None and where.own:
        return f"install the project's requirements (DPMSF with [gae,gcp]): {pip_cmd} install -r requirements.txt"
    return f"install the extras: {pip_cmd} install -e '.[gae,gcp]'"


@contextlib.contextmanager
def _emulator(env: dict[str, str], gcloud: str) -> Iterator[None]:
    """FIRESTORE_EMULATOR_HOST when it answers, else an emulator started here for as long as the server runs."""
    from ..gcp import emulator

    given = env.get("FIRESTORE_EMULATOR_HOST")
    if given:
        if not emulator.answers(given, timeout=5):
            raise ConfigError(f"FIRESTORE_EMULATOR_HOST={given} does not answer; start it, or unset it for one here")
        yield
        return
    try:
        with emulator.started(gcloud) as (host, log):
            env["FIRESTORE_EMULATOR_HOST"] = host
            emulator.warm_up(host, env["GOOGLE_CLOUD_PROJECT"])
            _say(f"Firestore emulator on {host}, project {env['GOOGLE_CLOUD_PROJECT']} (log: {log})")
            yield
    except emulator.EmulatorError as exc:
        raise ConfigError(f"app.yaml keeps data in Firestore ({firestore_settings(env)[0]}): {exc}") from None


def _say(line: str) -> None:
    print(f"dpmsf gcp-run: {line}", file=sys.stderr, flush=True)


def _serve(command: str, cwd: Path, env: dict[str, str]) -> int:
    """Run the entrypoint through a shell (as App Engine does: ``$PORT`` expands); SIGINT and SIGTERM go to it,
    and this waits until it has stopped (so that the emulator outlives the server's last request)."""
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            with contextlib.suppress(InterruptedError):
                return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_gcp_run(args: argparse.Namespace) -> int:
    from ..config import Settings

    # SIGTERM before the server runs (while the emulator starts): exit through the finally blocks that stop it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    where = project.find(Path.cwd())
    root = where.root if where is not None else Path.cwd()
    app_yaml = root / "app.yaml"
    if not app_yaml.is_file():
        raise ConfigError(f"no app.yaml in {root} (run it in a project made by dpmsf init, or in the repository)")
    entrypoint, variables = read_app_yaml(app_yaml)
    port = args.port_arg or args.port
    env = environment(os.environ, variables, port)
    command = entrypoint.replace("-b :$PORT", f"-b {args.host}:$PORT")  # here: loopback only, unless asked
    firestore = firestore_settings(env)
    if args.show:
        print("\n".join(f"{k}={v}" for k, v in sorted(env.items())))
        print(command)
        return 0
    missing = missing_modules(entrypoint, bool(firestore))
    if missing:
        raise ConfigError(
            f"{sys.executable} cannot import {', '.join(missing)}, which app.yaml's entrypoint and stores need;"
            f" {install_hint(where)}"
        )
    with _emulator(env, args.gcloud) if firestore else contextlib.nullcontext():
        Settings.from_env(env, dotenv=str(root / ".env"))  # a bad variable stops here, in one line
        _say(f"{command}  (PORT={port})")
        return _serve(command, root, env)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gcp-run",
        help="run app.yaml's entrypoint here as App Engine would, with the Firestore emulator",
        description=" ".join((__doc__ or "").split("\n\n")[1].replace("``", "").split()),
    )
    p.add_argument("port_arg", nargs="?", type=int, metavar="PORT", help="the port (the same as --port)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; App Engine: every one)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="port (default $PORT, 8080)")
    p.add_argument(
        "--gcloud",
        default=os.environ.get("DPMSF_GCLOUD", "gcloud"),
        help="the Google Cloud CLI (default $DPMSF_GCLOUD)",
    )
    p.add_argument("--show", action="store_true", help="print the environment and the command line; start nothing")
    p.set_defaults(func=cmd_gcp_run)
