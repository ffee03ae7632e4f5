"""gunicorn settings for App Engine and the container image (``gunicorn -c python:dpmsf_core.gunicorn_conf``).

Only logging: gunicorn's own lines, its uvicorn workers' lines and the app's share one format (JSON for
Cloud Logging on Google Cloud, a readable line elsewhere; see ``dpmsf_core/logconfig.py``). The rest of the
command line (workers, bind, worker class) stays in app.yaml and the Dockerfile, where it is read.
"""

from __future__ import annotations

import os

from dpmsf_core.logconfig import dict_config

loglevel = (os.environ.get("DPMSF_LOG_LEVEL") or "info").lower()
logconfig_dict = dict_config(loglevel)
