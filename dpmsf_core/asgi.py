"""Import-string entry points for ASGI servers (``uvicorn dpmsf_core.asgi:create --factory``)."""

from __future__ import annotations

from .app import DPMSFApp, create_app


def create() -> DPMSFApp:
    """A fresh app from the environment; used by ``dpmsf serve --workers N`` in each worker process."""
    return create_app()
