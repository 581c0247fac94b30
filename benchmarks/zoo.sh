#!/usr/bin/env bash
# Build the zoo environment from scratch and run benchmarks/zoo.py in it.
#
#   bash benchmarks/zoo.sh                      # venv in ~/.cache/camlens-zoo-venv, table into docs/zoo.md
#   ZOO_VENV=/tmp/zv bash benchmarks/zoo.sh --smoke
#
# torch 2.14.1 and torchvision 0.29.1 are a CUDA build that runs on CPU (on this project's
# machines pip finds them on local disk). The Keras rows run on KERAS_BACKEND=torch, so no
# TensorFlow is needed for them (keras-hub pulls tensorflow-text, and with it TensorFlow, as a
# dependency; it is not used). grad-cam 1.5.7 is installed without its dependencies (they would
# pull another torch); the few it imports are named here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ZOO_VENV:-$HOME/.cache/camlens-zoo-venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install torch==2.14.1 torchvision==0.29.1
pip install timm transformers keras keras-hub scipy scikit-learn matplotlib tqdm pytest
pip install --no-deps grad-cam==1.5.7 ttach==0.0.3 opencv-python-headless==5.0.0.93
pip install --no-deps -e .
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.14.1'), torch.__version__"

if [ "$#" -eq 0 ]; then
    set -- --markdown docs/zoo.md
fi
KERAS_BACKEND="${KERAS_BACKEND:-torch}" "$VENV/bin/python" benchmarks/zoo.py "$@"
