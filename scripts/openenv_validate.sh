#!/usr/bin/env bash
# Run openenv-core's runtime validator (`openenv validate <url>`) against a fresh envserver on loopback.
# openenv-core pulls heavy dependencies (gradio, fastmcp, openai, ...), so it lives in its OWN venv,
# never in .venv. Prints the validator's JSON report; exits non-zero unless every required criterion passed.
#   bash scripts/openenv_validate.sh [REPORT.json]
# Env: OPENENV_VENV (default ~/.cache/bgwork/openenv-venv), OPENENV_CORE (default openenv-core==0.3.0).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPENENV_VENV:-$HOME/.cache/bgwork/openenv-venv}
SPEC=${OPENENV_CORE:-openenv-core==0.3.0}
REPORT=${1:-}

if [ ! -x "$VENV/bin/openenv" ]; then
  echo "creating $VENV with $SPEC (one-off, a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$SPEC" >&2
fi

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
