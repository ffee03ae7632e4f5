#!/usr/bin/env bash
# Run the App Engine entrypoint from app.yaml locally, exactly as App Engine would start it.
# Usage: ./gcprunner.sh [PORT]      (default 8080; or set PORT)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

entrypoint="$(sed -n 's/^entrypoint:[[:space:]]*//p' app.yaml | head -n 1)"
entrypoint="${entrypoint%%[[:space:]]#*}" # drop a trailing comment
if [[ -z "$entrypoint" ]]; then
  echo "gcprunner.sh: no 'entrypoint:' line in app.yaml" >&2
  exit 1
fi

export PORT="${1:-${PORT:-8080}}"
export GAE_ENV="localdev"
export GAE_SERVICE="${GAE_SERVICE:-default}"
export GAE_VERSION="${GAE_VERSION:-local}"
export GAE_APPLICATION="${GAE_APPLICATION:-local~dpmsf}"
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-dpmsf-local}"

# The tools App Engine installs from requirements.txt: use the project's virtualenv when there is one.
if [[ -d "$here/.venv/bin" ]]; then
  export PATH="$here/.venv/bin:$PATH"
fi

echo "gcprunner.sh: $entrypoint  (PORT=$PORT)" >&2
# The entrypoint is a shell command line (App Engine runs it through a shell, so $PORT expands).
exec bash -c "exec $entrypoint"
