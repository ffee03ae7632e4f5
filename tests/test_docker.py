"""The container images, checked statically (no container engine runs here): Dockerfile (Cloud Run, any platform)
and Dockerfile.lambda (a Lambda container image).

Each image builds only from files in the repository that git tracks and that neither .dockerignore nor
.gcloudignore (what ``gcloud run deploy --source .`` uploads) leaves out; it runs as a non-root user; the
Dockerfile runs exactly app.yaml's entrypoint with app.yaml's env_variables and honours $PORT; and a handful of
hadolint's rules hold, written here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ["Dockerfile", "Dockerfile.lambda", "deploy/Dockerfile"]


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with their continuation lines joined (comments and blank lines dropped)."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        pending.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            op, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(start, op.upper(), args.strip()))
            pending = []
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by FROM."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.op == "FROM":
            groups.append([])
        assert groups, f"line {ins.line}: {ins.op} before any FROM"
        groups[-1].append(ins)
    return groups


def copy_sources(ins: Instruction) -> tuple[str | None, list[str]]:
    """(``--from`` stage or None, the source paths) of a COPY."""
    words = shlex.split(ins.args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return origin, paths[:-1]


def ignore_patterns(name: str) -> list[str]:
    path = ROOT / name
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ignored_by(patterns: list[str], rel: str) -> str | None:
    """The pattern of a .dockerignore/.gcloudignore that leaves ``rel`` (or a folder above it) out, if any."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        bare = pattern.strip("/").removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, bare) or fnmatch.fnmatch(candidate.split("/")[-1], bare):
                return pattern
    return None


