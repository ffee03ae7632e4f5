"""One log format for every line of a server process: ours, uvicorn's and gunicorn's, in every worker.

Locally a readable line, ``2026-12-02 01:07:33.123 INFO  [rid] logger: message`` (``[-]`` outside a request);
on Google Cloud (``GAE_SERVICE`` or ``K_SERVICE`` set) one JSON object per line that Cloud Logging groups by
request (``dpmsf_core/gcp/cloudlogging.py``). ``DPMSF_LOG_FORMAT=text|json`` overrides the choice, and
``DPMSF_LOG_STREAM=stdout`` writes the lines to standard output instead of standard error (what log collectors that
read only stdout want, e.g. with JSON on Kubernetes).

The request a line belongs to comes from ``current_request``, a context variable the app sets for each HTTP
request (copied into the threads that run sync functions), so a plugin's own ``logging`` calls carry the
request id too. Where it is installed: ``dpmsf serve`` hands ``dict_config()`` to uvicorn (which applies it in
every worker), ``dpmsf_core.gunicorn_conf`` hands it to gunicorn (App Engine, the Dockerfile), and
``ensure_configured()`` in ``handler/gae.py`` and ``dpmsf_core.asgi:create`` covers a plain ``uvicorn`` or
``gunicorn`` command line. On Lambda, Powertools owns logging (``aws/observability.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from .context import RequestLog, current_request

__all__ = [
    "CONFIG_FILE",
    "LocalFormatter",
    "RequestLog",
    "current_request",
    "dict_config",
    "ensure_configured",
    "log_format",
    "log_stream",
    "make_formatter",
    "make_handler",
]

# dict_config() as a file, for a plain ``uvicorn --workers N --log-config <it>`` (its parent process's lines too).
CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logging.json")

# The loggers servers log under: each gets our handler and does not propagate (no line printed twice).
SERVER_LOGGERS = ("uvicorn", "gunicorn.error")
ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")


# The lines of a traceback that start in column 0: its headers, and ``Type: message`` right after a frame line.
_HEADER = re.compile(
    r"^(Traceback \(most recent call last\):|During handling of the above exception|The above exception was the "
    r"direct cause|Stack \(most recent call last\):)"
)
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``json`` on Google Cloud (App Engine sets ``GAE_SERVICE``, Cloud Run ``K_SERVICE``), else ``text``."""
    env = os.environ if env is None else env
    chosen = (env.get("DPMSF_LOG_FORMAT") or "").strip().lower()
    if chosen in ("text", "json"):
        return chosen
    return "json" if env.get("GAE_SERVICE") or env.get("K_SERVICE") else "text"


def log_stream(env: Mapping[str, str] | None = None) -> str:
    """``stdout`` when ``DPMSF_LOG_STREAM=stdout``, else ``stderr`` (any other value too: logging must not stop a
    server from starting)."""
    env = os.environ if env is None else env
    return "stdout" if (env.get("DPMSF_LOG_STREAM") or "").strip().lower() == "stdout" else "stderr"


def make_handler() -> logging.Handler:
    """The one handler of every logger we configure, on the stream ``log_stream()`` names, chosen where it runs."""
    import sys

    return logging.StreamHandler(sys.stdout if log_stream() == "stdout" else sys.stderr)


def _control_escapes() -> dict[int, str]:
    """C0 and C1 controls, DEL and the Unicode line separators, each as a visible escape (``\\n``, ``\\x1b``)."""
    table = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
    table.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\x85"})
    del table[0x09]  # a tab forges nothing
    return table


