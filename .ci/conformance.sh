#!/usr/bin/env bash
# Run the Autobahn|Testsuite against `wschat serve --echo --compression` and print its
# summary (sections 12 and 13 test permessage-deflate, which is off by default).
#   .ci/conformance.sh [PROFILE]   PROFILE: full (default), core, fast, or case patterns
# Installs the suite first when missing (shared/tools/autobahn/setup.sh).
# Exit 0 only when no case FAILED and none is NON-STRICT (issue 8 item 7): run.sh
# itself passes NON-STRICT cases, so its summary line is checked here as well.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
# The suite's tools sit beside the checkout (../shared) or in the workspace's shared/.
TOOLS=${AUTOBAHN_TOOLS:-}
if [ -z "$TOOLS" ]; then
    for candidate in "$HERE/../shared/tools/autobahn" /work/shared/tools/autobahn; do
        [ -f "$candidate/run.sh" ] && TOOLS=$candidate && break
    done
fi
if [ -z "$TOOLS" ]; then
    echo "conformance: the Autobahn tools (shared/tools/autobahn) are not beside this checkout; set AUTOBAHN_TOOLS" >&2
    exit 1
fi
PROFILE=${1:-full}
PY=${PYTHON:-$HERE/.venv/bin/python}
[ -x "${WSTEST_HOME:-/opt/wstest}/bin/wstest" ] || bash "$TOOLS/setup.sh"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/wschat-conformance.XXXXXX.log)
SUMMARY=$(mktemp /tmp/wschat-conformance.XXXXXX.txt)
"$PY" -m wschat serve --host 127.0.0.1 --port "$PORT" --echo --compression --rate 0 --address-rate 0 --connect-rate 0 --log-level warning >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -f "$SUMMARY"' EXIT
for _ in $(seq 100); do
    "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2).close()" 2>/dev/null && break
    sleep 0.1
done
set +e
AUTOBAHN_AGENT=wschat bash "$TOOLS/run.sh" "ws://127.0.0.1:$PORT/echo" "$PROFILE" | tee "$SUMMARY"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    echo "conformance: FAILED (run.sh exit $rc; server log: $LOG)"
    exit "$rc"
fi
# The figure line: "autobahn: 301 cases, 0 failed, 0 non-strict, 0 unimplemented".
NON_STRICT=$(sed -n 's/^autobahn: [0-9]* cases, .* \([0-9][0-9]*\) non-strict,.*/\1/p' "$SUMMARY" | tail -1)
if [ -z "$NON_STRICT" ]; then
    echo "conformance: FAILED (no summary line from run.sh)"
    exit 1
fi
if [ "$NON_STRICT" -ne 0 ]; then
    echo "conformance: FAILED ($NON_STRICT NON-STRICT cases; CI requires 0, see the list above)"
    exit 1
fi
echo "conformance: OK (0 failed, 0 non-strict)"