def tracked(rel: str) -> list[str]:
    return subprocess.run(
        ["git", "ls-files", "--", rel], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.parametrize("name", IMAGES)
def test_every_copy_source_is_in_the_repository_and_sent(name: str) -> None:
    instructions = parse(ROOT / name)
    names = [re.split(r"\s+as\s+", i.args, flags=re.I)[-1] for i in instructions if i.op == "FROM"]
    copies = [i for i in instructions if i.op in ("COPY", "ADD")]
    assert copies, f"{name} copies nothing"
    for ins in copies:
        origin, sources = copy_sources(ins)
        if origin is not None:
            assert origin in names[:-1], f"{name}:{ins.line}: COPY --from={origin} names no earlier stage"
            continue
        for source in sources:
            assert not source.startswith(("/", "..")) and "$" not in source, f"{name}:{ins.line}: {source}"
            assert (ROOT / source).exists(), f"{name}:{ins.line}: COPY source {source} is not in the repository"
            assert tracked(source), f"{name}:{ins.line}: {source} is not tracked by git (a fresh clone lacks it)"
            ignored = subprocess.run(["git", "check-ignore", "-q", source], cwd=ROOT).returncode == 0
            assert not ignored, f"{name}:{ins.line}: {source} is gitignored"
            for context in (".dockerignore", ".gcloudignore"):
                pattern = ignored_by(ignore_patterns(context), source)
                assert pattern is None, f"{name}:{ins.line}: {source} is left out by {context} ({pattern!r})"


def test_the_build_context_leaves_out_local_state_and_tests() -> None:
    patterns = ignore_patterns(".dockerignore")
    for rel in (".dpmsf/tenants.db", ".venv/bin/python", "tests/test_docker.py", "bench/x.py", ".git/HEAD", ".env"):
        assert ignored_by(patterns, rel), f".dockerignore sends {rel}"


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_non_root_user(name: str) -> None:
    final = stages(parse(ROOT / name))[-1]
    users = [i for i in final if i.op == "USER"]
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{name}: USER {users[-1].args} is root"
    cmd = next(i for i in reversed(final) if i.op in ("CMD", "ENTRYPOINT"))
    assert users[-1].line < cmd.line


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_like_rules(name: str) -> None:
    instructions = parse(ROOT / name)
    problems: list[str] = []
    for ins in instructions:
        problems.extend(_hadolint_problems(ins, f"{name}:{ins.line}"))
    for group in stages(instructions):
        if sum(1 for i in group if i.op == "CMD") > 1:
            problems.append(f"{name} DL4003: more than one CMD in a stage")
    assert problems == []


def _hadolint_problems(ins: Instruction, where: str) -> list[str]:
    """What hadolint would say of one instruction (the rules this repository's Dockerfiles can break)."""
    problems: list[str] = []
    if ins.op == "FROM":
        image = ins.args.split()[0]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{where} DL3006/DL3007: pin the base image's tag ({image})")
    if ins.op == "WORKDIR" and not ins.args.startswith(("/", "$")):
        problems.append(f"{where} DL3000: WORKDIR must be absolute")
    if ins.op == "ADD":
        problems.append(f"{where} DL3020: COPY, not ADD, for files and folders")
    if ins.op == "MAINTAINER":
        problems.append(f"{where} DL4000: MAINTAINER is deprecated")
    if ins.op == "RUN":
        problems.extend(_run_problems(ins.args, where))
    if ins.op in ("CMD", "ENTRYPOINT"):
        try:
            json.loads(ins.args)
        except ValueError:
            problems.append(f"{where} DL3025: {ins.op} in JSON form (signals reach the process)")
    return problems


def _run_problems(command: str, where: str) -> list[str]:
    """hadolint's rules for a RUN line: no cd, no sudo, no pip or apt caches and recommends in the image."""
    problems: list[str] = []
    if re.search(r"(^|&&|;)\s*cd\s", command):
        problems.append(f"{where} DL3003: use WORKDIR, not cd")
    if re.search(r"\bsudo\b", command):
        problems.append(f"{where} DL3004: no sudo")
    if re.search(r"\bpip3? install\b", command) and "--no-cache-dir" not in command:
        problems.append(f"{where} DL3042: pip install --no-cache-dir")
    if re.search(r"\bapt-get install\b", command) and "--no-install-recommends" not in command:
        problems.append(f"{where} DL3015: apt-get install --no-install-recommends")
    return problems


def _cmd(name: str) -> list[str]:
    final = stages(parse(ROOT / name))[-1]
    cmd = [i for i in final if i.op == "CMD"]
    assert len(cmd) == 1
    value = json.loads(cmd[0].args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.op == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {ins.args!r}: use KEY=value (the legacy 'ENV KEY value' form is ambiguous)"
                env[key] = value
    return env


def test_dockerfile_runs_app_yaml_exactly_and_honours_port() -> None:
    app = yaml.safe_load((ROOT / "app.yaml").read_text())
    shell, flag, line = _cmd("Dockerfile")
    assert (shell, flag) == ("/bin/sh", "-c")
    assert line == "exec " + app["entrypoint"]  # the same command line as App Engine's
    assert "-b :$PORT" in line
    env = _env(stages(parse(ROOT / "Dockerfile"))[-1])
    assert {k: env.get(k) for k in app["env_variables"]} == app["env_variables"]
    assert env["PORT"] == "8080"  # the default; Cloud Run's own PORT wins at run time
    assert (ROOT / "handler" / "gae.py").exists() and (ROOT / "dpmsf_core" / "gunicorn_conf.py").exists()


def test_lambda_image_is_built_from_the_packaging_output() -> None:
    build, final = stages(parse(ROOT / "Dockerfile.lambda"))
    assert build[0].args == "public.ecr.aws/lambda/python:3.12 AS build"
    assert final[0].args == "public.ecr.aws/lambda/python:3.12"
    run = " ".join(i.args for i in build if i.op == "RUN")
    out = re.search(r"dpmsf package .*--out (\S+)", run)
    assert out, "the build stage runs dpmsf package"
    [copy] = [i for i in final if i.op == "COPY"]
    origin, sources = copy_sources(copy)
    assert (origin, sources) == ("build", [out.group(1).rstrip("/") + "/"])
    assert copy.args.split()[-1] == "${LAMBDA_TASK_ROOT}/"
    assert _cmd("Dockerfile.lambda") == ["handler.aws_lambda.handler"]
    assert "handler = build_handler()" in (ROOT / "handler" / "aws_lambda.py").read_text()


def test_an_engine_builds_the_images_when_one_can() -> None:
    """A real build needs an engine and the base images (docker.io, public.ecr.aws), which this machine cannot reach
    (only PyPI, npm and Debian); where podman or buildah is installed and can pull, the Dockerfile is built."""
    engine = shutil.which("podman") or shutil.which("buildah")
    if engine is None:
        pytest.skip("no podman or buildah here; the base images' registries are unreachable anyway")
    pulled = subprocess.run([engine, "pull", "python:3.12-slim"], capture_output=True, text=True, timeout=120)
    if pulled.returncode != 0:
        pytest.skip(f"{engine} cannot pull python:3.12-slim: {pulled.stderr.strip()[-200:]}")
    args = ["build", "-t", "dpmsf-test", "."] if engine.endswith("podman") else ["bud", "-t", "dpmsf-test", "."]
    built = subprocess.run([engine, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-2000:]


@pytest.mark.slow
def test_the_dockerfile_app_runs_from_exactly_what_it_copies(tmp_path: Path) -> None:
    """No engine here, so the image's /app is assembled by hand from its COPY lines alone (the Python packages
    that `pip install -r requirements.txt` puts in the image come from this virtualenv), then its CMD runs with its
    ENV and a PORT of ours: the app must start and answer from those files only."""
    from ports import free_port
    from serverproc import running

    final = stages(parse(ROOT / "Dockerfile"))[-1]
    workdir = Path(next(i.args for i in final if i.op == "WORKDIR"))
    app = tmp_path / workdir.relative_to("/")
    app.mkdir(parents=True)
    for ins in final:
        if ins.op != "COPY":
            continue
        _, sources = copy_sources(ins)
        dest = app / shlex.split(ins.args)[-1]
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, dest)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **_env(final)}
    env["PYTHONPATH"] = str(app)  # the image's /app
    port = free_port()
    state = tmp_path / "state"
    env.update(
        {
            "PORT": str(port),
            "DPMSF_STATE_DIR": str(state),
            # Firestore (the image's default) is tested elsewhere against its emulator; SQLite files here.
            "DPMSF_TENANTS": f"sqlite:///{state}/tenants.db",
            "DPMSF_STORE": f"sqlite:///{state}/store.db",
            "DPMSF_REPLAY_STORE": f"sqlite:///{state}/replay.db",
            "K_SERVICE": "dpmsf",  # as on Cloud Run: Cloud Logging JSON lines
            "GOOGLE_CLOUD_PROJECT": "demo-dpmsf",  # else the formatter would ask Cloud Run's metadata server
        }
    )
    shell, flag, line = _cmd("Dockerfile")
    command = [shell, flag, line.replace("-b :$PORT", "-b 127.0.0.1:$PORT")]  # loopback here, every interface there
    base = f"http://127.0.0.1:{port}"
    (app / "my_plugins" / "mine.py").write_text("def mine(name: str) -> dict:\n    return {'hello': name}\n")
    with running(command, app, env, tmp_path / "server.log", base + "/"):
        answer = httpx.get(base + "/rest/services/mine/", params={"name": "run"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["results"]["hello"] == "run"
        # the bundled demos are in the image but not served: no anonymous todo writes, no hello-world
        for demo in ("hello-world/", "todo/tasks/", "hello-java/"):
            assert httpx.get(base + "/rest/services/" + demo, timeout=10).status_code == 404, demo
        posted = httpx.post(base + "/rest/services/todo/tasks/", json={"title": "x" * 1000}, timeout=10)
        assert posted.status_code == 404 and not list(state.glob("store.db*"))  # nothing stored
    entries = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    assert entries and all(e["severity"] in ("INFO", "WARNING", "ERROR") for e in entries)
    ours = [e for e in entries if e["logger"].startswith("dpmsf")]
    where = {e["logging.googleapis.com/sourceLocation"]["file"] for e in ours}
    assert ours and all(path.startswith(str(app)) for path in where), where  # the copied code, not the repository
