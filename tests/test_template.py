"""Deployment files: the SAM template lints clean and wires what DPMSF needs; app.yaml and gcprunner.sh agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "infra" / "template.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(str(TEMPLATE))


@pytest.fixture(scope="module")
def function(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]["DpmsfFunction"]["Properties"]


def test_cfn_lint_passes() -> None:
    cfn_lint = shutil.which("cfn-lint", path=str(BIN)) or "cfn-lint"
    result = subprocess.run(
        [cfn_lint, "--include-checks", "I", "--", str(TEMPLATE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_globals(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    fn = template["Globals"]["Function"]
    assert fn["Runtime"] == "python3.12"
    assert fn["Timeout"] == 29
    assert fn["Tracing"] == "Active"
    env = fn["Environment"]["Variables"]
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"):
        assert name in env
    assert "POWERTOOLS_TRACER_CAPTURE_RESPONSE" in env
    assert set(template["Parameters"]) >= {
        "AdminId",
        "PluginSource",
        "RequireTokens",
        "EnableFunctionUrl",
        "EnableHttpApi",
    }
    # the stack's bucket, the user's plugins: the bundled demos (todo: anonymous writes) are opt-in ("." or ".:s3")
    assert template["Parameters"]["PluginSource"]["Default"] == "s3"
    assert "." in template["Parameters"]["PluginSource"]["AllowedValues"]
    assert template["Parameters"]["MasterKey"]["NoEcho"] is True


def test_function_code_and_handler(template: dict[str, Any], function: dict[str, Any]) -> None:
    """sam build copies only infra/ (the Makefile) and runs `dpmsf package` in the repository root."""
    assert function["Handler"] == "handler.aws_lambda.handler"
    assert (TEMPLATE.parent / function["CodeUri"]).resolve() == TEMPLATE.parent
    assert sorted(p.name for p in TEMPLATE.parent.iterdir() if not p.name.startswith(".")) == [
        "Makefile",
        "template.yaml",
    ]
    metadata = template["Resources"]["DpmsfFunction"]["Metadata"]
    assert metadata["BuildMethod"] == "makefile"
    assert (TEMPLATE.parent / metadata["WorkingDirectory"]).resolve() == ROOT
    assert (ROOT / "dpmsf_core" / "__main__.py").is_file()  # what the Makefile runs with -m


def test_makefile_builds_for_the_template_runtime(template: dict[str, Any]) -> None:
    from dpmsf_core.packaging import LAMBDA_PLATFORM, LAMBDA_PYTHON

    makefile = (TEMPLATE.parent / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z_]+) \?= ?(.*)$", makefile, flags=re.M))
    runtime = template["Globals"]["Function"]["Runtime"]
    assert runtime == f"python{variables['RUNTIME_PYTHON']}" == f"python{LAMBDA_PYTHON}"
    assert template["Globals"]["Function"]["Architectures"] == ["x86_64"]
    assert variables["PLATFORM"] == LAMBDA_PLATFORM == "manylinux2014_x86_64"
    recipe = makefile.split("build-DpmsfFunction:", 1)[1]
    assert "-m dpmsf_core package --strict --deps pip" in recipe and '--out "$(ARTIFACTS_DIR)"' in recipe


def test_proxy_routes_queue_and_schedule(template: dict[str, Any], function: dict[str, Any]) -> None:
    events = function["Events"]
    api = {(e["Properties"]["Path"], e["Properties"]["Method"]) for e in events.values() if e["Type"] == "Api"}
    assert api == {("/{proxy+}", "ANY"), ("/", "ANY")}
    mappings = [
        r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"
    ]
    assert len(mappings) == 1
    assert mappings[0]["EventSourceArn"] == {"Fn::GetAtt": ["ExampleQueue", "Arn"]}
    assert mappings[0]["FunctionName"] == {"Ref": "DpmsfFunction"}
    assert mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    redrive = template["Resources"]["ExampleQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["ExampleDeadLetterQueue", "Arn"]}
    schedules = [e["Properties"] for e in events.values() if e["Type"] == "Schedule"]
    assert [s["Schedule"] for s in schedules] == ["rate(5 minutes)"]


def test_environment_points_at_the_table(function: dict[str, Any]) -> None:
    env = function["Environment"]["Variables"]
    assert env["DPMSF_TABLE"] == {"Ref": "DpmsfTable"}
    for name in ("DPMSF_REPLAY_STORE", "DPMSF_TENANTS", "DPMSF_STORE"):
        assert env[name] == {"Fn::Sub": "dynamodb://${DpmsfTable}"}
    assert env["ADMIN_ID"] == {"Ref": "AdminId"}
    assert env["DPMSF_MASTER_KEY"] == {"Ref": "MasterKey"}  # the DynamoDB tenant registry needs it to start
    assert "DPMSF_REQUIRE_TOKENS" in env
    plugins = str(env["DPMSF_PLUGINS"])
    assert "s3://${PluginBucket}/plugins/" in plugins and "'.'" in plugins


def test_table_and_bucket(template: dict[str, Any]) -> None:
    table = template["Resources"]["DpmsfTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("pk", "S"),
        ("sk", "S"),
    }
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [("pk", "HASH"), ("sk", "RANGE")]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    bucket = template["Resources"]["PluginBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_optional_entry_points_are_conditional(template: dict[str, Any]) -> None:
    resources, outputs = template["Resources"], template["Outputs"]
    assert resources["FunctionUrl"]["Condition"] == "FunctionUrlEnabled"
    assert resources["HttpApi"]["Condition"] == "HttpApiEnabled"
    for name, res in resources.items():
        if res["Type"] == "AWS::Lambda::Permission":
            assert res.get("Condition") in ("FunctionUrlEnabled", "HttpApiEnabled"), name
    assert outputs["HttpApiUrl"]["Condition"] == "HttpApiEnabled"
    assert outputs["FunctionUrlEndpoint"]["Condition"] == "FunctionUrlEnabled"
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${ServerlessRestApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/Prod/rest/services/"
    }
    assert {"PluginBucketName", "TableName", "ExampleQueueUrl"} <= set(outputs)


def _statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for name, res in template["Resources"].items():
        props = res.get("Properties", {})
        documents = [p for p in props.get("Policies", []) if isinstance(p, dict) and "Statement" in p]
        if "PolicyDocument" in props:
            documents.append(props["PolicyDocument"])
        for doc in documents:
            found.extend((name, st) for st in doc["Statement"])
    return found


def test_least_privilege(template: dict[str, Any], function: dict[str, Any]) -> None:
    statements = _statements(template)
    assert statements
    for owner, st in statements:
        if st["Effect"] != "Allow":
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert all(a != "*" and not a.endswith(":*") for a in actions), (owner, actions)
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        assert "*" not in resources, (owner, st)
    templates = {next(iter(p)) for p in function["Policies"] if isinstance(p, dict) and "Statement" not in p}
    assert templates == {"DynamoDBCrudPolicy", "SQSPollerPolicy"}
    assert function["Policies"][0]["DynamoDBCrudPolicy"] == {"TableName": {"Ref": "DpmsfTable"}}


# -- Google App Engine ---------------------------------------------------------------------------


def test_app_yaml() -> None:
    app = yaml.safe_load((ROOT / "app.yaml").read_text())
    assert app["runtime"] == "python312"
    assert app["entrypoint"] == (
        "gunicorn -c dpmsf_core/gunicorn_conf.py -k dpmsf_core.gunicorn_worker.UvicornWorker -w 2 -b :$PORT "
        "handler.gae:app"
    )
    plugins = app["env_variables"]["DPMSF_PLUGINS"].split(":")
    assert plugins == ["my_plugins"] and "." not in plugins  # the bundled demos are opt-in
    assert (ROOT / "my_plugins").is_dir() and not list((ROOT / "my_plugins").glob("*.py"))
    assert all(isinstance(v, str) for v in app["env_variables"].values())  # App Engine wants strings


def test_requirements_cover_the_runtime() -> None:
    names = {
        re.split(r"[\[<>=~ ]", line.strip(), maxsplit=1)[0].lower()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }
    expected = {"starlette", "pydantic", "fastapi", "uvicorn", "mangum", "python-dotenv", "cryptography"}
    assert names >= expected | {"aws-lambda-powertools", "gunicorn", "uvicorn-worker"}
    worker = subprocess.run([sys.executable, "-W", "error", "-c", "import uvicorn_worker"], capture_output=True)
    assert worker.returncode == 0, "the worker class in app.yaml must import without warnings"


@pytest.mark.slow
def test_gcprunner_runs_the_app_yaml_entrypoint(tmp_path: Path) -> None:
    """gcprunner.sh in a copy whose app.yaml serves a tiny ASGI app echoing the App Engine variables."""
    shutil.copy(ROOT / "gcprunner.sh", tmp_path / "gcprunner.sh")
    (tmp_path / ".venv").symlink_to(BIN.parent)
    (tmp_path / "dpmsf_core").symlink_to(ROOT / "dpmsf_core")  # the entrypoint's gunicorn settings file
    (tmp_path / "echoenv.py").write_text(
        textwrap.dedent(
            """
            import json, os

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                names = ("PORT", "GAE_ENV", "GAE_SERVICE", "GAE_VERSION", "GOOGLE_CLOUD_PROJECT")
                body = json.dumps({n: os.environ.get(n) for n in names}).encode()
                headers = [(b"content-type", b"application/json")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            """
        )
    )
    app_yaml = (ROOT / "app.yaml").read_text().replace("-w 2", "-w 1").replace("handler.gae:app", "echoenv:app")
    (tmp_path / "app.yaml").write_text(app_yaml)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAE_")}
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "gcprunner.sh"), str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"gcprunner.sh did not serve on {port}:\n{out}")
                time.sleep(0.2)
        assert answer.json() == {
            "PORT": str(port),
            "GAE_ENV": "localdev",
            "GAE_SERVICE": "default",
            "GAE_VERSION": "local",
            "GOOGLE_CLOUD_PROJECT": "demo-dpmsf-local",
        }
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
