"""Google App Engine entry point: ``gunicorn -c dpmsf_core/gunicorn_conf.py
-k dpmsf_core.gunicorn_worker.UvicornWorker handler.gae:app`` (app.yaml); the same app serves the container image
(Dockerfile) on Cloud Run.

Logging is configured before the plugins load, so that their errors are Cloud Logging entries too (a no-op when
gunicorn already applied ``dpmsf_core.gunicorn_conf``).
"""

import sys

from dpmsf_core import create_app
from dpmsf_core.errors import ConfigError
from dpmsf_core.logconfig import ensure_configured

ensure_configured()
try:
    app = create_app()
except ConfigError as exc:  # a bad setting: one line, and gunicorn's "failed to boot" (3) stops it, no respawning
    print(f"dpmsf: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
