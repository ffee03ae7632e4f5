"""End-to-end conformance: the one table of requests in ``tests/conformance/cases.py`` is sent, in order, to every
target, and the normalized answers must be equal to uvicorn's (and have the table's status).

Targets: uvicorn on 127.0.0.1 (``dpmsf_core.testing.http_client``); the Lambda handler called directly with REST
(stage ``Prod``) and HTTP API 2.0 events (``dpmsf_core.testing.lambda_invoker``); and the same handler behind an
API Gateway emulator nobody here wrote, serverless-offline, as a REST API under its stage (``/dev``), a REST API
without the stage in its URLs (``--noPrependStageInUrl``) and an HTTP API (payload 2.0). The emulator starts once
per module (about 10 s; ``npm ci`` once per lock file, about 30 s, cached in ``build/sls``).

Normalized: status; media type (only when there is a body: serverless-offline gives a 204 a JSON type);
``Allow``, ``Location`` and the ``Set-Cookie`` values; the body parsed (JSON) with the per-request ``request_id``
dropped; a problem's ``instance`` without its trailing slash (serverless-offline strips it from the path, API
Gateway does not). Each target's own prefix (stage or base path) in generated URLs becomes ``{root}`` and the
created task's id ``{task}``, so a URL that lacks the stage is a difference, not a match.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bundled import bundled
from conformance.cases import CASES, MAX_BODY, NO_BODY, Case
from conformance.emulator import EmulatorUnavailable, serverless_offline

from dpmsf_core.cli.cost import endpoint_costs
from dpmsf_core.testing import LambdaInvoker, http_client, lambda_invoker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # the first run installs serverless (npm ci)

REPO = Path(__file__).resolve().parent.parent
PLUGINS = [str(bundled()), str(REPO / "tests" / "conformance" / "plugins")]
ENV = {"DPMSF_MAX_BODY": str(MAX_BODY)}
GENERATED = ("/rest/", "/docs", "/openapi.json")  # how every URL the app generates starts, after its root
TARGETS = ("uvicorn", "lambda-rest-stage", "lambda-http-api", "sls-rest-stage", "sls-rest-no-stage", "sls-http-api")


@dataclass
class Raw:
    """An answer as the client saw it: status, headers (lower-cased names, every value), body bytes."""

    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""


Send = Callable[[Case, str, bytes | None], Raw]  # (case, path with ids filled in, body) -> answer


# -- sending a case to each kind of target ----------------------------------------------------------------------


def _body(case: Case) -> bytes | None:
    if case.pad:
        return json.dumps("x" * case.pad).encode()
    return None if case.json is NO_BODY else json.dumps(case.json).encode()


def http_sender(client: Any, root: str) -> Send:
    """Over HTTP to ``client``'s base URL, with ``root`` (the stage, if the URL carries one) in front."""

    def send(case: Case, path: str, body: bytes | None) -> Raw:
        headers = dict(case.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        r = client.request(case.method, root + path, params=list(case.query), headers=headers, content=body)
        out: dict[str, list[str]] = {}
        for name, value in r.headers.multi_items():
            out.setdefault(name.lower(), []).append(value)
        return Raw(r.status_code, out, r.content)

    return send


class _Invoker(LambdaInvoker):
    """``LambdaInvoker`` whose HTTP API events carry cookies the way API Gateway sends them: the ``cookies``
    array, no ``cookie`` header (payload 2.0)."""

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        headers = event.get("headers") or {}
        if event.get("version") == "2.0" and "cookie" in headers:
            event["cookies"] = [c.strip() for c in headers.pop("cookie").split(";") if c.strip()]
        if event.get("body") is not None:  # API Gateway passes the client's Content-Length on
            length = str(len(event["body"].encode()))
            headers["content-length" if event.get("version") == "2.0" else "Content-Length"] = length
            if "multiValueHeaders" in event:
                event["multiValueHeaders"]["Content-Length"] = [length]
        return super().__call__(event)


def lambda_answer(out: dict[str, Any]) -> Raw:
    """What API Gateway makes of a handler's answer: headers merged (``multiValueHeaders`` win), v2 cookies as
    ``Set-Cookie``, a base64 body decoded."""
    headers = {k.lower(): list(v) for k, v in (out.get("multiValueHeaders") or {}).items()}
    for name, value in (out.get("headers") or {}).items():
        headers.setdefault(name.lower(), [value])
    if out.get("cookies"):
        headers.setdefault("set-cookie", []).extend(out["cookies"])
    body = out.get("body") or ""
    raw = base64.b64decode(body) if out.get("isBase64Encoded") else body.encode()
    return Raw(int(out["statusCode"]), headers, raw)


def invoker_sender(invoker: _Invoker, kind: str) -> Send:
    def send(case: Case, path: str, body: bytes | None) -> Raw:
        doc = None if body is None else json.loads(body)
        if kind == "rest":
            query: dict[str, list[str]] = {}
            for key, value in case.query:
                query.setdefault(key, []).append(value)
            return lambda_answer(
                invoker.rest(case.method, path, query=query, json_body=doc, headers=dict(case.headers))
            )
        from urllib.parse import urlencode

        raw_query = urlencode(list(case.query))
        return lambda_answer(
            invoker.http(case.method, path, query=raw_query, json_body=doc, headers=dict(case.headers))
        )

    return send


# -- normalizing -----------------------------------------------------------------------------------------------


def _text(value: str, root: str, saved: dict[str, str]) -> str:
    for name, real in saved.items():
        value = value.replace(real, "{" + name + "}")
    if value.startswith(tuple(root + g for g in GENERATED)):
        value = "{root}" + value[len(root) :]
    return value


def _walk(doc: Any, root: str, saved: dict[str, str]) -> Any:
    if isinstance(doc, dict):
        out = {k: _walk(v, root, saved) for k, v in doc.items() if k != "request_id"}
        instance = out.get("instance")
        if isinstance(instance, str):  # the URL path the client used: any path, after the target's root
            if instance.startswith(root + "/"):
                instance = "{root}" + instance[len(root) :]
            out["instance"] = instance.rstrip("/")  # serverless-offline strips a trailing slash; API Gateway does not
        return out
    if isinstance(doc, list):
        return [_walk(v, root, saved) for v in doc]
    return _text(doc, root, saved) if isinstance(doc, str) else doc


def _cookie(value: str) -> str:
    """``name=value`` then the attributes, lower-cased and sorted (serializers order and case them differently)."""
    first, *attrs = [part.strip() for part in value.split(";") if part.strip()]
    return "; ".join([first, *sorted(a.lower() for a in attrs)])


def normalize(raw: Raw, root: str, saved: dict[str, str]) -> dict[str, Any]:
    media = (raw.headers.get("content-type") or [""])[0].split(";")[0].strip().lower()
    out: dict[str, Any] = {"status": raw.status}
    if raw.body:  # serverless-offline gives an empty answer (204) a JSON type: only a body's type is compared
        out["type"] = media
    for name in ("allow", "location"):
        if name in raw.headers:
            out[name] = _text(raw.headers[name][0], root, saved)
    if "set-cookie" in raw.headers:
        out["cookies"] = sorted(_cookie(c) for c in raw.headers["set-cookie"])
    if media.endswith("json") and raw.body:
        out["body"] = _walk(json.loads(raw.body), root, saved)
    elif media.startswith("text/"):
        out["body"] = raw.body.decode()
    elif raw.body:
        out["body"] = {"base64": base64.b64encode(raw.body).decode()}
    return out


def run_cases(send: Send, root: str) -> dict[str, dict[str, Any]]:
    """Every case in order; ``save`` keeps an id for the later paths."""
    saved: dict[str, str] = {}
    answers: dict[str, dict[str, Any]] = {}
    for case in CASES:
        path = case.path
        for name, value in saved.items():
            path = path.replace("{" + name + "}", value)
        raw = send(case, path, _body(case))
        if case.save and raw.status < 300:
            saved[case.save] = json.loads(raw.body)["results"]["id"]
        answers[case.id] = normalize(raw, root, saved)
    return answers


# -- the targets ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def answers() -> Iterator[dict[str, dict[str, dict[str, Any]] | str]]:
    """Each target's normalized answers, in turn (one app at a time: the store is configured per process);
    a string instead when the target could not run here, saying why."""
    import httpx

    results: dict[str, dict[str, dict[str, Any]] | str] = {}
    with http_client(PLUGINS, **ENV) as client:
        results["uvicorn"] = run_cases(http_sender(client, ""), "")
        results["uvicorn /metrics"] = {"invocations": _local_invocations(client.get("/metrics").text)}
    for name, kind, root in (("lambda-rest-stage", "rest", "/Prod"), ("lambda-http-api", "http", "")):
        with lambda_invoker(PLUGINS, **ENV) as plain:
            invoker = _Invoker(plain.handler)
            results[name] = run_cases(invoker_sender(invoker, kind), root)
    env = {**ENV, "DPMSF_PLUGINS": ":".join(PLUGINS)}
    with tempfile.TemporaryDirectory(prefix="dpmsf-conformance-") as state:
        try:
            with serverless_offline(env, Path(state)) as sls:
                staged, flat = sls["staged"], sls["flat"]
                with httpx.Client(base_url=staged.url, timeout=30) as client:
                    results["sls-rest-stage"] = run_cases(http_sender(client, "/dev"), "/dev")
                    results["sls-http-api"] = run_cases(http_sender(client, ""), "")
                with httpx.Client(base_url=flat.url, timeout=30) as client:
                    results["sls-rest-no-stage"] = run_cases(http_sender(client, ""), "")
            # stopped: their logs are complete. The handler's EMF lines, as `dpmsf cost` reads them
            for name, instance in (("sls-rest-stage + sls-http-api EMF", staged), ("sls-rest-no-stage EMF", flat)):
                costs = endpoint_costs(instance.log.read_text(errors="replace").splitlines())
                results[name] = {"invocations": {c.endpoint: c.invocations for c in costs}}
        except EmulatorUnavailable as exc:
            for name in (*TARGETS, "sls-rest-stage + sls-http-api EMF", "sls-rest-no-stage EMF"):
                results.setdefault(name, str(exc))
        _write_table(results, REPO / "build" / "conformance.md")
        yield results


def _write_table(results: dict[str, Any], path: Path) -> None:
    """``build/conformance.md``: per case and target, the status and whether the answer equals uvicorn's."""
    ref = results["uvicorn"]
    rows = ["| case | " + " | ".join(TARGETS) + " |", "|---" * (len(TARGETS) + 1) + "|"]
    for case in CASES:
        cells = []
        for target in TARGETS:
            got = results.get(target)
            if isinstance(got, str) or got is None:
                cells.append("skipped")
            else:
                same = "same" if got[case.id] == ref[case.id] else "DIFFERS"
                cells.append(f"{got[case.id]['status']} {same}")
        rows.append(f"| {case.id} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


def _local_invocations(text: str) -> dict[str, int]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["endpoint"]: int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dpmsf_endpoint_invocations_total"
    }


def _ran(answers: dict[str, Any], target: str) -> dict[str, dict[str, Any]]:
    got = answers[target]
    if isinstance(got, str):
        pytest.skip(f"{target}: {got}")
    return got


def test_reference_answers_have_the_tables_statuses(answers: dict[str, Any]) -> None:
    reference = _ran(answers, "uvicorn")
    assert {cid: a["status"] for cid, a in reference.items()} == {c.id: c.status for c in CASES}


def test_reference_answers_by_value(answers: dict[str, Any]) -> None:
    """A few answers in full, so that "all targets agree" cannot mean "all targets are wrong alike"."""
    ref = _ran(answers, "uvicorn")
    assert ref["links"]["body"] == {
        "service": "dpmsf",
        "services": "{root}/rest/services/",
        "directory": "{root}/rest/services/__dir__/",
        "docs": "{root}/docs",
        "openapi": "{root}/openapi.json",
    }
    assert ref["repeated-query-keys"]["body"] == {
        "results": {"hello": "world", "args": [], "kwargs": {"tag": ["a", "b,c", "d"], "one": "1"}}
    }
    assert ref["cookies"] == {
        "status": 200,
        "type": "application/json",
        "cookies": ["flavour=oat; path=/; samesite=lax", "session=s3cr3t; httponly; path=/; samesite=lax"],
        "body": {"results": {"seen": ["a=1", "b=2"]}},
    }
    assert ref["binary-response"] == {
        "status": 200,
        "type": "image/png",
        "body": {"base64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(16))).decode()},
    }
    task = {"id": "{task}", "title": "buy oat milk", "description": "", "done": False}
    assert ref["todo-create"]["location"] == "{root}/rest/services/todo/tasks/{task}/"
    assert ref["todo-create"]["body"] == {"results": task}
    assert ref["todo-list"]["body"]["results"] == [{**task, "done": True}]
    assert ref["405-method"]["allow"].startswith("GET, PUT, POST")
    assert ref["409-ambiguous"]["body"]["status"] == 409 and len(ref["409-ambiguous"]["body"]["candidates"]) == 4
    assert ref["413-body"]["body"]["instance"] == "{root}/rest/services/hello-world"
    readme_map = ref["readme-map"]["body"]["results"]
    assert readme_map["kwargs"] == {
        "a": "1", "b": "2", "c": "3", "d": "4", "name1": "one", "name2": "two", "name3": "three", "name4": "four",
        **{f"p{i}": str(i) for i in range(1, 11)},
    }  # fmt: skip
    hello = next(e for e in ref["directory"]["body"]["endpoints"] if e["api"] == "hello-world")
    assert hello["url"] == "{root}/rest/services/hello-world/"


@pytest.mark.parametrize("target", TARGETS[1:])
def test_target_answers_equal_uvicorns(answers: dict[str, Any], target: str) -> None:
    reference = _ran(answers, "uvicorn")
    got = _ran(answers, target)
    differences = {
        cid: {"uvicorn": reference[cid], target: got[cid]} for cid in reference if got[cid] != reference[cid]
    }
    assert not differences, f"differ: {sorted(differences)}\n" + json.dumps(differences, indent=1)[:6000]


def test_per_endpoint_invocations_agree_between_metrics_and_emf(answers: dict[str, Any]) -> None:
    """Item 6 end to end: uvicorn's ``/metrics`` and the EMF lines the handler wrote behind the emulator, read by
    ``dpmsf cost``, count the same calls per endpoint (the staged instance served two targets: twice as many)."""
    local = _ran(answers, "uvicorn /metrics")["invocations"]
    assert local["hello.hello-world"] == sum(1 for c in CASES if "/hello-world" in c.path)
    assert _ran(answers, "sls-rest-no-stage EMF")["invocations"] == local
    assert _ran(answers, "sls-rest-stage + sls-http-api EMF")["invocations"] == {k: 2 * v for k, v in local.items()}
