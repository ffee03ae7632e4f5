"""``dpmsf cost LOGFILE``: per-endpoint invocations, duration, GB-seconds and an estimated price, read from the EMF
metric lines the Lambda handler writes (``aws/observability.py``), as CloudWatch Logs, ``sam logs``,
``sam local`` or serverless-offline print them. The figure the FaaS template asks for: the cost of each endpoint.

A line counts when it holds an EMF object (``{"_aws": ...}``, anywhere in the line: a timestamp or request id
in front is skipped) with an ``endpoint`` dimension. Lines written before ``GBSeconds`` existed are priced from
``Latency`` and ``--memory-mb``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

GB_SECOND_PRICE = 0.0000166667  # USD, x86, us-east-1, first pricing tier
REQUEST_PRICE = 0.20 / 1_000_000  # USD per request


@dataclass
class EndpointCost:
    """One endpoint's totals over the log."""

    endpoint: str
    invocations: int = 0
    errors: int = 0
    duration_ms: float = 0.0
    gb_seconds: float = 0.0

    def price(self, gb_second_price: float = GB_SECOND_PRICE, request_price: float = REQUEST_PRICE) -> float:
        return self.gb_seconds * gb_second_price + self.invocations * request_price


def _total(value: Any) -> float:
    """EMF values are a number or a list of them (Powertools writes ``[1.0]``)."""
    if isinstance(value, list):
        return sum(float(v) for v in value if isinstance(v, int | float))
    return float(value) if isinstance(value, int | float) else 0.0


def _emf_objects(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    decoder = json.JSONDecoder()
    for line in lines:
        start = line.find('{"_aws"')
        if start < 0:
            continue
        try:
            doc, _ = decoder.raw_decode(line, start)
        except ValueError:
            continue  # a truncated line: skipped, as CloudWatch would
        if isinstance(doc, dict):
            yield doc


def endpoint_costs(lines: Iterable[str], memory_mb: int = 512) -> list[EndpointCost]:
    """Totals per endpoint, most expensive first (then by name)."""
    costs: dict[str, EndpointCost] = {}
    for doc in _emf_objects(lines):
        label = doc.get("endpoint")
        if not isinstance(label, str) or "Requests" not in doc:
            continue
        cost = costs.setdefault(label, EndpointCost(label))
        cost.invocations += int(_total(doc["Requests"]))
        cost.errors += int(_total(doc.get("Errors", 0)))
        duration = _total(doc.get("Latency", 0))
        cost.duration_ms += duration
        cost.gb_seconds += _total(doc["GBSeconds"]) if "GBSeconds" in doc else duration / 1000 * memory_mb / 1024
    return sorted(costs.values(), key=lambda c: (-c.gb_seconds, c.endpoint))


def print_table(costs: list[EndpointCost], out: TextIO, gb_second_price: float, request_price: float) -> None:
    head = ("endpoint", "invocations", "errors", "duration ms", "mean ms", "GB-seconds", "est. USD")
    rows = [
        (
            c.endpoint,
            str(c.invocations),
            str(c.errors),
            f"{c.duration_ms:.3f}",
            f"{c.duration_ms / c.invocations:.3f}" if c.invocations else "-",
            f"{c.gb_seconds:.6f}",
            f"{c.price(gb_second_price, request_price):.10f}",
        )
        for c in costs
    ]
    total = EndpointCost(
        "TOTAL",
        sum(c.invocations for c in costs),
        sum(c.errors for c in costs),
        sum(c.duration_ms for c in costs),
        sum(c.gb_seconds for c in costs),
    )
    rows.append(
        (
            total.endpoint,
            str(total.invocations),
            str(total.errors),
            f"{total.duration_ms:.3f}",
            f"{total.duration_ms / total.invocations:.3f}" if total.invocations else "-",
            f"{total.gb_seconds:.6f}",
            f"{total.price(gb_second_price, request_price):.10f}",
        )
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
        print("  ".join(cells).rstrip(), file=out)


def cmd_cost(args: argparse.Namespace) -> int:
    try:
        handle = sys.stdin if args.logfile == "-" else open(args.logfile, encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"dpmsf: cannot read {args.logfile!r}: {exc.strerror}", file=sys.stderr)
        return 2
    with handle:
        costs = endpoint_costs(handle, args.memory_mb)
    if args.json:
        docs = [{**asdict(c), "usd": c.price(args.gb_second_price, args.request_price)} for c in costs]
        print(json.dumps(docs, indent=2))
        return 0
    if not costs:
        print(f"dpmsf: no EMF metric lines with an endpoint in {args.logfile!r}", file=sys.stderr)
        return 1
    print_table(costs, sys.stdout, args.gb_second_price, args.request_price)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("cost", help="per-endpoint cost from a log of the Lambda handler's EMF metrics",
                       formatter_class=defaults)  # fmt: skip
    p.add_argument(
        "logfile", help="a log file with EMF lines (CloudWatch export, sam logs, serverless-offline); - reads stdin"
    )
    p.add_argument("--memory-mb", type=int, default=512, help="memory for lines that carry no GBSeconds")
    p.add_argument("--gb-second-price", type=float, default=GB_SECOND_PRICE, help="USD per GB-second")
    p.add_argument("--request-price", type=float, default=REQUEST_PRICE, help="USD per request")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_cost)
