#!/usr/bin/env bash
# README command 2: set up (idempotent), then the default test suite (slow experiments excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no tests: treat that as a failure to notice, not a pass.
[ $rc -eq 5 ] && echo "pytest collected no tests" >&2
exit $rc
