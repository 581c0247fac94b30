#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md (section 11), in one go, on a machine with an NVIDIA GPU:
#
#     bash benchmarks/gpu.sh OUT            # writes OUT/speed_limit.txt, OUT/peers.txt, OUT/device.txt
#     GPU_PIP='jax[cuda13]' bash benchmarks/gpu.sh OUT   # first pip-install a CUDA build (PyPI only)
#
# Run it from the repository root with the development environment's Python ($PYTHON, default
# python), where camlens, torch (a CUDA build), keras, grad-cam and torchcam are installed. It
# installs nothing unless GPU_PIP names packages, and those only from PyPI. Without a CUDA device
# it stops at once, before any benchmark runs. Native PyTorch and Keras on torch use the GPU;
# JAX and TensorFlow only where their CUDA builds are installed (each row of speed_limit.txt says
# where it ran). Grad-CAM's target on the GPU: at most 1.2x a forward pass at batch 64.
set -euo pipefail

out="${1:-}"
if [ -z "$out" ]; then
    echo "usage: bash benchmarks/gpu.sh OUT_FOLDER" >&2
    exit 2
fi
python="${PYTHON:-python}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$out"

if [ -n "${GPU_PIP:-}" ]; then
    # shellcheck disable=SC2086  # several packages, split on spaces
    "$python" -m pip install --index-url https://pypi.org/simple $GPU_PIP
fi

# fail fast: no GPU, no torch, no camlens -> one line saying which, exit 2
"$python" - <<'PY' | tee "$out/device.txt"
import importlib.util, sys
def stop(why):
    print(f"gpu.sh: {why}", file=sys.stderr)
    sys.exit(2)
for module, fix in (("torch", "pip install torch (a CUDA build)"), ("camlens", "pip install -e . from the repository root"),
                    ("keras", "pip install keras")):
    if importlib.util.find_spec(module) is None:
        stop(f"{module} is not installed: {fix}")
import torch
if not torch.cuda.is_available():
    stop(f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}) sees no GPU; "
         "run this on a machine with an NVIDIA GPU")
print(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, torch {torch.__version__}")
for name, check in (("jax", "import jax; print(jax.default_backend())"),
                    ("tensorflow", "import tensorflow as tf; print('gpu' if tf.config.list_physical_devices('GPU') else 'cpu')")):
    import subprocess
    if importlib.util.find_spec(name) is None:
        print(f"{name}: not installed (its Keras rows are skipped or run on the CPU)")
        continue
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    where = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else "failed to start"
    print(f"{name}: runs on {where}")
PY

date -u +"date: %Y-%m-%d %H:%M UTC" >> "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$out/device.txt" 2>&1 || true

echo "== speed_limit --device cuda --batches 1,8,64" >&2
"$python" "$here/speed_limit.py" --device cuda --batches 1,8,64 | tee "$out/speed_limit.txt"
echo "== peers --device cuda" >&2
"$python" "$here/peers.py" --device cuda | tee "$out/peers.txt"
echo "gpu.sh: tables written to $out/" >&2
