#!/usr/bin/env bash
# Run openenv-core's runtime validator (`openenv validate <url>`) against a fresh envserver on loopback.
# openenv-core pulls heavy dependencies (gradio, fastmcp, openai, ...), so it lives in its OWN venv,
# never in .venv. Prints the validator's JSON report; exits non-zero unless every required criterion passed.
#   bash scripts/openenv_validate.sh [REPORT.json]
# Env: OPENENV_CORE (default openenv-core==0.3.0), OPENENV_VENV (default $BGWORK_CACHE/venv-openenv-core-0.3.0,
# BGWORK_CACHE defaulting to ~/.cache/bgwork: the venv tests/test_openenv_clients.py makes and uses too).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${OPENENV_CORE:-openenv-core==0.3.0}
VENV=${OPENENV_VENV:-${BGWORK_CACHE:-$HOME/.cache/bgwork}/venv-$(echo "$SPEC" | sed -E 's/[^A-Za-z0-9.]+/-/g')}
REPORT=${1:-}

mkdir -p "$(dirname "$VENV")"
(
  flock 9  # the test suite may be building the same venv
  if [ ! -f "$VENV/.complete" ]; then
    echo "creating $VENV with $SPEC (one-off, a few minutes)" >&2
    python3 -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$SPEC" >&2
    echo "$SPEC" > "$VENV/.complete"
  fi
) 9>"$VENV.lock"

PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp -t envserver-validate.XXXXXX.log)
.venv/bin/python -m envserver --host 127.0.0.1 --port "$PORT" --max-sessions 2 --log-level warning >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -f "$LOG"' EXIT

for _ in $(seq 120); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "envserver exited while starting:" >&2; cat "$LOG" >&2; exit 1; }
  sleep 0.5
done

echo "# $("$VENV/bin/pip" show openenv-core | grep -i '^version' | tr -d '\r'), $(date -u +%FT%TZ)" >&2
set +e
"$VENV/bin/openenv" validate "http://127.0.0.1:$PORT" --timeout 30 | tee ${REPORT:+"$REPORT"}
rc=${PIPESTATUS[0]}
exit "$rc"
