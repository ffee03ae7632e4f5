"""`dpmsf package` builds a folder Lambda can run on its own, for its Python only; `dpmsf invoke` runs one event."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import bundled
from childproc import run_for_result
from samcli import unavailable

from dpmsf_core.cli.init import write_project
from dpmsf_core.loading.manifest import MANIFEST_NAME
from dpmsf_core.packaging import LAMBDA_PYTHON, PackagingError, Target, build, find_python
from dpmsf_core.packaging.dependencies import copy_from_environment
from dpmsf_core.packaging.target import check_imports, check_native_code, machine_arch, running_python

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "events"
DPMSF = [sys.executable, "-m", "dpmsf_core"]
HERE = Target(python=running_python(), platform=f"manylinux2014_{machine_arch()}")  # what --deps venv can copy
OTHER_PYTHON = "3.12" if running_python() != "3.12" else "3.13"

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])  # only the artifact and the standard library: no repo, no site-packages
from handler.aws_lambda import handler

class Context:
    function_name = "dpmsf-pkg"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dpmsf-pkg"
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    def get_remaining_time_in_millis(self):
        return 29000

event = json.load(open(sys.argv[2]))
out = handler(event, Context())
mods = [m for m in ("boto3", "fastapi", "pydantic") if m in sys.modules]
plugins = sorted(m for m in sys.modules if m.startswith("dpmsf_plugins."))
import dpmsf_core, pydantic_core
result = {"out": out, "core": dpmsf_core.__file__, "heavy": mods, "plugins": plugins, "path": sys.path}
print("RESULT " + json.dumps(result))
"""


def run_artifact(folder: Path, event: Path, tmp_path: Path, python: str = sys.executable, **env: str) -> dict:
    """Import and invoke the handler with `python -I -S` from an empty folder: nothing but the artifact."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DPMSF_STATE_DIR": str(tmp_path / "state"), **env}
    return run_for_result([python, "-I", "-S", "-c", CHILD, str(folder), str(event)], cwd=tmp_path, env=env)


def check_artifact(folder: Path, tmp_path: Path, python: str = sys.executable) -> None:
    assert (folder / "handler" / "aws_lambda.py").is_file()
    assert (folder / "plugins" / "hello.py").is_file()
    assert not (folder / "boto3").exists() and not (folder / "botocore").exists()
    assert not list(folder.glob("tests")) and not (folder / "bin").exists()
    tag = sys.implementation.cache_tag if python == sys.executable else "cpython-" + LAMBDA_PYTHON.replace(".", "")
    pycs = list((folder / "dpmsf_core" / "__pycache__").glob(f"app.{tag}.pyc"))
    assert pycs, "bytecode was not precompiled"
    assert pycs[0].read_bytes()[4:8] == b"\x01\x00\x00\x00"  # PEP 552 flags: hash-based, check_source off

    result = run_artifact(folder, EVENTS / "apigw_v1.json", tmp_path, python, AWS_LAMBDA_FUNCTION_NAME="dpmsf-pkg")
    assert Path(result["core"]).is_relative_to(folder)
    assert not any(str(ROOT) in p for p in result["path"])
    out = result["out"]
    assert out["statusCode"] == 200
    assert json.loads(out["body"]) == {
        "results": {"hello": "alice", "args": [], "kwargs": {"name": "alice", "tag": ["a", "b"]}}
    }
    assert result["heavy"] == []
    assert result["plugins"] == ["dpmsf_plugins.hello"]  # the manifest routes it: no other plugin is imported
    listed = {m["file"] for m in json.loads((folder / "plugins" / MANIFEST_NAME).read_text())["modules"]}
    ours = {p.name for p in bundled().glob("*.py")} | {
        f"{p.name}/__init__.py" for p in bundled().iterdir() if (p / "__init__.py").is_file()
    }
    assert listed == ours


def test_package_from_this_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "build" / "lambda"
    artifact = build(out, plugins=[bundled()], target=HERE, make_zip=True, deps="venv", log=print)
    assert artifact.bytecode and artifact.zip_path is not None and artifact.zip_path.is_file()
    assert artifact.python == sys.executable and artifact.imports_checked > len(artifact.distributions)
    assert 0 < artifact.zip_size < artifact.size
    names = {d.split("==")[0].lower().replace("_", "-") for d in artifact.distributions}
    assert {"mangum", "starlette", "aws-lambda-powertools", "cryptography", "pydantic-core"} <= names
    assert not names & {"boto3", "botocore", "s3transfer", "uvicorn", "pytest", "moto", "ruff"}
    check_artifact(out, tmp_path)


def test_package_cli_bundles_chosen_plugins(tmp_path: Path) -> None:
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    shutil.copy(ROOT / "plugins" / "hello.py", plugins / "hello.py")
    (plugins / "__pycache__").mkdir()
    out = tmp_path / "art"
    proc = subprocess.run(
        [*DPMSF, "package", "--plugins", str(plugins), "--out", str(out), "--deps", "venv", "--zip", *_here()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MiB zipped" in proc.stdout
    assert sorted(p.name for p in (out / "plugins").iterdir() if p.suffix == ".py") == ["hello.py"]
    result = run_artifact(out, EVENTS / "apigw_v1.json", tmp_path)
    assert result["out"]["statusCode"] == 200
    # a folder that is not an artifact is never wiped
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    proc = subprocess.run([*DPMSF, "package", "--out", str(other), "--deps", "none"], capture_output=True, text=True)
    assert proc.returncode != 0 and (other / "keep.txt").exists()


def _here() -> list[str]:
    return ["--python-version", HERE.python, "--platform", HERE.platform]


@pytest.mark.slow
def test_package_with_pip_for_the_lambda_runtime_from_another_python(tmp_path: Path) -> None:
    """The real thing: this environment's pip fetches the runtime's wheels; the runtime's Python runs the result."""
    python = find_python(LAMBDA_PYTHON)
    if python is None:
        unavailable(f"Python {LAMBDA_PYTHON}, the Lambda runtime's, is neither on PATH nor under pyenv")
    assert python is not None
    out = tmp_path / "lambda"
    try:
        artifact = build(out, plugins=[bundled()], deps="pip", strict=True, log=print)
    except PackagingError as exc:
        unavailable(f"pip could not reach the package index: {exc}")
    assert artifact.python == python and artifact.target == Target(LAMBDA_PYTHON, "manylinux2014_x86_64")
    tag = LAMBDA_PYTHON.replace(".", "")
    assert list(out.glob(f"pydantic_core/_pydantic_core.cpython-{tag}-x86_64-linux-gnu.so"))
    assert not list(out.rglob(f"*.{sys.implementation.cache_tag}*"))  # nothing for the Python that built it
    check_artifact(out, tmp_path, python)


