#!/usr/bin/env bash
# Set up .venv with the dev extras on first use, check style and types, run the whole test suite (args go to pytest).
# Style is checked on the framework's own code only: your plugins in plugins/ are yours to format as you like
# (CI checks the bundled ones, in .ci/run).
set -euo pipefail
cd "$(dirname "$0")"
DPMSF_VENV_EXTRAS=dev source scripts/venv.sh
ours=(dpmsf_core handler tests bench)
.venv/bin/ruff check "${ours[@]}"
.venv/bin/ruff format --check "${ours[@]}"
.venv/bin/mypy
exec .venv/bin/pytest "$@"
