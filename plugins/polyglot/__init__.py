"""Endpoints written in other languages: Node, a shell script and Java, each a program in this folder.

Each program reads ``{"args": [...], "kwargs": {...}}`` on stdin and prints JSON on stdout:

GET  /rest/services/hello-node/?name=Ada       -> {"results": {"hello": "Ada", "args": [], "lang": "node", ...}}
POST /rest/services/hello-shell/  {"args": [1, 2], "name": "Ada"}
GET  /rest/services/polyglot/hello-java/?name=Ada   (compiled with javac on the first call; 502 without a JDK)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dpmsf_core import expose
from dpmsf_core.commands import build_cache, run_program
from dpmsf_core.errors import BadGateway
from dpmsf_core.private_dir import PrivateDir

_HERE = Path(__file__).resolve().parent

hello_node = expose.command(API="hello-node", argv=["node", "hello.js"], method="GET|POST", timeout=10)

hello_shell = expose.command(API="hello-shell", argv=["sh", "greet.sh"], method="GET|POST", timeout=5)


_caches: dict[str, PrivateDir] = {}  # by temp folder: each keeps its own fallback if the shared one is refused


async def _java_classes() -> Path:
    """Compile Hello.java once per source version into a cache folder (under /tmp, writable on Lambda too) that
    only this server can write: classes another user planted there would run as the server."""
    source = _HERE / "Hello.java"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cache = _caches.get(tempfile.gettempdir())
    if cache is None:
        cache = _caches[tempfile.gettempdir()] = build_cache("dpmsf-java")
    target = cache.get() / digest
    if (target / "Hello.class").is_file():
        return target
    missing = [tool for tool in ("javac", "java") if shutil.which(tool) is None]
    if missing:
        raise BadGateway(f"API 'hello-java' needs a JDK: {' and '.join(missing)} not found on PATH.")
    build = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=target.parent))  # concurrent first calls each build
    try:
        await run_program(["javac", "-d", str(build), str(source)], timeout=60, name="hello-java (javac)")
        try:
            os.rename(build, target)  # atomic: others see either no folder or a complete one
        except OSError:
            if not (target / "Hello.class").is_file():
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


@expose.endpoint(API="hello-java", method="GET|POST")
async def hello_java(*args: Any, **kwargs: Any) -> Any:
    """Run Hello.java (compiled on first call) with the command rules: JSON on stdin, JSON from stdout."""
    classes = await _java_classes()
    result = await run_program(
        ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", str(classes), "Hello"],
        {"args": list(args), "kwargs": kwargs},
        timeout=20,
        name="hello-java",
    )
    return result.parsed
