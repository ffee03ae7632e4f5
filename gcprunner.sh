#!/usr/bin/env bash
# Run the App Engine entrypoint from app.yaml locally, exactly as App Engine would start it: the same command
# line, with app.yaml's env_variables applied (a variable already set in your environment wins).
# Usage: ./gcprunner.sh [--host HOST] [--port PORT] [PORT]     (default 127.0.0.1:8080, or $PORT)
# Firestore stores (app.yaml's) use FIRESTORE_EMULATOR_HOST when set, else an emulator started here and stopped
# with the server (gcloud emulators firestore start); google-auth never probes the cloud metadata server.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

host="127.0.0.1" # App Engine binds every interface (-b :$PORT); on your machine, only loopback unless asked
port="${PORT:-8080}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
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
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-demo-dpmsf-local}" # "demo-": never a real project
export NO_GCE_CHECK="${NO_GCE_CHECK:-true}" # google-auth: this is not Google's cloud, never ask its metadata server
entrypoint="${entrypoint//-b :\$PORT/-b $host:\$PORT}"

# What the entrypoint and app.yaml's stores import, checked before anything starts (App Engine installs them
# from requirements.txt; here they come from the extras: pip install -e '.[gae,gcp]').
firestore=""
for name in DPMSF_STORE DPMSF_REPLAY_STORE DPMSF_TENANTS; do
  if [[ "${!name:-}" == firestore://* ]]; then firestore="$name=${!name}"; fi
done
modules=(gunicorn uvicorn_worker)
if [[ -n "$firestore" ]]; then modules+=(google.cloud.firestore); fi
missing="$(python3 - "${modules[@]}" <<'EOF'
import importlib.util, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
print(" ".join(m for m in sys.argv[1:] if not found(m)))
EOF
)"
if [[ -n "$missing" ]]; then
  echo "gcprunner.sh: $(command -v python3) cannot import $missing, which app.yaml's entrypoint and stores need;" \
    "install the extras: $(dirname "$(command -v python3)")/pip install -e '.[gae,gcp]'" >&2
  exit 2
fi

emulator_pid=""
if [[ -n "$firestore" && -z "${FIRESTORE_EMULATOR_HOST:-}" ]]; then
  gcloud="${GCPRUNNER_GCLOUD:-gcloud}"
  how="install the Google Cloud CLI with its emulator (apt-get install google-cloud-cli-firestore-emulator, or"
  how="$how gcloud components install cloud-firestore-emulator), or start one and set FIRESTORE_EMULATOR_HOST"
  if ! command -v "$gcloud" >/dev/null 2>&1; then
    echo "gcprunner.sh: app.yaml keeps data in Firestore ($firestore); here that is Google's emulator, and" \
      "'$gcloud' is not on PATH: $how (gcloud emulators firestore start --host-port=127.0.0.1:8086)" >&2
    exit 2
  fi
  emulator_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  emulator_log="$(mktemp -t dpmsf-firestore-emulator.XXXXXX)"
  setsid "$gcloud" emulators firestore start --host-port="127.0.0.1:$emulator_port" >"$emulator_log" 2>&1 &
  emulator_pid=$!
  stop_emulator() { kill -TERM -- "-$emulator_pid" 2>/dev/null || true; }
  trap stop_emulator EXIT
  if ! python3 - "$emulator_port" "$emulator_pid" <<'EOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
            sys.exit(0 if answer.status == 200 else 1)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)  # it ended: its log says why
        time.sleep(0.3)
sys.exit(1)
EOF
  then
    echo "gcprunner.sh: the Firestore emulator did not start; $how. Its log:" >&2
    tail -n 20 "$emulator_log" >&2
    exit 2
  fi
  export FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port"
  echo "gcprunner.sh: Firestore emulator on $FIRESTORE_EMULATOR_HOST, project $GOOGLE_CLOUD_PROJECT (log: $emulator_log)" >&2
fi

echo "gcprunner.sh: $entrypoint  (PORT=$PORT)" >&2
# The entrypoint is a shell command line (App Engine runs it through a shell, so $PORT expands).
if [[ -z "$emulator_pid" ]]; then
  exec bash -c "exec $entrypoint"
fi
bash -c "exec $entrypoint" &
server_pid=$!
trap 'kill -TERM "$server_pid" 2>/dev/null || true' INT TERM
status=0
wait "$server_pid" || status=$?
wait "$server_pid" 2>/dev/null || true # after a signal: until the server has stopped
exit "$status"
