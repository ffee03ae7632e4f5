#!/usr/bin/env bash
# Set up .venv on first use, then serve the bundled plugins on http://127.0.0.1:8080 (args go to `dpmsf serve`).
set -euo pipefail
cd "$(dirname "$0")"
DPMSF_VENV_EXTRAS=sandbox source scripts/venv.sh
exec .venv/bin/dpmsf serve "$@"
