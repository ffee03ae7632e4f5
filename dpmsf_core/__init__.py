"""DPMSF: drop a Python module in a plugins folder; its functions are REST endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import RequestInfo, current
from .errors import DPMSFError, HTTPError
from .expose import expose

if TYPE_CHECKING:
    from .app import DPMSFApp

__all__ = ["DPMSFError", "HTTPError", "RequestInfo", "create_app", "current", "expose"]
__version__ = "0.1.0"


def create_app(settings: Any = None, **overrides: Any) -> DPMSFApp:
    """Build the ASGI app; imported lazily so plugins importing ``expose`` stay cheap."""
    from .app import create_app as _create_app

    return _create_app(settings, **overrides)
