"""Warm Lambda invokes counted in CPU instructions (valgrind's callgrind): the same ratios as lambda_bench.py's
warm table, but repeatable on a busy machine, where wall-clock microseconds are not.

    .venv/bin/python bench/lambda_instructions.py [--calls 500]

For each handler (DPMSF as on Lambda, FastAPI + Mangum(app), the Powertools resolver anchor) and each case
(REST v1 and HTTP API v2, sync and async functions), a child process warms the handler up, then serves N more
invokes; the instructions of a run with N invokes minus those of a run with none, over N, are the cost of one
warm invoke. ``PYTHONHASHSEED=0`` keeps dict layouts, and so the counts, the same from run to run (to within
0.1 %, measured). Needs ``valgrind`` (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lambda_bench import plugin_folder  # noqa: E402  # the same functions at the same URLs

CHILD = """
import sys
sys.path[:0] = [{root!r}, {tests!r}, {bench!r}]
{import_line}
from eventdata import lambda_context, load_event
ctx = lambda_context()
event = load_event({kind!r}, path="/rest/services/hello-{case}/", query={{"name": "warm"}})
assert handler(event, ctx)["statusCode"] == 200  # the figure is a served request's, never an error's
for _ in range(50):
    handler(event, ctx)
for _ in range(int(sys.argv[1])):
    handler(event, ctx)
"""

HANDLERS = {
    "dpmsf": "from handler.aws_lambda import handler",
    "fastapi+mangum": "from baseline_lambda_app import handler",
    "powertools resolver": "from baseline_powertools_app import handler",
}


def instructions(code: str, calls: int, env: dict[str, str]) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code, str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(found.group(1))


def per_invoke(code: str, calls: int, env: dict[str, str]) -> float:
    """The slope between a run with no invokes and one with ``calls``, after an uncounted run that writes any
    ``.pyc`` still missing (else the first counted run pays for compiling what was edited since)."""
    instructions(code, 0, env)
    return (instructions(code, calls, env) - instructions(code, 0, env)) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("this bench needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="dpmsf-instructions-") as tmp:
        plugins = plugin_folder(Path(tmp))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "PYTHONHASHSEED": "0",
            "AWS_LAMBDA_FUNCTION_NAME": "bench",
            "AWS_REGION": "us-east-1",
            "POWERTOOLS_METRICS_NAMESPACE": "Bench",
            "DPMSF_STATE_DIR": tmp,
            "DPMSF_PLUGINS": str(plugins),
        }
        names = list(HANDLERS)
        print(f"warm invoke, instructions per call (callgrind, {args.calls} calls)")
        print(f"{'case':16}" + "".join(f"{n:>22}" for n in names) + "   dpmsf/fastapi  dpmsf/powertools")
        for kind in ("apigw_v1", "apigw_v2"):
            for case in ("sync", "async"):
                row = {}
                for name, import_line in HANDLERS.items():
                    code = CHILD.format(
                        root=str(ROOT),
                        tests=str(ROOT / "tests"),
                        bench=str(ROOT / "bench"),
                        import_line=import_line,
                        kind=kind,
                        case=case,
                    )
                    row[name] = per_invoke(code, args.calls, env)
                label = f"{kind[-2:]} GET {case}"
                cells = "".join(f"{row[n]:22,.0f}" for n in names)
                r1 = row["dpmsf"] / row["fastapi+mangum"]
                r2 = row["dpmsf"] / row["powertools resolver"]
                print(f"{label:16}{cells}   {r1:12.2f}x  {r2:15.2f}x", flush=True)
        print("targets: dpmsf <= 0.25x fastapi+mangum, at or below the Powertools resolver")
    return 0


if __name__ == "__main__":
    sys.exit(main())
