"""A headless Chromium driven over the DevTools protocol, just enough to use a page as a person would.

``--dump-dom`` can only read a page; clicking "Try it out" needs the protocol: evaluate a script, type into a
focused field, and record every request the page makes. The network is off except loopback: every host name
resolves to nothing (``--host-resolver-rules``), and ``requests`` lists each URL the page asked for, so a test
can assert that none left 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


class BrowserError(AssertionError):
    """The page did not do what the test waited for; carries what Chromium said."""


class Chromium:
    """One headless Chromium with one page; ``with Chromium(binary, profile) as page: page.open(url)``."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.requests: list[str] = []  # every URL the page requested, in order
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Chromium:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> Chromium:
        args = [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--host-resolver-rules={OFFLINE}",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.profile.mkdir(parents=True, exist_ok=True)
        log = self._stack.enter_context(open(self.profile.parent / "chromium.log", "wb"))  # a pipe could fill up
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start: {self._stderr()}")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        import httpx
        from websockets.sync.client import connect

        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self._ws = self._stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Runtime.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()  # before Chromium goes: a clean close, not a wait for a peer that is gone
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._stack.close()

    def _stderr(self) -> str:
        log = self.profile.parent / "chromium.log"
        return log.read_bytes().decode(errors="replace")[-3000:] if log.is_file() else ""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one protocol command and wait for its answer; the events that come meanwhile are recorded."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, script: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable values only)."""
        result = self.call("Runtime.evaluate", expression=script, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails']}\n{script}")
        return result.get("result", {}).get("value")

    def wait_for(self, script: str, what: str, timeout: float = 30) -> Any:
        """Poll ``script`` until it returns something truthy (e.g. an element's text)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(script)
            if value:
                return value
            if time.monotonic() > deadline:
                body = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise BrowserError(f"timed out waiting for {what}; the page shows:\n{body}")
            time.sleep(0.1)

    def type_text(self, text: str) -> None:
        """Type into the focused element, as a keyboard would (the page's own input handlers run)."""
        self.call("Input.insertText", text=text)
