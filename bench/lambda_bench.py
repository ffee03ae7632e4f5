"""Lambda figures of the serverless issue, side by side with FastAPI + Mangum in the same run; prints ratios.

    .venv/bin/python bench/lambda_bench.py [--cold-runs 10] [--warm-calls 2000] [--artifact FOLDER]

(a) cold start: a fresh interpreter imports the handler module and serves one REST v1 GET: the whole process's
    wall time (its exit included), spawn to answer (Lambda's cold start: init and the first invoke; the process
    never exits there), and peak RSS (getrusage in the child); median of N runs, the variants interleaved.
(b) warm invoke: µs per call for REST v1 GET/POST and HTTP API v2 GET, sync and async functions.
Targets against FastAPI + Mangum(app): cold <= 0.6x wall and <= 0.8x RSS, warm <= 0.6x (the serverless issue);
cold <= 0.2x on the built artefact, warm <= 0.25x (the performance issue). ``--artifact`` adds a cold start of the
folder `sam build` (or `dpmsf package`) built for this interpreter's Python, run as Lambda runs it: ``python -I -S``
with only that folder on sys.path, its bundled plugins, cwd in it. The child reads its event from a JSON file, so
no variant pays for the test helpers' imports.
DPMSF runs as on Lambda (AWS_LAMBDA_FUNCTION_NAME set: sync functions inline, Powertools Logger + Metrics on,
their output to /dev/null); the "no Powertools" row shows what they cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

PLUGIN = """
from dpmsf_core import expose


@expose.endpoint(method="GET|POST", API="hello-sync")
def hello_sync(*args, **kwargs):
    return {"hello": kwargs.get("name", "world")}


@expose.endpoint(method="GET|POST", API="hello-async")
async def hello_async(*args, **kwargs):
    return {"hello": kwargs.get("name", "world")}
"""

COLD = """
import json, resource, sys, time
t0 = time.perf_counter()
sys.path[:0] = {path!r}
{import_line}
class Context:  # what Lambda passes: attributes only
    function_name, memory_limit_in_mb, aws_request_id = "bench", 512, "c0ffee00-0000-4000-8000-000000000000"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self): return 29000
with open({event!r}) as fh:
    event = json.load(fh)
event = globals().get("prepare", lambda e: e)(event)  # Chalice: its route's resourcePath
out = handler(event, Context())
assert out["statusCode"] == 200, out
answered_ns = time.time_ns()
ms = (time.perf_counter() - t0) * 1000
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.__stderr__.write("RESULT " + json.dumps({{"ms": ms, "rss": rss, "answered_ns": answered_ns}}) + "\\n")
"""

WARM = """
import json, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
{import_line}
from eventdata import lambda_context, load_event
ctx = lambda_context()
cases = {{}}
for fn in ("sync", "async"):
    path = f"/rest/services/hello-{{fn}}/"
    cases[f"v1 GET {{fn}}"] = load_event("apigw_v1", path=path, query={{"name": "warm"}})
    cases[f"v1 POST {{fn}}"] = load_event("apigw_v1", method="POST", path=path, query={{}}, body={{"name": "warm"}})
    cases[f"v2 GET {{fn}}"] = load_event("apigw_v2", path=path, query={{"name": "warm"}})
n = {calls}
result = {{}}
prepare = globals().get("prepare", lambda e: e)
for name, event in cases.items():
    event = prepare(event)
    if event is None:  # an event kind this framework does not serve
        continue
    out = handler(event, ctx)
    assert out["statusCode"] == 200 and "warm" in out["body"], (name, out)
    for _ in range(200):
        handler(event, ctx)
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            handler(event, ctx)
        rounds.append((time.perf_counter() - t) / n * 1e6)
    result[name] = min(rounds)
sys.__stderr__.write("RESULT " + json.dumps(result) + "\\n")
"""

DPMSF_IMPORT = "from handler.aws_lambda import handler"
FASTAPI_IMPORT = "sys.path.insert(0, {bench!r}); from baseline_lambda_app import {name} as handler"
POWERTOOLS_IMPORT = "sys.path.insert(0, {bench!r}); from baseline_powertools_app import handler"
BARE_IMPORT = "sys.path.insert(0, {bench!r}); from baseline_bare_handler import handler"
CHALICE_IMPORT = "sys.path.insert(0, {bench!r}); from baseline_chalice_app import handler, prepare"
ARTIFACT = "dpmsf (built artefact)"


def plugin_folder(base: Path) -> Path:
    """``base/plugins`` with the bench plugin as a deployed one is: compiled (``dpmsf package`` ships ``.pyc``) and
    its files aged (none was just changed). Else the first import writes ``__pycache__``, the folder looks freshly
    changed, and for two seconds every request re-checks it (hot reload's guard against coarse mtimes)."""
    import compileall

    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "bench_plugin.py").write_text(PLUGIN)
    aged = time.time() - 60
    os.utime(plugins / "bench_plugin.py", (aged, aged))  # before compiling: the .pyc records the source's mtime
    compileall.compile_dir(str(plugins), quiet=1)
    for path in (*plugins.rglob("*"), plugins):
        os.utime(path, (aged, aged))
    return plugins


