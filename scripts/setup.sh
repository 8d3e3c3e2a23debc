#!/usr/bin/env bash
# Idempotent set-up used by both README commands: .venv, torch (first), the project, Chromium,
# and the Jupyter kernel "bgwork". Re-running it is cheap: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${BGWORK_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
say() { printf '[setup] %s\n' "$*"; }

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { say "Python >= 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11+"; exit 1; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch FIRST: a bare "torch" requirement would pull a multi-GB CUDA build on a CPU-only box.
if ! "$VPY" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=${BGWORK_TORCH_SPEC:-torch}
  else
    spec=${BGWORK_TORCH_SPEC:-torch==2.13.0}  # CPU wheel where a local wheel cache has it
  fi
  say "installing $spec"
  "$VPY" -m pip install -q "$spec"
fi

# The project; skipped when pyproject.toml is unchanged since the last successful install.
stamp="$VENV/.bgwork-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing bgwork[dev] (editable)"
  "$VPY" -m pip install -q -e ".[dev]" 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
  "$VPY" -c 'import bgwork, envserver, browsergym.miniwob, trl' \
    || { say "the project did not install; see the pip output above"; exit 1; }
  echo "$want" > "$stamp"
fi

# Chromium: BrowserGym must use the system binary (Playwright's browser download is not reachable offline).
if ! "$VPY" -m envserver.browser --check >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "Chromium not found. Install your distribution's chromium package (Debian/Ubuntu: sudo apt-get install chromium)"
    say "or set BGWORK_CHROMIUM=/path/to/chromium, then re-run this script."
    exit 1
  fi
  "$VPY" -m envserver.browser --check
fi

# llama.cpp's GGUF converter (from the llama-cpp-python sdist) into the bgwork cache: notebook 06 then exports
# offline, and never downloads in the middle of a run. A no-op once there. (The image build's first pass installs
# over package stubs: docker/trainer/Dockerfile fetches it after copying the code.)
if [ -f bgwork/gguf_export/convert.py ]; then
  "$VPY" -m bgwork.gguf_export.convert
fi

# Jupyter kernel inside the venv, so papermill (-k bgwork) and JupyterLab find it.
if [ ! -f "$VENV/share/jupyter/kernels/bgwork/kernel.json" ]; then
  say "registering Jupyter kernel 'bgwork'"
  "$VPY" -m ipykernel install --sys-prefix --name bgwork --display-name "Python (bgwork)" >/dev/null
fi
# JupyterLab defaults shipped in jupyter/ (notebooks/*.py open as notebooks): `bgwork lab` reads them from the
# repo; this copy serves a plain `.venv/bin/jupyter lab` too. Cheap, so refreshed on every run.
install -D -m 644 jupyter/labconfig/default_setting_overrides.json "$VENV/etc/jupyter/labconfig/default_setting_overrides.json"
say "ready: $VENV"
