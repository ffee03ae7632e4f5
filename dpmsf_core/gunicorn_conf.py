"""gunicorn settings for App Engine and the container image (``gunicorn -c dpmsf_core/gunicorn_conf.py``).

Logging and the drain on SIGTERM. gunicorn's own lines, its uvicorn workers' lines and the app's share one format
(JSON for Cloud Logging on Google Cloud, a readable line elsewhere; see ``dpmsf_core/logconfig.py``). The rest of the
command line (workers, bind, worker class) stays in app.yaml and the Dockerfile, where it is read. On SIGTERM
(Kubernetes, Knative and Cloud Run send it before they stop a container) the workers stop accepting and their
in-flight requests get ``DPMSF_GRACE_SECONDS`` (default 20, as ``dpmsf serve``) before gunicorn ends them.

gunicorn loads this file by path before it puts the app's folder on ``sys.path``, and App Engine does not install
the project (only requirements.txt), so the folder above ``dpmsf_core`` is put there first.
"""

from __future__ import annotations

import math
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from dpmsf_core.config import Settings  # noqa: E402  (needs the path above)
from dpmsf_core.errors import ConfigError  # noqa: E402  (needs the path above)
from dpmsf_core.logconfig import dict_config  # noqa: E402  (needs the path above)

loglevel = (os.environ.get("DPMSF_LOG_LEVEL") or "info").lower()
logconfig_dict = dict_config(loglevel)
try:
    _settings = Settings.from_env()
except ConfigError as exc:  # a bad value stops start-up with one line, as everywhere (gunicorn would add a traceback)
    print(f"dpmsf: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
graceful_timeout = math.ceil(_settings.grace_seconds)  # whole seconds for gunicorn
