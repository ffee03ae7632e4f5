"""The deployment files, tested without a cluster: the Helm chart (rendered by tests/helmlite.py, no helm here), the
Knative Service that Cloud Run also takes, and the image they name (deploy/Dockerfile).

What each must promise is asserted on the rendered objects (probes on /healthz and /readyz, secrets for the admin
and master keys, a non-root read-only pod, a PDB and an HPA that select the pods); kubernetes-validate (PyPI)
checks them against Kubernetes' schemas, a JSON Schema of ours the Knative envelope, and Checkov (PyPI) scans
the Dockerfiles, the manifests and infra/template.yaml. Both tools are skipped when missing, unless
``DPMSF_REQUIRE_DEPLOY_TOOLS=1`` (``.ci/run`` installs them into build/deploy-venv and sets it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from helmlite import render_chart
from ports import free_port
from test_docker import _env, copy_sources, parse, stages

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "dpmsf"
KNATIVE = ROOT / "deploy" / "knative" / "service.yaml"
IMAGE = ROOT / "deploy" / "Dockerfile"
SET = {
    "adminId": "7e7a7e7a-0000-4000-8000-000000000001",
    "secrets": {"databaseUrl": "postgresql://u:p@db:5432/dpmsf", "adminKey": "a" * 43, "masterKey": "m" * 43},
}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objects}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_chart_renders_what_an_orchestrator_needs() -> None:
    found = by_kind(render_chart(CHART, SET))
    assert set(found) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "NetworkPolicy",
    }
    deployment = found["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == "REGISTRY/dpmsf:0.1.0"  # the chart's appVersion when no tag is given
    # probes: live on /healthz, ready (and started) on /readyz, on the port the container names
    port_names = {p["name"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path and container[probe]["httpGet"]["port"] in port_names
    # non-root, read-only, nothing extra
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # the one writable place: DPMSF_STATE_DIR
    assert pod["spec"]["automountServiceAccountToken"] is False
    # the keys and the database come from the Secret, never from plain values
    env = env_of(container)
    secret = found["Secret"]
    for name, key in (
        ("DPMSF_ADMIN_KEY", "admin-key"),
        ("DPMSF_MASTER_KEY", "master-key"),
        ("DPMSF_STORE", "database-url"),
        ("DPMSF_TENANTS", "database-url"),
        ("DPMSF_REPLAY_STORE", "database-url"),
    ):
        assert env[name] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": key}}
        assert key in secret["stringData"]
    assert secret["stringData"]["master-key"] == "m" * 43
    assert env["ADMIN_ID"] == SET["adminId"] and env["DPMSF_S3_REFRESH"] == "30"
    # the grace period covers the drain (DPMSF_GRACE_SECONDS) and the preStop pause
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(env["DPMSF_GRACE_SECONDS"]) + 5
    # the Service, the PDB and the HPA reach these pods
    service = found["Service"]
    assert service["spec"]["selector"] == labels and service["spec"]["ports"][0]["targetPort"] in port_names
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    policy = found["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == labels
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dpmsf"}
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_chart_with_its_own_count_and_an_existing_secret() -> None:
    found = by_kind(
        render_chart(
            CHART,
            {"autoscaling": {"enabled": False}, "replicaCount": 4, "secrets": {"create": False, "name": "ours"}},
            release="api",
            namespace="prod",
        )
    )
    assert set(found) == {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    deployment = found["Deployment"]
    assert deployment["spec"]["replicas"] == 4 and deployment["metadata"]["namespace"] == "prod"
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["DPMSF_MASTER_KEY"] == {"secretKeyRef": {"name": "ours", "key": "master-key"}}


# -- the Knative Service ---------------------------------------------------------------------------------------

# What Knative Serving (and Cloud Run's Knative API) accept in a Service, from serving.knative.dev/v1's API spec:
# one container serving HTTP/1 or h2c on one port, autoscaling annotations as strings, a bounded concurrency.
KNATIVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.knative.dev/v1"},
        "kind": {"const": "Service"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"}},
        },
        "spec": {
            "type": "object",
            "required": ["template"],
            "additionalProperties": False,
            "properties": {
                "template": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["spec"],
                    "properties": {
                        "metadata": {
                            "type": "object",
                            "properties": {
                                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                        "spec": {
                            "type": "object",
                            "required": ["containers"],
                            "properties": {
                                "containerConcurrency": {"type": "integer", "minimum": 0, "maximum": 1000},
                                "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 3600},
                                "containers": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["image"],
                                        "properties": {
                                            "ports": {
                                                "type": "array",
                                                "maxItems": 1,
                                                "items": {
                                                    "type": "object",
                                                    "required": ["containerPort"],
                                                    "properties": {"name": {"enum": ["http1", "h2c"]}},
                                                },
                                            },
                                            "env": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    # Cloud Run sets these itself and refuses a revision that does
                                                    "properties": {"name": {"not": {"enum": ["PORT", "K_SERVICE"]}}},
                                                },
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "traffic": {"type": "array"},
            },
        },
    },
}


def knative() -> dict[str, Any]:
    return yaml.safe_load(KNATIVE.read_text())


def test_the_knative_service_passes_the_knative_schema_and_promises_the_same() -> None:
    service = knative()
    jsonschema.validate(service, KNATIVE_SCHEMA)
    spec = service["spec"]["template"]["spec"]
    [container] = spec["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port}  # the only port it may probe
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    env = env_of(container)
    for name in ("DPMSF_ADMIN_KEY", "DPMSF_MASTER_KEY", "DPMSF_STORE", "DPMSF_TENANTS", "DPMSF_REPLAY_STORE"):
        assert env[name]["secretKeyRef"]["key"] == "latest"  # a Secret Manager version on Cloud Run
    assert env["DPMSF_STORE"] == env["DPMSF_TENANTS"] == env["DPMSF_REPLAY_STORE"]  # one database
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail: two containers are refused
        jsonschema.validate(
            {**service, "spec": {"template": {"spec": {"containers": [container] * 2}}}}, KNATIVE_SCHEMA
        )
    # the image's port: Cloud Run sends $PORT (8080 by default), the image listens on it
    assert _env(stages(parse(IMAGE))[-1])["PORT"] == str(port)


# -- tools: kubernetes-validate and Checkov ----------------------------------------------------------------------


def tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in [ROOT / "build" / "deploy-venv" / "bin" / name] if p.exists()), None
    )
    if found is None:
        if os.environ.get("DPMSF_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(f"DPMSF_REQUIRE_DEPLOY_TOOLS=1 but {name} is not installed")
        pytest.skip(f"{name} is not installed (pip install {name} into build/deploy-venv, as .ci/run does)")
    return found


def write_manifests(folder: Path) -> list[Path]:
    """The chart rendered with each set of values, one file per object, and the Knative pod template as a Pod."""
    files = []
    for n, (values, namespace) in enumerate([(SET, "dpmsf"), ({"autoscaling": {"enabled": False}}, "other")]):
        for obj in render_chart(CHART, values, namespace=namespace):
            path = folder / f"{n}-{obj['kind'].lower()}.yaml"
            path.write_text(yaml.safe_dump(obj, sort_keys=False))
            files.append(path)
    spec = {
        k: v
        for k, v in knative()["spec"]["template"]["spec"].items()
        if k not in ("containerConcurrency", "timeoutSeconds")
    }
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "knative-template"}, "spec": spec}
    files.append(folder / "knative-pod.yaml")
    files[-1].write_text(yaml.safe_dump(pod, sort_keys=False))
    return files


def test_the_manifests_pass_kubernetes_validate(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    files = write_manifests(tmp_path)
    done = subprocess.run([validate, "--strict", *map(str, files)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"  # the tool can fail: a probe with a port of the wrong type
    deployment = yaml.safe_load((tmp_path / "0-deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8080]
    broken.write_text(yaml.safe_dump(deployment))
    assert subprocess.run([validate, "--strict", str(broken)], capture_output=True, timeout=300).returncode != 0


def test_checkov_passes_the_dockerfiles_manifests_and_sam_template(tmp_path: Path) -> None:
    checkov = tool("checkov")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_manifests(manifests)
    (manifests / "knative-pod.yaml").unlink()  # the Knative file itself is scanned below
    shutil.copy(KNATIVE, manifests / "knative-service.yaml")
    targets = [
        ["-d", str(manifests), "--framework", "kubernetes"],
        [
            "-f",
            str(ROOT / "Dockerfile"),
            "-f",
            str(IMAGE),
            "-f",
            str(ROOT / "Dockerfile.lambda"),
            "--framework",
            "dockerfile",
        ],
        ["-f", str(ROOT / "infra" / "template.yaml"), "--framework", "cloudformation"],
    ]
    failed: list[str] = []
    for target in targets:
        done = subprocess.run(
            [checkov, *target, "--quiet", "--compact", "-o", "json", "--skip-download"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        )
        reports = json.loads(done.stdout or "[]")
        for report in reports if isinstance(reports, list) else [reports]:
            for check in report.get("results", {}).get("failed_checks", []):
                failed.append(f"{check['check_id']} {check['file_path']} {check['resource']}: {check['check_name']}")
    assert failed == [], "\n".join(failed)


# -- the image's command, run from what it copies ----------------------------------------------------------------


def test_the_cluster_image_command_serves_drains_and_logs_json_to_stdout(tmp_path: Path) -> None:
    """No engine here: /app is assembled from the final stage's COPY lines, the CMD runs with its ENV (our venv's
    ``dpmsf`` on PATH in place of /opt/dpmsf), a PORT of ours, and the state folder where the emptyDir would be."""
    final = stages(parse(IMAGE))[-1]
    app = tmp_path / "app"
    app.mkdir()
    for ins in final:
        if ins.op == "COPY" and copy_sources(ins)[0] is None:
            for source in copy_sources(ins)[1]:
                shutil.copytree(ROOT / source, app / shlex.split(ins.args)[-1])
    env = _env(final)
    cmd = json.loads(next(i.args for i in final if i.op == "CMD"))
    port = free_port()
    venv_bin = str(Path(shutil.which("dpmsf", path=str(Path(sys.executable).parent)) or "").parent)
    env.update(
        PORT=str(port), DPMSF_STATE_DIR=str(tmp_path / "state"), PATH=f"{venv_bin}:/usr/bin:/bin", HOME=str(tmp_path)
    )
    before = sorted(p.relative_to(app) for p in app.rglob("*"))
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(cmd, cwd=app, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr").read_text()[-3000:]
            time.sleep(0.2)
        listing = httpx.get(f"http://127.0.0.1:{port}/rest/services/__dir__/").json()
        assert listing, listing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        out.close()
        err.close()
    assert code == 0  # SIGTERM: drained, a clean exit for the orchestrator
    lines = (tmp_path / "stdout").read_text().splitlines()
    assert lines and all(json.loads(line)["severity"] for line in lines)  # JSON on stdout, as the image asks
    started = [line for line in lines if "Started server process" in line]
    assert len(started) == int(env["DPMSF_WORKERS"])
    assert sorted(p.relative_to(app) for p in app.rglob("*")) == before  # nothing written beside the code
