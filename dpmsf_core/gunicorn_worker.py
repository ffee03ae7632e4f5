"""The gunicorn worker class of App Engine and the container: uvicorn's, with our HTTP protocol.

``gunicorn -k dpmsf_core.gunicorn_worker.UvicornWorker``: the same deadlines for slow clients and the same
limits as ``dpmsf serve`` (``DPMSF_HEADER_TIMEOUT``, ``DPMSF_BODY_TIMEOUT``, ``DPMSF_BODY_MIN_RATE``,
``DPMSF_SEND_TIMEOUT``, ``DPMSF_MAX_HEADER_BYTES``, ``DPMSF_MAX_CONNECTIONS``; see ``slow_clients.py``), read from
the environment in each worker.
"""

from __future__ import annotations

from typing import Any, ClassVar

import uvicorn_worker

from .slow_clients import guarded_protocol

__all__ = ["UvicornWorker"]


class UvicornWorker(uvicorn_worker.UvicornWorker):  # type: ignore[misc]  # uvicorn_worker ships no type hints
    """uvicorn_worker's worker; only the HTTP protocol differs."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**uvicorn_worker.UvicornWorker.CONFIG_KWARGS, "http": guarded_protocol()}
