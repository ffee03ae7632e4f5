"""One exposure rule: a module imported in-process and the same module read with ``ast`` expose the same things."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.loading.registry import Registry
from dpmsf_core.sandbox.reader import inspect_file

CASES = Path(__file__).parent / "plugins" / "parity"


def imported(path: Path) -> dict[str, Any]:
    registry = Registry([str(path.parent)])
    snapshot = registry.load()
    entry = snapshot.modules[path.stem]
    (report,) = [r for r in snapshot.reports if r.real_name == path.stem]
    problems = [p.split(": ", 1)[1] for p in snapshot.problems if p.startswith(str(path))]
    return {
        "endpoints": [
            (ep.func.__name__, ep.api, ep.methods, ep.auth, ep.summary, ep.is_async) for ep in entry.endpoints.values()
        ],
        "events": [(func.__name__, spec.source, spec.match) for spec, func in entry.events],
        "duplicates": problems,
        "status": report.status,
    }


def read(path: Path) -> dict[str, Any]:
    module = inspect_file(str(path))
    return {
        "endpoints": [
            (ep.function, ep.spec.api, ep.spec.methods, ep.spec.auth, ep.spec.summary, ep.is_async)
            for ep in module.endpoints
        ],
        "events": [(ev.function, ev.spec.source, ev.spec.match) for ev in module.events],
        "duplicates": list(module.duplicates),
        "status": "loaded",
    }


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.py")))
def test_import_and_ast_reader_expose_the_same(case: str) -> None:
    path = CASES / f"{case}.py"
    assert imported(path) == read(path)


def test_the_rule_itself_on_the_marked_case() -> None:
    found = read(CASES / "marked.py")
    assert found["endpoints"] == [
        ("one", "first", ("GET", "PUT"), None, "Summary of one.", False),
        ("stacked", "outer", ("GET", "POST"), True, "Stacked: the outermost spec wins.", False),
        ("run_async", "run_async", ("GET", "POST"), None, None, True),
        ("split_methods", "split_methods", ("GET", "POST"), None, None, False),
    ]
    assert found["duplicates"] == ["API 'first' is declared by both one() and two(); one() is kept"]
    assert found["events"] == [("on_order", "sqs", "orders")]


def test_the_rule_itself_on_the_introspected_case() -> None:
    names = [ep[0] for ep in read(CASES / "introspected.py")["endpoints"]]
    assert names == ["public", "also_public", "redefined", "later"]
    (redefined,) = [ep for ep in read(CASES / "introspected.py")["endpoints"] if ep[0] == "redefined"]
    assert redefined[4] == "The second definition."
