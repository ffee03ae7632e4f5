"""Hot reload over a real server: add, edit, break, fix, delete a plugin while it serves."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx


def plugin(value: str) -> str:
    return f"""
from dpmsf_core import expose

@expose.endpoint(method="GET", API="live")
def live():
    return {value!r}
"""


def test_add_edit_break_fix_delete(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    client = serve(make_app(plugin_dir.path))
    assert client.get("/rest/services/live/").status_code == 404

    plugin_dir.write("live.py", plugin("one"))
    assert client.get("/rest/services/live/").json() == {"results": "one"}  # the very next request

    plugin_dir.write("live.py", plugin("two"))
    assert client.get("/rest/services/live/").json() == {"results": "two"}

    plugin_dir.write("live.py", "def broken(:\n")
    assert client.get("/rest/services/live/").json() == {"results": "two"}  # last good version keeps serving
    module = next(m for m in client.get("/rest/services/__dir__/").json()["modules"] if m["module"] == "live")
    assert module["status"] == "stale"
    assert "live.py, line 1: syntax error" in module["error"]

    plugin_dir.write("live.py", plugin("three"))
    assert client.get("/rest/services/live/").json() == {"results": "three"}
    module = next(m for m in client.get("/rest/services/__dir__/").json()["modules"] if m["module"] == "live")
    assert module["status"] == "loaded" and module["error"] is None

    plugin_dir.remove("live.py")
    assert client.get("/rest/services/live/").status_code == 404


def test_edit_in_place_is_seen_by_the_periodic_sweep(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    target = plugin_dir.write("inplace.py", plugin("before"))
    old = time.time() - 60
    os.utime(plugin_dir.path, (old, old))  # the folder looks untouched for a while
    client = serve(make_app(plugin_dir.path))
    assert client.get("/rest/services/live/").json() == {"results": "before"}
    with open(target, "w", encoding="utf-8") as fh:  # rewrite the same inode: the folder's mtime does not change
        fh.write(plugin("after, longer"))
    os.utime(plugin_dir.path, (old, old))
    deadline = time.time() + 5
    while client.get("/rest/services/live/").json() != {"results": "after, longer"}:
        assert time.time() < deadline, "an in-place edit was not picked up"
        time.sleep(0.1)


def test_in_flight_request_finishes_on_its_version(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write(
        "slow.py",
        """
import asyncio
from dpmsf_core import expose

@expose.endpoint(method="GET", API="slow")
async def slow():
    await asyncio.sleep(0.5)
    return "old"
""",
    )
    client = serve(make_app(plugin_dir.path))
    import threading

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=client.get("/rest/services/slow/").json()))
    thread.start()
    time.sleep(0.15)
    plugin_dir.write(
        "slow.py",
        """
from dpmsf_core import expose

@expose.endpoint(method="GET", API="slow")
async def slow():
    return "new"
""",
    )
    assert client.get("/rest/services/slow/").json() == {"results": "new"}
    thread.join()
    assert result["r"] == {"results": "old"}


def test_package_plugin_with_relative_import(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("pkg/helpers.py", "def double(x):\n    return 2 * int(x)\n")
    plugin_dir.write(
        "pkg/__init__.py",
        """
from dpmsf_core import expose
from .helpers import double

@expose.endpoint(method="GET", API="double")
def twice(*args, **kwargs):
    return double(kwargs["parm_1"])
""",
    )
    client = serve(make_app(plugin_dir.path))
    assert client.get("/rest/services/double/21/").json() == {"results": 42}
    assert client.get("/rest/services/pkg/double/4/").json() == {"results": 8}
    plugin_dir.write("pkg/helpers.py", "def double(x):\n    return 3 * int(x)\n")  # a file inside the package
    deadline = time.time() + 5
    while client.get("/rest/services/double/1/").json() != {"results": 3}:
        assert time.time() < deadline
        time.sleep(0.1)