def variants(plugins: Path, artifact: Path | None) -> dict[str, tuple[str, dict[str, str]]]:
    lam = {"AWS_LAMBDA_FUNCTION_NAME": "bench", "AWS_REGION": "us-east-1"}
    dp = {**lam, "DPMSF_PLUGINS": str(plugins), "POWERTOOLS_METRICS_NAMESPACE": "Bench"}
    bench = str(ROOT / "bench")
    table = {
        "fastapi+mangum": (FASTAPI_IMPORT.format(bench=bench, name="handler"), lam),
        "fastapi+mangum(lifespan=off)": (FASTAPI_IMPORT.format(bench=bench, name="handler_lifespan_off"), lam),
        "powertools resolver": (
            POWERTOOLS_IMPORT.format(bench=bench),
            {**lam, "POWERTOOLS_METRICS_NAMESPACE": "Bench"},
        ),
        "bare handler": (BARE_IMPORT.format(bench=bench), lam),
        "dpmsf": (DPMSF_IMPORT, dp),
        "dpmsf (no Powertools)": (
            DPMSF_IMPORT,
            {"DPMSF_PLUGINS": str(plugins), "DPMSF_SYNC_INLINE": "1", "DPMSF_FUNCTION_TIMEOUT": "0"},  # as on Lambda
        ),
    }
    if importlib.util.find_spec("chalice") is not None:  # optional: pip install chalice
        table["chalice"] = (CHALICE_IMPORT.format(bench=bench), lam)
    if artifact is not None:  # what `sam build` / `dpmsf package` ships: its own plugins, bytecode, dependencies
        table[ARTIFACT] = (DPMSF_IMPORT, {**lam, "POWERTOOLS_METRICS_NAMESPACE": "Bench"})
    return table


