#!/usr/bin/env bash
# Run the App Engine entrypoint from app.yaml locally, exactly as App Engine would start it: the same command
# line, with app.yaml's env_variables applied (a variable already set in your environment wins).
# Usage: ./gcprunner.sh [--host HOST] [--port PORT] [PORT]     (default 127.0.0.1:8080, or $PORT)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

host="127.0.0.1" # App Engine binds every interface (-b :$PORT); on your machine, only loopback unless asked
port="${PORT:-8080}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) port="$1"; shift ;;
  esac
done

entrypoint="$(sed -n 's/^entrypoint:[[:space:]]*//p' app.yaml | head -n 1)"
entrypoint="${entrypoint%%[[:space:]]#*}" # drop a trailing comment
if [[ -z "$entrypoint" ]]; then
  echo "gcprunner.sh: no 'entrypoint:' line in app.yaml" >&2
  exit 1
fi

# The tools App Engine installs from requirements.txt: use the project's virtualenv when there is one.
if [[ -d "$here/.venv/bin" ]]; then
  export PATH="$here/.venv/bin:$PATH"
fi

# app.yaml's env_variables: one "NAME: value" per line under the key (quotes and trailing comments allowed).
while IFS='=' read -r name value; do
  if [[ -n "$name" && -z "${!name+x}" ]]; then
    export "$name=$value"
  fi
done < <(python3 - <<'EOF'
import re
block = False
for line in open("app.yaml", encoding="utf-8"):
    if re.match(r"^env_variables:\s*(#.*)?$", line):
        block = True
        continue
    if block and line.strip() and not line.startswith((" ", "\t")):
        break  # the next top-level key
    found = re.match(r"^\s+([A-Za-z_][A-Za-z0-9_]*):\s*(\"([^\"]*)\"|'([^']*)'|([^#\s][^#]*?))?\s*(#.*)?$", line)
    if block and found:
        value = next((g for g in found.group(3, 4, 5) if g is not None), "")
        print(f"{found.group(1)}={value}")
EOF
)

export PORT="$port"
export GAE_ENV="localdev"
export GAE_SERVICE="${GAE_SERVICE:-default}"
export GAE_VERSION="${GAE_VERSION:-local}"
export GAE_APPLICATION="${GAE_APPLICATION:-local~dpmsf}"
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-dpmsf-local}"
entrypoint="${entrypoint//-b :\$PORT/-b $host:\$PORT}"

echo "gcprunner.sh: $entrypoint  (PORT=$PORT)" >&2
# The entrypoint is a shell command line (App Engine runs it through a shell, so $PORT expands).
exec bash -c "exec $entrypoint"
