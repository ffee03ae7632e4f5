#!/usr/bin/env bash
# Set up .venv with the dev extras on first use, check style and types, run the whole test suite (args go to pytest).
# Style is checked on the framework's own code only: your plugins in plugins/ are yours to format as you like
# (the committed ones are checked by tests/test_bundled_plugins.py).
set -euo pipefail
cd "$(dirname "$0")"
DPMSF_VENV_EXTRAS=dev source scripts/venv.sh
ours=(dpmsf_core handler tests bench)
started=$SECONDS
echo "DPMSF: ruff (lint and format) on ${ours[*]} ..." >&2
.venv/bin/ruff check "${ours[@]}"
.venv/bin/ruff format --check "${ours[@]}"
echo "DPMSF: mypy ..." >&2
.venv/bin/mypy
if [ $# -eq 0 ]; then
  echo "DPMSF: pytest, the whole suite: about 10 minutes on a 2-core machine; a dot per test, the share done at the" \
    "end of each line (./run-tests.sh -k WORD or a test file runs a part) ..." >&2
else
  echo "DPMSF: pytest $* ..." >&2
fi
status=0
.venv/bin/pytest "$@" || status=$?
echo "DPMSF: finished in $((SECONDS - started)) s (pytest exit status $status)" >&2
exit "$status"
