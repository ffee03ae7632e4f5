"""The WebAssembly sandbox: tenant functions run, and every way out a hostile tenant tried finds nothing.

Each attack asserts its effect on the host (no file written, no secret in the answer, the victim process alive,
the pool still serving), not only the status code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsf_core.context import RequestInfo, reset_current, set_current
from dpmsf_core.errors import Forbidden, FunctionFailed, GatewayTimeout, HTTPError, PayloadTooLarge, ServiceUnavailable
from dpmsf_core.sandbox import SandboxLimits, SandboxPool, SandboxUnavailable, runtime
from dpmsf_core.sandbox.loader import serve_store
from dpmsf_core.sandbox.usage import CallUsage

pytestmark = pytest.mark.slow

PLUGIN = Path(__file__).parent / "plugins" / "tenant_sandbox" / "escapes.py"
SOURCE = PLUGIN.read_text(encoding="utf-8")
TENANT = "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
OTHER = "0f0e0d0c-0b0a-4908-8706-050403020100"
LIMITS = SandboxLimits(cpu_seconds=0.5, wall_seconds=1.5, memory_mb=128)


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(size=2, limits=LIMITS, store=serve_store) as p:
        yield p


def call(pool: SandboxPool, function: str, *args: Any, tenant: str = TENANT, **kwargs: Any) -> Any:
    return pool.call_sync(
        source=SOURCE, path=str(PLUGIN), function=function, args=list(args), kwargs=kwargs, tenant=tenant
    )


def still_serving(pool: SandboxPool) -> None:
    assert call(pool, "add", 40, 2) == 42
    assert call(pool, "add", 1, 1, tenant=OTHER) == 2


# -- the programming model --------------------------------------------------------------------------------------


def test_returns_the_value(pool: SandboxPool) -> None:
    assert call(pool, "add", 2, b=3) == 5


def test_stdlib_types_come_back_as_json(pool: SandboxPool) -> None:
    result = call(pool, "rich")
    assert result == {
        "point": {"x": 1, "when": "2024-05-06"},
        "price": 2.5,
        "id": "00000000-0000-0000-0000-000000000001",
        "doc": {"k": [1, 2]},
        "pick": result["pick"],
    }
    assert 1 <= result["pick"] <= 6


def test_async_function(pool: SandboxPool) -> None:
    assert call(pool, "async_add", 1, 2) == 3


def test_async_api_serves_concurrent_calls(pool: SandboxPool) -> None:
    async def many() -> list[Any]:
        return await asyncio.gather(
            *(
                pool.call(source=SOURCE, path=str(PLUGIN), function="add", args=[i, i], kwargs={}, tenant=TENANT)
                for i in range(6)
            )
        )

    assert asyncio.run(many()) == [0, 2, 4, 6, 8, 10]


def test_exception_is_500_with_its_message(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed) as info:
        call(pool, "fail")
    assert (info.value.status, info.value.detail) == (500, "ValueError: bad input: 42")


def test_http_error_keeps_its_status(pool: SandboxPool) -> None:
    with pytest.raises(HTTPError) as info:
        call(pool, "not_found")
    assert (info.value.status, info.value.detail) == (404, "no such task")


def test_result_over_the_limit_is_413(pool: SandboxPool) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        call(pool, "huge_result")
    assert info.value.status == 413
    assert "2000002 bytes, over the sandbox limit of 1000000" in info.value.detail
    assert call(pool, "add", 1) == 1


@pytest.mark.parametrize(
    ("function", "detail"),
    [("not_json", "not JSON-encodable"), ("no_such_function", "no function 'no_such_function'")],
)
def test_results_the_server_cannot_use_fail(pool: SandboxPool, function: str, detail: str) -> None:
    with pytest.raises(FunctionFailed, match=detail):
        call(pool, function)
    assert call(pool, "add", 1) == 1


def test_module_state_persists_in_a_warm_guest(pool: SandboxPool) -> None:
    first = call(pool, "counter")
    assert call(pool, "counter") in (first + 1, 1)  # 1 only if the other guest answered


def test_printed_output_does_not_corrupt_the_protocol(pool: SandboxPool) -> None:
    assert call(pool, "talk") == "said"


def test_new_source_for_the_same_path_is_recompiled(pool: SandboxPool) -> None:
    path = "/plugins/tenant_x/versioned.py"
    for version in (1, 2):
        source = f"def version():\n    return {version}\n"
        assert pool.call_sync(source=source, path=path, function="version", args=[], kwargs={}) == version


def test_request_info_is_injected_without_credentials(pool: SandboxPool) -> None:
    info = RequestInfo("POST", "/rest/services/whoami", {"authorization": "Bearer secret"}, {}, b"")
    token = set_current(info)
    try:
        from dpmsf_core.sandbox.loader import _request_dict

        result = pool.call_sync(
            source=SOURCE,
            path=str(PLUGIN),
            function="whoami",
            args=[],
            kwargs={},
            tenant=TENANT,
            request=_request_dict(info),
            inject=["request"],
        )
    finally:
        reset_current(token)
    assert result == {"method": "POST", "same": True, "auth": None}


def test_store_is_scoped_to_the_calling_tenant(pool: SandboxPool, tmp_path: Path) -> None:
    from dpmsf_core import store

    with store.using(store.SQLiteStore(tmp_path / "store.db")) as backend:
        assert call(pool, "remember", "k", "mine") == {"id": "k", "value": "mine"}
        assert call(pool, "recall", "k") == {"id": "k", "value": "mine"}
        assert call(pool, "recall", "k", tenant=OTHER) is None
        assert store.Collection("notes", tenant=TENANT).get("k") == {"id": "k", "value": "mine"}
        assert store.Collection("notes", tenant=OTHER).get("k") is None
        with pytest.raises(HTTPError) as info:
            call(pool, "remember", "", "bad id")
        assert info.value.status == 422
    assert backend.get(TENANT, "notes", "k") == {"id": "k", "value": "mine"}  # the bound store, no other


# -- the hostile tenant ---------------------------------------------------------------------------------------------


def test_no_host_file_can_be_read(pool: SandboxPool) -> None:
    with pytest.raises(Forbidden, match=r"sandbox refused: open\(\)"):
        call(pool, "read_passwd")
    for function in ("read_passwd_os", "list_root"):
        with pytest.raises(FunctionFailed, match="FileNotFoundError") as info:
            call(pool, function)
        assert "root:" not in json.dumps(info.value.problem("r", None))
    still_serving(pool)


def test_the_server_environment_cannot_be_read(pool: SandboxPool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPMSF_SECRET_CANARY", "do-not-leak")
    with SandboxPool(size=1, limits=LIMITS) as fresh:  # started after the secret was set
        assert call(fresh, "environment") == {}
        with pytest.raises(FunctionFailed) as info:
            call(fresh, "read_server_environ", os.getpid())
    assert "do-not-leak" not in json.dumps(info.value.problem("r", None))


def test_nothing_is_written_outside(pool: SandboxPool, tmp_path: Path) -> None:
    marker = tmp_path / "escaped"
    for function, args in (("write_outside", [str(marker)]), ("write_outside", ["/tmp/escaped"]), ("fill_disk", [])):
        with pytest.raises(FunctionFailed, match="FileNotFoundError"):
            call(pool, function, *args)
    assert not marker.exists()
    assert not Path("/tmp/escaped").exists()
    assert not Path("big.bin").exists()


@pytest.mark.parametrize("function", ["import_os", "dunder_import", "importlib_import"])
def test_imports_outside_the_allow_list_are_refused(pool: SandboxPool, function: str) -> None:
    with pytest.raises(Forbidden, match="not in the sandbox's import allow-list") as info:
        call(pool, function)
    assert info.value.status == 403
    still_serving(pool)


def test_no_process_can_be_started_or_signalled(pool: SandboxPool, tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        marker = tmp_path / "ran"
        with pytest.raises(FunctionFailed, match="AttributeError"):
            call(pool, "shell", f"touch {marker}")
        assert call(pool, "signal_process", victim.pid) == "no way to signal a process"
        assert call(pool, "signal_process", os.getpid()) == "no way to signal a process"
        assert call(pool, "privileged_calls") == []
        assert victim.poll() is None
        assert not marker.exists()
    finally:
        victim.kill()
        victim.wait()
    still_serving(pool)


def test_a_fresh_posix_module_reaches_nothing(pool: SandboxPool) -> None:
    with pytest.raises((FunctionFailed, Forbidden)) as info:
        call(pool, "fresh_posix")
    assert "root" not in str(info.value.detail)
    still_serving(pool)


@pytest.mark.parametrize("function", ["connect", "connect_raw"])
def test_no_network(pool: SandboxPool, function: str) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        with pytest.raises((Forbidden, FunctionFailed)):
            call(pool, function, server.getsockname()[1])
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    still_serving(pool)


def test_no_threads(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="can't start new thread"):
        call(pool, "background_thread")


def test_a_busy_loop_hits_the_cpu_limit_and_the_guest_is_replaced() -> None:
    used: list[CallUsage] = []
    limits = SandboxLimits(cpu_seconds=0.5, wall_seconds=10, memory_mb=128)  # CPU, not wall: a busy host is slower
    with SandboxPool(size=1, limits=limits, on_call=used.append) as own:
        still_serving(own)
        before = own.replaced
        with pytest.raises(GatewayTimeout, match="CPU time limit of 0.5 s") as info:
            call(own, "spin")
        assert info.value.status == 504
        assert used[-1].cpu_seconds < limits.cpu_seconds + 0.25
        assert own.replaced == before + 1
        still_serving(own)


def test_store_requests_do_not_buy_more_cpu(tmp_path: Path) -> None:
    from dpmsf_core import store

    used: list[CallUsage] = []
    limits = SandboxLimits(cpu_seconds=0.5, wall_seconds=20, memory_mb=128)
    with store.using(store.SQLiteStore(tmp_path / "store.db")):
        with SandboxPool(size=1, limits=limits, store=serve_store, on_call=used.append) as own:
            with pytest.raises(GatewayTimeout, match="CPU time limit of 0.5 s"):
                call(own, "spin_between_store_calls")
            assert used[-1].cpu_seconds < limits.cpu_seconds + 0.25  # never the 6 s of work
            assert call(own, "add", 40, 2) == 42


def test_sleeping_past_the_wall_limit_is_killed(pool: SandboxPool) -> None:
    started = time.monotonic()
    with pytest.raises(GatewayTimeout, match="time limit of 0.3 s"):
        pool.call_sync(
            source=SOURCE, path=str(PLUGIN), function="nap", args=[30], kwargs={}, timeout=0.3, tenant=TENANT
        )
    assert time.monotonic() - started < 1.0
    assert call(pool, "nap", 0) == "rested"


def test_gigabytes_hit_the_memory_limit(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="memory limit of 128 MB") as info:
        call(pool, "gigabytes")
    assert info.value.status == 500
    still_serving(pool)


def test_deep_recursion_is_the_tenants_error(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="RecursionError"):
        call(pool, "deep_recursion")
    still_serving(pool)


def test_tampering_with_the_guest_program_breaks_only_that_guest(pool: SandboxPool) -> None:
    theirs = call(pool, "identity", tenant=OTHER)
    before = pool.replaced
    with pytest.raises(FunctionFailed, match="ended its sandbox"):
        call(pool, "frame_walk")  # the guest program cannot answer any more: it ends, and is replaced
    assert pool.replaced == before + 1
    assert call(pool, "add", 1) == 1
    assert call(pool, "identity", tenant=OTHER) == theirs  # the other tenant's warm guest was untouched


def test_a_forged_frame_is_a_protocol_error(pool: SandboxPool) -> None:
    with pytest.raises(FunctionFailed, match="broke the sandbox protocol"):
        call(pool, "forge_frame")
    still_serving(pool)


def test_tenants_never_share_a_guest(pool: SandboxPool) -> None:
    mine = call(pool, "identity")
    theirs = call(pool, "identity", tenant=OTHER)
    assert mine != theirs
    assert call(pool, "identity", tenant=OTHER) == theirs
    assert call(pool, "identity") == mine


def test_workers_are_hardened() -> None:
    with SandboxPool(size=1, limits=LIMITS) as fresh:
        call(fresh, "add", 1)
        (pid,) = fresh.workers()
        status = Path(f"/proc/{pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status
        assert "Seccomp:\t2" in status  # a filter is installed
        assert Path(f"/proc/{pid}/environ").read_bytes() == b""
        if fresh.run_as is not None:
            assert f"Uid:\t{fresh.run_as}" in status
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert "Max core file size        0" in limits


def test_closed_pool_kills_workers_and_refuses_calls() -> None:
    pool = SandboxPool(size=1, limits=LIMITS)
    call(pool, "add", 1)
    (pid,) = pool.workers()
    pool.close()
    with pytest.raises(ServiceUnavailable):
        call(pool, "add", 1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, signal.SIG_DFL)


# -- the interpreter binary -----------------------------------------------------------------------------------------


def test_a_tampered_interpreter_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / runtime.WASM_FILE
    fake.write_bytes(b"\0asm" + b"\0" * 100)
    with pytest.raises(SandboxUnavailable, match="not the pinned"):
        runtime.read_verified_wasm(fake)


def test_the_shipped_interpreter_matches_the_pin() -> None:
    assert len(runtime.read_verified_wasm()) == runtime.WASM_SIZE


def test_a_tampered_compiled_module_is_not_loaded(tmp_path: Path) -> None:
    compiled = runtime.compiled_module(str(tmp_path / "cache"))
    copy = tmp_path / "copy" / "python.cwasm"
    copy.parent.mkdir(mode=0o755)
    copy.write_bytes(Path(compiled.path).read_bytes())
    record = Path(compiled.path + ".json").read_text()
    Path(str(copy) + ".json").write_text(record)
    assert runtime._verified(copy, check_owner=True) is not None
    with open(copy, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x90\x90")
    assert runtime._verified(copy, check_owner=True) is None
    copy.write_bytes(Path(compiled.path).read_bytes())
    copy.chmod(0o666)
    assert runtime._verified(copy, check_owner=True) is None  # others could have written it


SECCOMP_CHILD = """
import os, socket, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from dpmsf_core.sandbox import seccomp
assert seccomp.install()
outcome = {}
for name, attempt in [
    ("socket", lambda: socket.socket()),
    ("fork", os.fork),
    ("exec", lambda: subprocess.run(["touch", sys.argv[2]])),
    ("kill", lambda: os.kill(int(sys.argv[3]), 9)),
]:
    try:
        attempt()
        outcome[name] = "allowed"
    except PermissionError:
        outcome[name] = "refused"
