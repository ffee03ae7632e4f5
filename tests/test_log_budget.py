"""A tenant's output and errors cost the operator's logs: each tenant has a byte budget per second (F24 of the
attacker's pass: 8 kB a call, 3-4 MB/s from two client threads, on the operator's CloudWatch bill)."""

from __future__ import annotations

import time

from dpmsf_core.sandbox.logbudget import LogBudget
from dpmsf_core.store.validation import check_room
from dpmsf_core.tenancy.quotas import QuotaExceeded, Quotas

FLOODER = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
QUIET = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def test_a_flooding_tenant_logs_at_most_its_budget_and_another_tenant_is_untouched() -> None:
    budget = LogBudget(bytes_per_second=1000, burst=4000)
    line = "x" * 1000
    started = time.monotonic()
    admitted = sum(1 for _ in range(1000) if budget.admit(FLOODER, line) is not None)
    elapsed = time.monotonic() - started
    assert admitted <= 4 + int(elapsed * 1) + 1  # the burst, plus what refilled while the loop ran
    assert budget.admit(QUIET, "hello") == "hello"


def test_the_first_line_after_a_flood_says_how_many_were_dropped() -> None:
    budget = LogBudget(bytes_per_second=100_000, burst=10)
    assert budget.admit(FLOODER, "0123456789") == "0123456789"
    assert budget.admit(FLOODER, "0123456789") is None
    assert budget.admit(FLOODER, "0123456789") is None
    time.sleep(0.01)  # 1,000 bytes refilled, capped at the burst
    noted = budget.admit(FLOODER, "0123456789")
    assert noted is not None and noted.startswith("0123456789") and "2 earlier line(s)" in noted


def test_a_store_quota_refusal_names_the_quota_not_the_tenant() -> None:
    try:
        check_room(FLOODER, Quotas(store_mb=1), used=1024 * 1024, delta=10)
    except QuotaExceeded as exc:
        assert exc.quota == "store_mb" and exc.status == 413
        assert FLOODER not in exc.detail and FLOODER not in str(exc.problem())
    else:
        raise AssertionError("a write past store_mb was allowed")
