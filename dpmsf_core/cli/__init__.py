"""The ``dpmsf`` command; each group of commands lives in its own module and registers itself.

``main`` parses the arguments and holds serve, routes, openapi and new; ``security`` adds token and tenant;
``aws`` adds invoke and package. The console script (``dpmsf = "dpmsf_core.cli:main"``), ``python -m dpmsf_core``
and ``python -m dpmsf_core.cli`` all call ``main``.
"""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
