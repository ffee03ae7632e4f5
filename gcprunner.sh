#!/usr/bin/env bash
# Run the App Engine entrypoint from app.yaml locally, exactly as App Engine would start it: the same command
# line, with app.yaml's env_variables applied (a variable already set in your environment wins).
# Usage: ./gcprunner.sh [--host HOST] [--port PORT] [--show] [PORT]     (default 127.0.0.1:8080, or $PORT)
# Firestore stores (app.yaml's) use FIRESTORE_EMULATOR_HOST when set, else an emulator started here and stopped
# with the server (gcloud emulators firestore start); google-auth never probes the cloud metadata server.
# It is `dpmsf gcp-run` (dpmsf_core/cli/gcprun.py), which a project made by `dpmsf init` runs the same way.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
python="python3"
if [[ -x "$here/.venv/bin/python" ]]; then
  python="$here/.venv/bin/python" # the tools App Engine installs from requirements.txt: the repository's venv
fi
exec "$python" -m dpmsf_core gcp-run "$@"
