"""Per-endpoint cost by value: ``/metrics`` (Prometheus text) after known requests, guarded like ``__dir__``; the
``GBSeconds`` EMF metric on Lambda; ``dpmsf cost`` reading those EMF lines back into a table."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eventdata import lambda_context, load_event

from dpmsf_core.metrics import EndpointUsage
from dpmsf_core.tenancy.tokens import mint

ADMIN = "00000000-0000-4000-8000-00000000000a"
PLUGIN = """
import time

from dpmsf_core import expose


@expose.endpoint(method="GET", API="nap")
def nap(ms: int):
    time.sleep(ms / 1000)
    return ms


@expose.endpoint(method="GET", API="boom")
def boom():
    raise RuntimeError("no")
"""


def series(text: str) -> dict[str, dict[str, float]]:
    """``{metric name: {endpoint label: value}}`` parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[sample.labels.get("endpoint", "")] = sample.value
    return out


def test_totals_and_exposition_by_value() -> None:
    usage = EndpointUsage(memory=2048)
    usage.record("hello.hello-world", 200, 0.25)
    usage.record("hello.hello-world", 201, 0.5)
    usage.record("m.boom", 500, 0.125)
    usage.record(None, 404, 0.0625)
    assert {k: vars(v) for k, v in usage.totals().items()} == {
        "hello.hello-world": {"invocations": 2, "errors": 0, "seconds": 0.75, "gb_seconds": 1.5},
        "m.boom": {"invocations": 1, "errors": 1, "seconds": 0.125, "gb_seconds": 0.25},
        "-": {"invocations": 1, "errors": 0, "seconds": 0.0625, "gb_seconds": 0.125},
    }
    text = usage.render(lambda label: label != "m.boom").decode()
    assert text == (
        "# HELP dpmsf_endpoint_invocations_total Calls per endpoint (module.api).\n"
        "# TYPE dpmsf_endpoint_invocations_total counter\n"
        'dpmsf_endpoint_invocations_total{endpoint="-"} 1.0\n'
        'dpmsf_endpoint_invocations_total{endpoint="hello.hello-world"} 2.0\n'
        "# HELP dpmsf_endpoint_errors_total Answers of 500 and above per endpoint.\n"
        "# TYPE dpmsf_endpoint_errors_total counter\n"
        'dpmsf_endpoint_errors_total{endpoint="-"} 0.0\n'
        'dpmsf_endpoint_errors_total{endpoint="hello.hello-world"} 0.0\n'
        "# HELP dpmsf_endpoint_duration_seconds_total Time spent serving per endpoint.\n"
        "# TYPE dpmsf_endpoint_duration_seconds_total counter\n"
        'dpmsf_endpoint_duration_seconds_total{endpoint="-"} 0.0625\n'
        'dpmsf_endpoint_duration_seconds_total{endpoint="hello.hello-world"} 0.75\n'
        "# HELP dpmsf_endpoint_gb_seconds_total Duration x memory / 1024: what Lambda bills, per endpoint.\n"
        "# TYPE dpmsf_endpoint_gb_seconds_total counter\n"
        'dpmsf_endpoint_gb_seconds_total{endpoint="-"} 0.125\n'
        'dpmsf_endpoint_gb_seconds_total{endpoint="hello.hello-world"} 1.5\n'
        "# HELP dpmsf_function_memory_mb The memory GB-seconds are computed for.\n"
        "# TYPE dpmsf_function_memory_mb gauge\n"
        "dpmsf_function_memory_mb 2048.0\n"
    )


