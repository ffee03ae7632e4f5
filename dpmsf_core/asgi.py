"""Import-string entry points for ASGI servers (``uvicorn dpmsf_core.asgi:create --factory``)."""

from __future__ import annotations

from .app import DPMSFApp, create_app


def create() -> DPMSFApp:
    """A fresh app from the environment; used by ``dpmsf serve --workers N`` in each worker process.

    A plain ``uvicorn dpmsf_core.asgi:create --factory`` command line gets our log format for its lines too.
    """
    from .logconfig import ensure_configured, uvicorn_choices

    level, access = uvicorn_choices()
    ensure_configured(level, access=access)
    return create_app()