def test_the_build_needs_only_the_standard_library(tmp_path: Path) -> None:
    """infra/Makefile falls back to a bare python3: `dpmsf package` must start without any third-party package."""
    code = (
        "import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['dpmsf', 'package', '--help'];"
        "runpy.run_module('dpmsf_core', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: dpmsf package")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(
            ["--deps", "venv", "--python-version", OTHER_PYTHON],
            [f"the target is Python {OTHER_PYTHON}", "Use --deps pip", f"--python-version {OTHER_PYTHON}"],
            id="venv-for-another-python",
        ),
        pytest.param(
            [
                "--deps",
                "venv",
                "--python-version",
                running_python(),
                "--platform",
                "manylinux2014_" + ("aarch64" if machine_arch() == "x86_64" else "x86_64"),
            ],
            ["--deps venv would copy packages built for", "Use --deps pip"],
            id="venv-for-another-cpu",
        ),
        pytest.param(["--platform", "win_amd64"], ["--platform 'win_amd64'", "manylinux2014_x86_64"], id="not-linux"),
        pytest.param(
            ["--deps", "none", "--python-version", "3.99", "--strict"],
            ["Python 3.99 (the Lambda runtime's) is neither on PATH nor under pyenv", "--target-python"],
            id="strict-without-the-runtime",
        ),
        pytest.param(
            ["--deps", "none", "--target-python", "/bin/false"],
            [f"--target-python /bin/false is not a working CPython {LAMBDA_PYTHON}"],
            id="target-python-is-not-python",
        ),
    ],
)
def test_package_refuses_what_would_not_run(args: list[str], says: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([*DPMSF, "package", "--out", str(out), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("dpmsf package: ") and "Traceback" not in proc.stderr
    for words in says:
        assert words in proc.stderr
    assert not out.exists()  # refused before anything was written


def test_native_code_for_another_python_is_found_without_running_it(tmp_path: Path) -> None:
    """This environment's pydantic-core, copied into a folder meant for another Python, is named by its wheel tag."""
    copy_from_environment(tmp_path, ["pydantic-core"])
    check_native_code(tmp_path, HERE)  # right where it was built
    with pytest.raises(PackagingError) as info:
        check_native_code(tmp_path, Target(python=OTHER_PYTHON, platform=HERE.platform))
    message = str(info.value)
    assert message.startswith(f"native code for another runtime than Python {OTHER_PYTHON} on linux {HERE.arch}: ")
    cp = "cp" + running_python().replace(".", "")
    assert f"is a wheel for {cp}-{cp}-" in message
    assert f"is built for CPython {running_python()}" in message


def test_the_import_check_names_what_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "fine.py").write_text("VALUE = 1\n")
    (tmp_path / "needs_boto.py").write_text("import botocore  # provided by the Lambda runtime\n")
    (tmp_path / "broken.py").write_text("from . import nowhere\n")
    (tmp_path / "native.py").write_text("raise ImportError('undefined symbol: PyFoo')\n")
    assert check_imports(tmp_path, sys.executable, ["fine", "needs_boto"], tmp_path / "scratch") == 2
    with pytest.raises(PackagingError) as info:
        check_imports(tmp_path, sys.executable, ["fine", "broken", "native"], tmp_path / "scratch")
    assert str(info.value) == (
        f"these do not import under Python {running_python()} ({sys.executable}): "
        "broken: ImportError: attempted relative import with no known parent package; "
        "native: ImportError: undefined symbol: PyFoo"
    )


def test_find_python_runs_each_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyenv shim is on PATH for every version it knows, and fails unless that version is selected."""
    assert find_python(running_python()) == sys.executable
    shim = tmp_path / "shims" / f"python{OTHER_PYTHON}"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.x: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    assert find_python(OTHER_PYTHON) is None
    real = tmp_path / "pyenv" / "versions" / f"{running_python()}.99" / "bin" / f"python{running_python()}"
    real.parent.mkdir(parents=True)
    real.symlink_to(sys.executable)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    with pytest.raises(PackagingError) as info:
        find_python(running_python(), str(shim))
    assert str(info.value) == f"--target-python {shim} is not a working CPython {running_python()}"
    assert find_python(running_python(), str(real)) == str(real)


@pytest.mark.parametrize(
    ("event", "want"),
    [
        pytest.param("apigw_v1.json", {"statusCode": 200}, id="apigw-v1"),
        pytest.param("function_url.json", {"statusCode": 200}, id="function-url"),
        pytest.param(
            "sqs.json", {"batchItemFailures": [{"itemIdentifier": "2e1424d4-f796-459a-8184-9c92662be6da"}]}, id="sqs"
        ),
    ],
)
def test_invoke_prints_the_response(event: str, want: dict, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*DPMSF, "invoke", "--event", str(EVENTS / event), "--plugins", str(bundled())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    response = json.loads(proc.stdout)
    assert {k: response[k] for k in want} == want


def test_invoke_rejects_bad_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    invoke = [*DPMSF, "invoke", "--event", str(bad), "--plugins", str(ROOT / "plugins")]
    proc = subprocess.run(invoke, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "not JSON" in proc.stderr


SANDBOX_CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from dpmsf_core.sandbox import SandboxPool
started = time.monotonic()
with SandboxPool(size=1) as pool:
    value = pool.call_sync(source="def f(x):\\n    return x * 2\\n", path="/t/m.py", function="f", args=[21], kwargs={})
print("RESULT " + json.dumps({"value": value, "seconds": time.monotonic() - started, "compiled": pool.compiled}))
"""


@pytest.mark.slow
def test_package_ships_the_sandbox_precompiled(tmp_path: Path) -> None:
    artifact = build(
        tmp_path / "lambda", plugins=[bundled()], target=HERE, deps="venv", sandbox=True, log=lambda _line: None
    )
    folder = artifact.folder
    shipped = list((folder / "dpmsf_core" / "sandbox").glob("python-3.12.0.*.cwasm"))
    assert len(shipped) == 1
    assert not list(folder.rglob("python-3.12.0.wasm"))  # only the verified compiled form is shipped
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SANDBOX_CHILD, str(folder)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DPMSF_SANDBOX_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    assert result["value"] == 42
    assert result["compiled"] == str(shipped[0])
    assert not cache.exists()  # nothing was compiled at this "cold start"
    assert result["seconds"] < 2


# -- dpmsf deploy ------------------------------------------------------------------------------------------

RECORDING_SAM = """#!/bin/sh
printf '%s\\n' "$PYTHON $*" >> "$SAM_CALLS"
[ "$1" != "build" ] || exit "${SAM_BUILD_EXIT:-0}"
"""


def _deploy(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DPMSF, "deploy", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_deploy_without_sam_says_how_to_install_it(tmp_path: Path) -> None:
    proc = _deploy([], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("dpmsf deploy: the AWS SAM CLI ('sam') is not on PATH; install it")
    assert "pip install aws-sam-cli" in proc.stderr and "Traceback" not in proc.stderr
    proc = _deploy(["--sam", str(tmp_path / "nowhere")], tmp_path)
    assert proc.returncode == 2 and f"{tmp_path / 'nowhere'} is not an executable" in proc.stderr


def test_deploy_builds_then_deploys_guided_the_first_time(tmp_path: Path) -> None:
    """The sam it runs is a stand-in that records its arguments: what is tested is what dpmsf asks sam to do."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sam").write_text(RECORDING_SAM)
    (bin_dir / "sam").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SAM_CALLS": str(calls)}
    write_project(tmp_path / "shop", "shop")
    template = tmp_path / "shop" / "infra" / "template.yaml"
    (tmp_path / "shop" / "plugins" / "deep").mkdir()

    proc = _deploy([], tmp_path, **env)  # not in a project
    assert proc.returncode == 2 and "is not in a DPMSF project" in proc.stderr and "--template" in proc.stderr
    proc = _deploy(["--", "--stack-name", "dpmsf-test"], tmp_path / "shop" / "plugins" / "deep", **env)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == [
        f"{sys.executable} build --template-file {template}",  # PYTHON: infra/Makefile builds with this DPMSF
        f"{sys.executable} deploy --guided --stack-name dpmsf-test",
    ]
    (tmp_path / "shop" / "samconfig.toml").write_text("version = 0.1\n")  # what the guided deploy saves
    calls.unlink()
    assert _deploy([], tmp_path / "shop", **env).returncode == 0
    assert calls.read_text().splitlines()[1] == f"{sys.executable} deploy"
    calls.unlink()
    proc = _deploy(["--dry-run", "--guided"], tmp_path / "shop", **env)
    assert proc.returncode == 0 and not calls.exists()
    assert f"dpmsf deploy: {bin_dir / 'sam'} deploy --guided" in proc.stderr
    proc = _deploy([], tmp_path / "shop", SAM_BUILD_EXIT="3", **env)
    assert proc.returncode == 3 and "dpmsf deploy: build failed (exit 3)" in proc.stderr
    assert calls.read_text().splitlines() == [f"{sys.executable} build --template-file {template}"]  # no deploy


def test_a_launcher_resolves_to_the_interpreter_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyenv shim works only while PYENV_VERSION selects its version, and the build runs the interpreter later
    with a stripped environment: what is kept is the interpreter the shim ran, which works without it."""
    shim = tmp_path / "shims" / f"python{running_python()}"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\n[ -n "$FAKE_PYENV_VERSION" ] || exit 127\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("FAKE_PYENV_VERSION", running_python())
    found = find_python(running_python(), str(shim))
    assert found == sys.executable
    stripped = subprocess.run([str(found), "-I", "-S", "-c", "print(1)"], env={"PATH": "/usr/bin:/bin"}, check=False)
    assert stripped.returncode == 0
    assert subprocess.run([str(shim), "-c", "1"], env={"PATH": "/usr/bin:/bin"}, check=False).returncode == 127


def test_a_failed_package_leaves_nothing_and_the_next_run_builds(tmp_path: Path) -> None:
    """A build that fails halfway (here the interpreter that checks the imports dies) removes its folder, so the
    next run builds instead of refusing the folder as 'not a dpmsf package artifact'."""
    dying = tmp_path / "dying-python"
    dying.write_text(
        f'#!/bin/sh\ncase "$*" in *sys.implementation*) echo "cpython {running_python()} $0"; exit 0;; esac\n'
        "echo died >&2\nexit 9\n"
    )
    dying.chmod(0o755)
    out = tmp_path / "out"
    args = [*DPMSF, "package", "--out", str(out), "--deps", "none", *_here()]
    failed = subprocess.run([*args, "--target-python", str(dying)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "the import check under" in failed.stderr, failed.stderr
    assert not out.exists()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "choose another --out" not in again.stderr and (out / "handler" / "aws_lambda.py").is_file()


def test_a_projects_requirements_are_bundled_but_not_dpmsf_itself(tmp_path: Path) -> None:
    """requirements.txt names DPMSF (vendored wheel, or by version) and the plugins' own libraries: only the
    libraries go to pip for the runtime; a line pip alone understands (an option, a bare path) is refused by line."""
    from dpmsf_core.packaging.dependencies import project_requirements

    listed = tmp_path / "requirements.txt"
    listed.write_text(
        "# comment\n./vendor/dpmsf-0.1.0-py3-none-any.whl[gae,gcp]\ndpmsf[gae]==0.1.0\n"
        "requests>=2.31  # for plugins/weather.py\nPyYAML\n\n"
    )
    assert project_requirements(listed) == ["requests>=2.31", "PyYAML"]
    listed.write_text("requests\n--index-url https://example.org/simple\n")
    with pytest.raises(PackagingError) as info:
        project_requirements(listed)
    assert str(info.value).startswith(f"{listed}:2: '--index-url https://example.org/simple' is not a requirement")
