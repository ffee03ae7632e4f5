#!/usr/bin/env bash
# Set up .venv with the dev extras on first use, check style and types, run the whole test suite (args go to pytest).
set -euo pipefail
cd "$(dirname "$0")"
DPMSF_VENV_EXTRAS=dev source scripts/venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
