#!/usr/bin/env bash
# Sourced by runserver.sh and run-tests.sh: make .venv (Python 3.11+) and install DPMSF into it once,
# with the extras named in DPMSF_VENV_EXTRAS (e.g. dev). Every step that takes a while says so on stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${DPMSF_VENV_EXTRAS:-}"
if [ ! -x "$root/.venv/bin/python" ]; then
  py=""
  for cand in python3 python3.13 python3.12 python3.11; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      py="$cand"; break
    fi
  done
  [ -n "$py" ] || { echo "DPMSF needs Python 3.11 or newer on PATH" >&2; exit 1; }
  echo "DPMSF: creating .venv with $("$py" --version 2>&1) ..." >&2
  "$py" -m venv "$root/.venv"
fi
stamp="$root/.venv/.dpmsf-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  started=$SECONDS
  echo "DPMSF: installing DPMSF${extras:+ with [$extras]} and its dependencies into .venv (the first time takes a minute or two) ..." >&2
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root${extras:+[$extras]}"
  touch "$stamp"
  echo "DPMSF: .venv is ready ($((SECONDS - started)) s); 'source .venv/bin/activate' puts dpmsf on your PATH" >&2
fi