def test_importing_the_app_does_not_load_prometheus_client() -> None:
    code = "import sys, dpmsf_core.app, handler.aws_lambda; print('prometheus_client' in sys.modules)"
    env = {"DPMSF_STATE_DIR": "/tmp/dpmsf-test-metrics", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_metrics_after_known_requests(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], monkeypatch: Any
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")  # 1 vCPU's worth; read when the app is built
    plugin_dir.write("m.py", PLUGIN)
    client = serve(make_app(plugin_dir.path))
    for _ in range(3):
        assert client.get("/rest/services/nap/", params={"ms": "40"}).json() == {"results": 40}
    assert client.get("/rest/services/boom/").status_code == 500
    assert client.get("/rest/services/nope/").status_code == 404
    assert client.get("/rest/services/nap/", params={"ms": "x"}).status_code == 422
    r = client.get("/metrics")
    assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8")
    got = series(r.text)
    assert got["dpmsf_endpoint_invocations_total"] == {"m.nap": 4.0, "m.boom": 1.0, "-": 1.0}
    assert got["dpmsf_endpoint_errors_total"] == {"m.nap": 0.0, "m.boom": 1.0, "-": 0.0}
    assert got["dpmsf_function_memory_mb"] == {"": 1769.0}
    seconds = got["dpmsf_endpoint_duration_seconds_total"]
    assert 0.12 <= seconds["m.nap"] < 3  # three naps of 40 ms, and a 422 that never ran the function
    for label, value in seconds.items():
        assert got["dpmsf_endpoint_gb_seconds_total"][label] == pytest.approx(value * 1769 / 1024, rel=1e-9)
    again = series(client.get("/metrics").text)["dpmsf_endpoint_invocations_total"]
    assert again == {"m.nap": 4.0, "m.boom": 1.0, "-": 2.0}  # the first /metrics read itself resolved no endpoint


def test_metrics_guarded_like_dir(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("m.py", PLUGIN)
    app = make_app(plugin_dir.path, env={"ADMIN_ID": ADMIN, "DPMSF_REQUIRE_TOKENS": "1", "DPMSF_KEY_CACHE": "0"})
    client = serve(app)
    for path in ("/metrics", "/rest/services/__dir__/"):
        r = client.get(path)
        assert (r.status_code, r.headers["content-type"]) == (401, "application/problem+json"), path
        assert r.json()["detail"] == "missing bearer token"
    security = app.get_security()
    token = mint(ADMIN, security.tenants.get(ADMIN).key)
    r = client.get("/metrics", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200 and "dpmsf_endpoint_invocations_total" in r.text


def test_a_tenant_sees_only_the_series_of_endpoints_it_may_see() -> None:
    """The filter ``metrics_page`` applies, on a snapshot with a shared and two tenants' endpoints."""
    from types import SimpleNamespace

    from dpmsf_core.metrics import metrics_page

    a, b = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
    eps = [SimpleNamespace(module="shared", api="s", tenant=None), SimpleNamespace(module="ma", api="x", tenant=a),
           SimpleNamespace(module="mb", api="y", tenant=b)]  # fmt: skip
    snapshot = SimpleNamespace(endpoints=lambda: eps)
    usage = EndpointUsage()
    for label in ("shared.s", "ma.x", "mb.y", "gone.z", "-"):
        usage.record(label, 200, 0.5)

    def seen(tenant: str | None) -> set[str]:
        page = metrics_page(usage, snapshot, tenant, ADMIN).decode()
        return set(series(page)["dpmsf_endpoint_invocations_total"])

    assert seen(None) == {"shared.s", "-"}
    assert seen(a) == {"shared.s", "ma.x", "-"}
    assert seen(b) == {"shared.s", "mb.y", "-"}
    assert seen(ADMIN) == {"shared.s", "ma.x", "mb.y", "gone.z", "-"}


def test_not_served_on_lambda(monkeypatch: Any, tmp_path: Path) -> None:
    """On Lambda the figures are EMF metrics; ``/metrics`` of one container would be a misleading fraction."""
    from dpmsf_core.app import create_app
    from dpmsf_core.aws.lambda_adapter import LambdaAdapter
    from dpmsf_core.config import Settings

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "dpmsf-test")
    app = create_app(Settings.from_env({"DPMSF_STATE_DIR": str(tmp_path)}, dotenv=None))
    adapter = LambdaAdapter(app)
    try:
        out = adapter(load_event("apigw_v1", path="/metrics", query={}), lambda_context())
    finally:
        adapter.close()
    assert app.usage is None
    assert out["statusCode"] == 404


EMF_LINES = [
    "START RequestId: 1 Version: $LATEST",
    '{"_aws":{"Timestamp":1,"CloudWatchMetrics":[]},"endpoint":"hello.hello-world","Requests":[1.0],'
    '"Latency":[2.0],"GBSeconds":[0.001]}',
    '2026-12-02T01:00:00Z 2 {"_aws":{"Timestamp":2},"endpoint":"hello.hello-world","Requests":1,"Latency":6,'
    '"GBSeconds":0.003}',
    '{"_aws":{"Timestamp":3},"endpoint":"m.boom","Requests":[1.0],"Latency":[1000.0],"Errors":[1.0]}',
    '{"_aws":{"Timestamp":4},"function_name":"f","ColdStart":[1.0]}',
    '{"_aws": truncated',
]


def _dpmsf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpmsf_core.cli", *args], capture_output=True, text=True, timeout=60)


def test_dpmsf_cost_table_by_value(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("\n".join(EMF_LINES) + "\n")
    out = _dpmsf("cost", str(log), "--memory-mb", "1024")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "endpoint           invocations  errors  duration ms   mean ms  GB-seconds      est. USD",
        "m.boom                       1       1     1000.000  1000.000    1.000000  0.0000168667",
        "hello.hello-world            2       0        8.000     4.000    0.004000  0.0000004667",
        "TOTAL                        3       1     1008.000   336.000    1.004000  0.0000173334",
    ]
    as_json = json.loads(_dpmsf("cost", str(log), "--json", "--memory-mb", "1024").stdout)
    assert as_json[1] == {
        "endpoint": "hello.hello-world",
        "invocations": 2,
        "errors": 0,
        "duration_ms": 8.0,
        "gb_seconds": 0.004,
        "usd": pytest.approx(0.004 * 0.0000166667 + 2 * 0.2 / 1_000_000),
    }
    missing = _dpmsf("cost", str(tmp_path / "nope.log"))
    assert (missing.returncode, missing.stderr) == (
        2,
        f"dpmsf: cannot read '{tmp_path / 'nope.log'}': No such file or directory\n",
    )


def test_emf_gb_seconds_from_the_lambda_handler_read_back_by_dpmsf_cost(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The handler's own EMF lines (Powertools Metrics) -> a log file -> ``dpmsf cost``: the same figures."""
    from dpmsf_core.app import create_app
    from dpmsf_core.aws.lambda_adapter import LambdaAdapter
    from dpmsf_core.aws.observability import PowertoolsObserver
    from dpmsf_core.config import Settings

    app = create_app(Settings.from_env({"DPMSF_STATE_DIR": str(tmp_path)}, dotenv=None))
    watcher = PowertoolsObserver({"AWS_LAMBDA_FUNCTION_NAME": "t", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048"})
    adapter = LambdaAdapter(app, watcher=watcher)
    handler = watcher.wrap(adapter)
    try:
        for path in ("/rest/services/hello-world/", "/rest/services/hello-world/", "/rest/services/add/"):
            handler(load_event("apigw_v2", path=path, query={"a": "1"}), lambda_context())
    finally:
        adapter.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emf = [json.loads(line) for line in lines if '"Requests"' in line]
    assert [e["endpoint"] for e in emf] == ["hello.hello-world", "hello.hello-world", "introspected.add"]
    for e in emf:
        gb, ms = (v[0] if isinstance(v, list) else v for v in (e["GBSeconds"], e["Latency"]))  # Powertools: [x]
        assert gb == pytest.approx(ms / 1000 * 2, abs=1.1e-6)  # 2048 MB = 2 GB; Latency is rounded to 1 µs
        units = {m["Name"]: m["Unit"] for m in e["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        assert units["GBSeconds"] == "None" and units["Requests"] == "Count"
    log = tmp_path / "lambda.log"
    log.write_text("\n".join(lines) + "\n")
    costs = {c["endpoint"]: c for c in json.loads(_dpmsf("cost", str(log), "--json").stdout)}
    hello = [e for e in emf if e["endpoint"] == "hello.hello-world"]
    assert costs["hello.hello-world"]["invocations"] == 2
    assert costs["hello.hello-world"]["gb_seconds"] == pytest.approx(sum(e["GBSeconds"][0] for e in hello))
    assert costs["introspected.add"]["invocations"] == 1