thread = threading.Thread(target=lambda: outcome.update(thread="ran"))
thread.start()
thread.join()
print(sorted(outcome.items()))
"""


def test_the_worker_seccomp_filter_refuses_what_a_guest_host_never_needs(tmp_path: Path) -> None:
    marker = tmp_path / "exec-ran"
    victim = subprocess.Popen(["sleep", "30"])
    try:
        root = str(Path(__file__).resolve().parent.parent)
        out = subprocess.run(
            [sys.executable, "-I", "-c", SECCOMP_CHILD, root, str(marker), str(victim.pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert out.strip() == str(
            [("exec", "refused"), ("fork", "refused"), ("kill", "refused"), ("socket", "refused"), ("thread", "ran")]
        )
        assert not marker.exists()
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_start_that_ran_out_of_time_is_tried_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpmsf_core.sandbox import pool as pool_module
    from dpmsf_core.sandbox.process import StartOutOfTime

    real, attempts = pool_module.WorkerProcess, []

    def flaky(*args: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:  # what a busy host can do to the first start
            raise StartOutOfTime("sandbox worker did not start (workerdied, status 124)")
        return real(*args)

    monkeypatch.setattr(pool_module, "WorkerProcess", flaky)
    with SandboxPool(size=1, limits=LIMITS) as fresh:
        assert call(fresh, "add", 40, 2) == 42
    assert len(attempts) == 2
