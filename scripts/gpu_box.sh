#!/usr/bin/env bash
# On a GPU node without network (and without a browser): install what scripts/gpu_carry.py packed, offline,
# and register the Jupyter kernel `bgwork`, so `python3 -m bgwork run 03 -f params/lfm2_350m_replay.yaml` runs.
#   bash scripts/gpu_box.sh .carry && export BGWORK_CACHE=$PWD/.carry/cache PYTHONPATH=$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-.carry}
PY=${PYTHON:-python3}
[ -d "$CARRY/wheels" ] || { echo "no $CARRY/wheels: run scripts/gpu_carry.py $CARRY on a machine with the index" >&2; exit 1; }
# Only what is missing or too old is installed: the node's own torch/transformers/accelerate stay.
"$PY" -m pip install --quiet --no-index --find-links "$CARRY/wheels" -r "$CARRY/needed.txt"
"$PY" -m ipykernel install --sys-prefix --name bgwork --display-name "Python (bgwork)" >/dev/null
"$PY" - <<'PY'
import importlib.metadata as m, torch
print("gpu box ready:", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda",
      *(f"{p} {m.version(p)}" for p in ("transformers", "trl", "datasets", "accelerate", "peft", "papermill")))
PY