_ESCAPES = _control_escapes()
_KEEP_LINES = {k: v for k, v in _ESCAPES.items() if k != 0x0A}


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` on one line, terminal escapes shown, not run: a path with ``%0a`` or a tenant's output with newlines
    or ``ESC[`` sequences cannot forge a log line or repaint the operator's terminal."""
    if text.isprintable():
        return text
    return text.translate(_KEEP_LINES if keep_newlines else _ESCAPES)


class LocalFormatter(logging.Formatter):
    """``2026-12-02 01:07:33.123 INFO  [rid] name: message``: time, level and request id on every line.

    Every field escapes control characters (``escape_controls``): messages quote paths, headers and tenant
    output. A traceback keeps its line breaks (each of its lines is indented or starts with its own header)."""

    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d"
    dpmsf_format = "text"

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s [%(request_id)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request = current_request.get()
        record.request_id = escape_controls(request.request_id) if request is not None else "-"
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        record.name = escape_controls(record.name)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(block: str) -> str:
    """A traceback's lines, controls escaped; an exception's own message that spans lines (it may quote a request)
    has its continuation lines indented, so no line of it starts like a log line."""
    out: list[str] = []
    previous = " "
    for line in escape_controls(block, keep_newlines=True).split("\n"):
        own = not line or line[0] in " \t" or _HEADER.match(line) is not None
        own = own or (previous[:1] in (" ", "\t") and _EXCEPTION_LINE.match(line) is not None)
        out.append(line if own else "    " + line)
        previous = line
    return "\n".join(out)


def make_formatter() -> logging.Formatter:
    """The formatter for this process's environment (``log_format()``), chosen where it runs: a worker, the master."""
    if log_format() == "json":
        from .gcp.cloudlogging import CloudLoggingFormatter

        return CloudLoggingFormatter()
    return LocalFormatter()


def dict_config(level: str = "INFO", *, access: bool = True) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: one handler (stderr, or stdout: ``log_stream``) with our formatter,
    for the root logger and every server logger. ``access``: our one line per request (``dpmsf.access``)."""
    level = level.upper()
    handler = ["dpmsf"]
    return {
        "version": 1,
        "disable_existing_loggers": False,  # loggers made at import (dpmsf.*) keep working
        "formatters": {"dpmsf": {"()": f"{__name__}.make_formatter"}},
        "handlers": {"dpmsf": {"()": f"{__name__}.make_handler", "formatter": "dpmsf"}},
        "root": {"level": level, "handlers": handler},
        "loggers": {
            **{name: {"level": level, "handlers": handler, "propagate": False} for name in SERVER_LOGGERS},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},  # to "uvicorn": one line
            # The servers' own access lines are dropped: ours (dpmsf.access) is the one line per request, with the
            # request id, endpoint and latency (uvicorn's worker under gunicorn shares gunicorn.access's handlers).
            **{name: {"handlers": [], "propagate": False} for name in ACCESS_LOGGERS},
            "dpmsf.access": {"level": "INFO" if access else "WARNING"},
        },
    }


def installed() -> bool:
    """True when the root logger already writes through one of our formatters (configured by the server)."""
    return any(getattr(h.formatter, "dpmsf_format", None) for h in logging.getLogger().handlers)


def ensure_configured(level: str | None = None, *, access: bool = True) -> None:
    """Install ``dict_config()`` unless the server already did (then its level and access choice stand)."""
    if not installed():
        import logging.config  # here, not at the top: the app imports this module on Lambda's cold start too

        logging.config.dictConfig(dict_config(level or os.environ.get("DPMSF_LOG_LEVEL") or "INFO", access=access))


def uvicorn_choices() -> tuple[str | None, bool]:
    """The ``--log-level`` and ``--no-access-log`` a plain ``uvicorn`` command line was given, so our format keeps
    them: uvicorn sets its loggers' level and, without access log, empties ``uvicorn.access``'s handlers."""
    import sys

    if "uvicorn" not in sys.modules:
        return None, True
    error, access = logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn.access")
    level = logging.getLevelName(error.level) if error.level else None
    return level, bool(access.handlers) or access.propagate


if __name__ == "__main__":  # ``uvicorn ... --log-config "$(python -m dpmsf_core.logconfig)"``
    print(CONFIG_FILE)
