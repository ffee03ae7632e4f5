"""The sandbox runs tenant functions in worker processes and refuses every escape, leaving the pool usable."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.errors import Forbidden, FunctionFailed, GatewayTimeout, HTTPError, ServiceUnavailable
from dpmsf_core.sandbox import SandboxLimits, SandboxPool

PLUGIN = Path(__file__).parent / "plugins" / "tenant_sandbox" / "escapes.py"
SOURCE = PLUGIN.read_text(encoding="utf-8")
TENANT = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
LIMITS = SandboxLimits(cpu_seconds=0.5, wall_seconds=1.5, memory_mb=256)


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(size=2, limits=LIMITS) as p:
        yield p


def call(pool: SandboxPool, function: str, *args: Any, tenant: str = TENANT, **kwargs: Any) -> Any:
    return pool.call_sync(
        source=SOURCE, path=str(PLUGIN), function=function, args=list(args), kwargs=kwargs, tenant=tenant
    )


def test_returns_the_value(pool: SandboxPool) -> None:
    assert call(pool, "add", 2, b=3) == 5


def test_stdlib_types_come_back_as_json(pool: SandboxPool) -> None:
    assert call(pool, "rich") == {
        "point": {"x": 1, "when": "2024-05-06"},
        "price": 2.5,
        "id": "00000000-0000-0000-0000-000000000001",
        "doc": {"k": [1, 2]},
        "pick": call(pool, "rich")["pick"],
    }


def test_async_function(pool: SandboxPool) -> None:
    assert call(pool, "async_add", 1, 2) == 3


def test_async_api_runs_calls_concurrently(pool: SandboxPool) -> None:
    async def many() -> list[Any]:
        return await asyncio.gather(
            *(
                pool.call(source=SOURCE, path=str(PLUGIN), function="add", args=[i, i], kwargs={}, tenant=TENANT)
                for i in range(6)
            )
        )

    assert asyncio.run(many()) == [0, 2, 4, 6, 8, 10]


def test_exception_is_function_failed_without_traceback(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed) as info:
        call(pool, "fail")
    assert info.value.status == 500
    assert info.value.detail == "ValueError: bad input: 42"


def test_http_error_keeps_its_status(pool: SandboxPool) -> None:
    with pytest.raises(HTTPError) as info:
        call(pool, "not_found")
    assert (info.value.status, info.value.detail) == (404, "no such task")


@pytest.mark.parametrize(
    ("function", "detail"),
    [
        ("not_json", "not JSON-encodable"),
        ("huge_result", "over the sandbox limit"),
        ("no_such_function", "no function 'no_such_function'"),
    ],
)
def test_results_the_server_cannot_use_fail(pool: SandboxPool, function: str, detail: str) -> None:
    with pytest.raises(FunctionFailed, match=detail):
        call(pool, function)
    assert call(pool, "add", 1) == 1


def test_module_state_persists_in_a_warm_worker(pool: SandboxPool) -> None:
    first = call(pool, "counter")
    assert call(pool, "counter") in (first + 1, 1)  # 1 only if the other worker answered


def test_printed_output_does_not_corrupt_the_protocol(pool: SandboxPool) -> None:
    assert call(pool, "talk") == "said"


def test_new_source_for_the_same_path_is_recompiled(pool: SandboxPool) -> None:
    path = "/plugins/tenant_x/versioned.py"
    for version in (1, 2):
        source = f"def version():\n    return {version}\n"
        assert pool.call_sync(source=source, path=path, function="version", args=[], kwargs={}) == version


ESCAPES = [
    ("read_passwd", (), "sandbox refused: open('/etc/passwd')"),
    ("os_system", (), "sandbox refused: import 'os'"),
    ("dunder_import", (), "sandbox refused: import 'subprocess'"),
    ("subclasses_system", (), "sandbox refused: os.system"),
    ("module_attr_system", (), "sandbox refused: os.system"),
    ("module_attr_fork", (), "sandbox refused: os.fork"),
    ("write_outside", (), "sandbox refused: open('/tmp/dpmsf-sandbox-escaped'"),
    ("frame_walk", (), "sandbox refused: access to traceback.tb_frame"),
    ("code_object", (), "sandbox refused: access to function.__code__"),
    ("real_eval", (), "sandbox refused: eval()"),
    ("background_thread", (), "sandbox refused: starting a thread"),
    ("swallow_refusal", (), "sandbox refused: import 'os'"),
]


@pytest.mark.parametrize(("function", "args", "detail"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_is_refused_and_the_worker_replaced(
    pool: SandboxPool, function: str, args: tuple[Any, ...], detail: str
) -> None:
    before = pool.replaced
    with pytest.raises(Forbidden) as info:
        call(pool, function, *args)
    assert info.value.status == 403
    assert info.value.detail.startswith(detail), info.value.detail
    assert pool.replaced == before + 1
    assert call(pool, "add", 40, 2) == 42
    assert not os.path.exists("/tmp/dpmsf-sandbox-escaped")


def test_network_connection_is_refused(pool: SandboxPool) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        with pytest.raises(Forbidden, match="sandbox refused: import 'socket'"):
            call(pool, "connect", server.getsockname()[1])
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    assert call(pool, "add", 1, 1) == 2


def test_writing_inside_the_private_temp_dir_is_allowed(pool: SandboxPool) -> None:
    assert call(pool, "write_inside") == 2


def test_server_environment_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPMSF_SECRET_CANARY", "do-not-leak")
    with SandboxPool(size=1, limits=LIMITS) as fresh:  # started after the secret was set
        env = call(fresh, "environment")
    assert "DPMSF_SECRET_CANARY" not in env
    assert "do-not-leak" not in str(env)
    assert set(env) <= {"LANG", "LC_CTYPE"}


def test_busy_loop_hits_the_cpu_limit(pool: SandboxPool) -> None:
    started = time.monotonic()
    with pytest.raises(GatewayTimeout, match="CPU time limit"):
        call(pool, "spin")
    assert time.monotonic() - started < LIMITS.wall_seconds
    assert call(pool, "add", 2, 2) == 4


def test_sleeping_past_the_wall_limit_is_killed(pool: SandboxPool) -> None:
    started = time.monotonic()
    with pytest.raises(GatewayTimeout, match="time limit of 0.3 s"):
        pool.call_sync(
            source=SOURCE, path=str(PLUGIN), function="nap", args=[30], kwargs={}, timeout=0.3, tenant=TENANT
        )
    assert time.monotonic() - started < 1.0
    assert call(pool, "nap", 0) == "rested"


def test_ten_gigabytes_hits_the_memory_limit(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="memory limit of 256 MB"):
        call(pool, "ten_gigabytes")
    assert call(pool, "add", 3, 3) == 6


def test_refusal_while_loading_the_module(pool: SandboxPool) -> None:
    source = "import os\n\ndef f():\n    return 1\n"
    with pytest.raises(Forbidden, match="import 'os'"):
        pool.call_sync(source=source, path="/plugins/tenant_x/loader.py", function="f", args=[], kwargs={})


def test_module_that_fails_to_load(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="failed to load: ZeroDivisionError"):
        pool.call_sync(source="x = 1 / 0\n", path="/plugins/tenant_x/broken.py", function="f", args=[], kwargs={})


def test_tenants_never_share_a_worker(pool: SandboxPool) -> None:
    mine = call(pool, "pid")
    theirs = call(pool, "pid", tenant="another-tenant")
    assert mine != theirs
    assert call(pool, "pid", tenant="another-tenant") == theirs
    assert call(pool, "add", 1, 1) == 2


def test_closed_pool_kills_workers_and_refuses_calls() -> None:
    pool = SandboxPool(size=1, limits=LIMITS)
    pid = call(pool, "pid")
    pool.close()
    with pytest.raises(ServiceUnavailable):
        call(pool, "add", 1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