def run_child(code: str, env: dict[str, str], state: str, *, isolated: bool = False, cwd: str | None = None) -> dict:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": state, "DPMSF_STATE_DIR": state, **env}
    python = [sys.base_prefix + "/bin/python3", "-I", "-S"] if isolated else [PY]
    proc = subprocess.run(
        [*python, "-c", code],
        cwd=cwd or state,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = [x for x in proc.stderr.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def cold_event(folder: Path, path: str) -> str:
    """One REST v1 GET event as Lambda delivers it, in a file: the child reads it with json alone."""
    sys.path.insert(0, str(ROOT / "tests"))
    from eventdata import load_event

    target = folder / "cold_event.json"
    target.write_text(json.dumps(load_event("apigw_v1", path=path, query={"name": "cold"})))
    return str(target)


def cold_once(name: str, code: str, env: dict[str, str], state: str, path: list[str]) -> dict[str, float]:
    """One cold start: the whole process (what a shell times), spawn to answer (Lambda's cold start: its process
    never exits after the first invoke), import + invoke as the child times it, and the child's peak RSS."""
    isolated = name == ARTIFACT  # as on Lambda: the artefact alone on sys.path, no site-packages
    spawned_ns, t = time.time_ns(), time.perf_counter()
    r = run_child(code, env, state, isolated=isolated, cwd=path[0] if isolated else None)  # Lambda: /var/task
    wall = (time.perf_counter() - t) * 1000
    return {"wall": wall, "answer": (r["answered_ns"] - spawned_ns) / 1e6, "inner": r["ms"], "rss": r["rss"]}


def cold(codes: dict[str, tuple[str, dict[str, str], list[str]]], runs: int, state: str) -> dict[str, dict[str, float]]:
    """Median of ``runs`` cold starts of each variant, interleaved (A B C A B C ...): drift hits them all alike."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    for _ in range(runs):
        for name, (code, env, path) in codes.items():
            samples[name].append(cold_once(name, code, env, state, path))
    return {
        name: {key: statistics.median(s[key] for s in runs_of) for key in ("wall", "answer", "inner", "rss")}
        for name, runs_of in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold-runs", type=int, default=10)
    parser.add_argument("--warm-calls", type=int, default=2000)
    parser.add_argument(
        "--artifact",
        type=Path,
        help="also start the folder `sam build` or `dpmsf package` built (for this Python), with python -I -S",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpmsf-lambda-bench-") as tmp:
        plugins = plugin_folder(Path(tmp))
        state = str(Path(tmp) / "state")
        os.makedirs(state)
        table = variants(plugins, args.artifact)
        event = cold_event(Path(tmp), "/rest/services/hello-sync/")
        sources = {name: [str(ROOT), str(ROOT / "bench")] for name in table}
        if args.artifact is not None:
            sources[ARTIFACT] = [str(args.artifact.resolve())]
            event_bundled = cold_event(Path(tmp) / "state", "/rest/services/hello-world/")

        print(f"(a) cold start: fresh process, import handler + one REST v1 GET; median of {args.cold_runs}")
        codes = {
            name: (
                COLD.format(path=sources[name], import_line=imp, event=event_bundled if name == ARTIFACT else event),
                env,
                sources[name],
            )
            for name, (imp, env) in table.items()
        }
        colds = cold(codes, args.cold_runs, state)
        base = colds["fastapi+mangum"]
        print(
            f"{'':32} {'process wall':>13} {'spawn-answer':>13} {'import+invoke':>14} {'peak RSS':>10}"
            "   ratios vs fastapi+mangum"
        )
        for name, c in colds.items():
            ratio = (
                f"wall {c['wall'] / base['wall']:.2f}x  answer {c['answer'] / base['answer']:.2f}x"
                f"  RSS {c['rss'] / base['rss']:.2f}x"
            )
            print(
                f"{name:32} {c['wall']:10.1f} ms {c['answer']:10.1f} ms {c['inner']:11.1f} ms {c['rss']:7.1f} MiB"
                f"   {ratio}"
            )
        print("targets: dpmsf wall <= 0.60x, RSS <= 0.80x; the built artefact wall <= 0.20x\n")

        print(f"(b) warm invoke: µs per call (best of 3 rounds of {args.warm_calls})")
        warms = {}
        for name, (imp, env) in table.items():
            if name == ARTIFACT:
                continue  # its plugins are the bundled ones: the warm cases need the bench plugin
            code = WARM.format(root=str(ROOT), tests=str(ROOT / "tests"), import_line=imp, calls=args.warm_calls)
            warms[name] = run_child(code, env, state)
        cases = list(warms["fastapi+mangum"])
        names = [n for n in table if n != ARTIFACT]
        print(f"{'case':14}" + "".join(f"{n[:22]:>24}" for n in names) + "   dpmsf/fastapi+mangum  dpmsf/powertools")
        for case in cases:
            row = "".join(f"{warms[n][case]:24.1f}" if case in warms[n] else f"{'n/a':>24}" for n in names)
            r1 = warms["dpmsf"][case] / warms["fastapi+mangum"][case]
            r2 = warms["dpmsf"][case] / warms["powertools resolver"][case]
            print(f"{case:14}{row}   {r1:20.2f}x  {r2:15.2f}x")
        pt = [warms["powertools resolver"][c] / warms["fastapi+mangum"][c] for c in cases]
        print(f"powertools resolver / fastapi+mangum: {min(pt):.2f}x to {max(pt):.2f}x")
        print("targets: dpmsf <= 0.25x fastapi+mangum, at or below the Powertools resolver\n")
        print_summary(colds, warms)
    return 0


def print_summary(colds: dict[str, dict[str, float]], warms: dict[str, dict[str, float]]) -> None:
    """The performance issue's table: each anchor's ratio to FastAPI + Mangum, REST v1 events."""
    columns = [n for n in ("bare handler", "chalice", "powertools resolver", "dpmsf", ARTIFACT) if n in colds]
    base_warm, base_cold = warms["fastapi+mangum"], colds["fastapi+mangum"]

    def warm(name: str, cases: tuple[str, ...]) -> str:
        found = [warms[name][c] / base_warm[c] for c in cases if name in warms and c in warms[name]]
        return " / ".join(f"{r:.2f}x" for r in found) if found else "-"

    rows = [
        ("warm invoke, sync GET", lambda n: warm(n, ("v1 GET sync",))),
        ("warm invoke, POST / async GET", lambda n: warm(n, ("v1 POST sync", "v1 GET async"))),
        ("cold start, one GET (process wall)", lambda n: f"{colds[n]['wall'] / base_cold['wall']:.2f}x"),
        ("cold start, one GET (spawn-answer)", lambda n: f"{colds[n]['answer'] / base_cold['answer']:.2f}x"),
    ]
    print("summary, ratios to fastapi+mangum (REST v1):")
    print(f"{'figure':36}" + "".join(f"{n[:22]:>24}" for n in columns))
    for label, cell in rows:
        print(f"{label:36}" + "".join(f"{cell(n):>24}" for n in columns))

    return 0


if __name__ == "__main__":
    sys.exit(main())
