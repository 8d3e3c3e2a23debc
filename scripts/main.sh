#!/usr/bin/env bash
# README command 1: set up (idempotent), then the main job on the embedded defaults:
# notebook 01 (env smoke test) + 02 (GRPO debug run) in one run dir, with HTML reports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bgwork run 01 02 "$@"   # the defaults of bgwork/config.py; `bgwork params` prints them
