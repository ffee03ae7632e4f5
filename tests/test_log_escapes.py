"""Text logs escape control characters from requests and tenants: no forged line, no terminal escape run.

Attacks over real HTTP: a path with ``%0a`` followed by a fake log line, an ``X-Request-Id`` that is not one, and a
tenant function printing newlines and ``ESC[2J`` (clear screen) to its output, which the server logs.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpmsf_core.logconfig import LocalFormatter, escape_controls
from dpmsf_core.tenancy.tokens import generate_key, mint

ADMIN = "00000000-0000-4000-8000-00000000000a"
MALLORY = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
FORGED = "2026-01-01 00:00:00.000 ERROR [-] dpmsf: FORGED admin key leaked"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARNING|ERROR|CRITICAL) \[[^\]]*\] \S+: ")
NOISY = f"""
def noisy():
    print("fine\\n{FORGED}\\x1b[2J\\x1b]0;owned\\x07\\r")
    return 1
"""


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """The text formatter on the root logger, as ``dpmsf serve`` installs it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LocalFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # an earlier test's dictConfig may have disabled, silenced or detached the server's loggers: undo it here
    ours = [logging.getLogger("dpmsf")] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("dpmsf.") and isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.level, logger.propagate, logger.disabled) for logger in ours]
    for logger in ours:
        logger.setLevel(logging.NOTSET)
        logger.propagate, logger.disabled = True, False
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for logger, level, propagate, disabled in saved:
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def assert_no_forged_line(text: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(FORGED[:10]) or LINE.match(line) and "FORGED" not in line.split(": ", 1)[0]
        assert "\x1b" not in line and "\r" not in line and "\x07" not in line
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())


def test_a_path_with_a_newline_stays_on_its_line(
    plugin_dir: Any, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client], text_log: io.StringIO
) -> None:
    plugin_dir.write("ok.py", "def ok():\n    return 1\n")
    client = serve(make_app(plugin_dir.path))
    access = logging.getLogger("dpmsf.access")
    access.setLevel(logging.INFO)  # an earlier test in this process may have configured it as Lambda does
    forged = FORGED.replace(" ", "%20")
    answer = client.get(f"/rest/services/ok/x%0a{forged}%1b%5b2J")
    assert answer.status_code < 500
    text = text_log.getvalue()
    deadline = time.monotonic() + 5
    while "dpmsf.access" not in text and time.monotonic() < deadline:  # written after the answer is sent
        time.sleep(0.02)
        text = text_log.getvalue()
    assert "\\n2026-01-01" in text  # shown, escaped, on the request's own line
    assert_no_forged_line(text)


def test_tenant_output_is_escaped(
    plugin_dir: Any,
    make_app: Callable[..., Any],
    serve: Callable[[Any], httpx.Client],
    tmp_path: Path,
    text_log: io.StringIO,
) -> None:
    pytest.importorskip("wasmtime")
    admin_key = generate_key()
    app = make_app(
        plugin_dir.path,
        env={"ADMIN_ID": ADMIN, "DPMSF_ADMIN_KEY": admin_key, "DPMSF_STORE": f"sqlite:///{tmp_path / 's.db'}"},
    )
    app.get_security().tenants.add(name="mallory", tenant_id=MALLORY)
    client = serve(app)
    key = app.get_security().tenants.get(MALLORY).key
    put = client.put(
        "/rest/admin/plugins/noisy", content=NOISY, headers={"authorization": f"Bearer {mint(MALLORY, key)}"}
    )
    assert put.status_code in (200, 201), put.text
    answer = client.get("/rest/services/noisy/", headers={"authorization": f"Bearer {mint(MALLORY, key)}"})
    assert answer.status_code == 200, answer.text
    text = text_log.getvalue()
    assert "output: fine\\n2026-01-01" in text and "\\x1b[2J" in text
    assert_no_forged_line(text)


def test_a_traceback_keeps_its_lines_but_not_a_forged_one(text_log: io.StringIO) -> None:
    try:
        raise ValueError(f"bad id\n{FORGED}\x1b[2J")
    except ValueError:
        logging.getLogger("dpmsf").exception("plugin failed on %s", "/a\nb")
    text = text_log.getvalue()
    assert "Traceback (most recent call last):" in text.splitlines()  # still readable
    assert "plugin failed on /a\\nb" in text
    assert "    " + FORGED + "\\x1b[2J" in text.splitlines()  # the message's second line, indented
    assert_no_forged_line(text)


def test_escape_controls() -> None:
    assert escape_controls("plain text, é, 漢字") == "plain text, é, 漢字"
    assert escape_controls("a\nb\rc\x1b[0m\x00\x7f\x9b\u2028\td") == "a\\nb\\rc\\x1b[0m\\x00\\x7f\\x9b\\u2028\td"
