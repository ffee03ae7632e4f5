"""DPMSF: drop a Python module in a plugins folder; its functions are REST endpoints.

The public surface is ``__all__``: what plugins and users import (``expose``, the errors a function raises,
``RequestInfo`` and ``current``, ``store``, ``run_program``, ``create_app`` and the ``testing`` helpers).
Everything else in the package (``dpmsf_core.errors``, ``dpmsf_core.context``, ...) may move between versions.
Heavy parts (the app, the store, commands) load on first use, so that a plugin importing
``expose`` costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import RequestInfo, current
from .errors import (
    BadRequest,
    Conflict,
    DPMSFError,
    Forbidden,
    HTTPError,
    NotFound,
    ServiceUnavailable,
    UnprocessableArguments,
)
from .expose import expose

if TYPE_CHECKING:
    from . import store, testing
    from .app import DPMSFApp
    from .commands.programs import ProgramResult, run_program, run_program_sync
    from .config import Settings

__all__ = [
    "BadRequest",
    "Conflict",
    "DPMSFError",
    "Forbidden",
    "HTTPError",
    "NotFound",
    "ProgramResult",
    "RequestInfo",
    "ServiceUnavailable",
    "UnprocessableArguments",
    "create_app",
    "current",
    "expose",
    "run_program",
    "run_program_sync",
    "store",
    "testing",
]
__version__ = "0.1.0"


def create_app(settings: Settings | None = None, **overrides: Any) -> DPMSFApp:
    """Build the ASGI app; imported lazily so plugins importing ``expose`` stay cheap."""
    from .app import create_app as _create_app

    return _create_app(settings, **overrides)


def __getattr__(name: str) -> Any:
    """``dpmsf_core.store``, ``dpmsf_core.testing`` and ``dpmsf_core.run_program`` are imported on first use."""
    from importlib import import_module  # not ``from . import``: that would ask this very function again

    if name in ("store", "testing"):
        return import_module(f"{__name__}.{name}")
    if name in ("run_program", "run_program_sync", "ProgramResult"):
        return getattr(import_module(f"{__name__}.commands"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
