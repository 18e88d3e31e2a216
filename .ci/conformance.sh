#!/usr/bin/env bash
# Run the Autobahn|Testsuite against `wschat serve --echo` and print its summary.
#   .ci/conformance.sh [PROFILE]   PROFILE: full (default), core, fast, or case patterns
# Installs the suite first when missing (shared/tools/autobahn/setup.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${AUTOBAHN_TOOLS:-$HERE/../shared/tools/autobahn}
PROFILE=${1:-full}
PY=${PYTHON:-$HERE/.venv/bin/python}
[ -x "${WSTEST_HOME:-/opt/wstest}/bin/wstest" ] || bash "$TOOLS/setup.sh"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/wschat-conformance.XXXXXX.log)
"$PY" -m wschat serve --host 127.0.0.1 --port "$PORT" --echo --rate 0 --address-rate 0 --connect-rate 0 --log-level warning >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2).close()" 2>/dev/null && break
    sleep 0.1
done
AUTOBAHN_AGENT=wschat bash "$TOOLS/run.sh" "ws://127.0.0.1:$PORT/echo" "$PROFILE"
