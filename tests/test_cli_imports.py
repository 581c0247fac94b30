"""A command imports only the framework its model needs (issue 18, target 2).

Each case runs ``camlens.cli.main`` in a fresh Python (sys.modules starts empty there) and then
prints the frameworks that process imported. A torch ``FILE.py:NAME`` must not pay for Keras,
TensorFlow or JAX (about 9 s of TensorFlow when the issue was filed); a ``.keras`` model on the
JAX or torch backend must not import TensorFlow, and one on TensorFlow or JAX must not import
torch. Keras 3 itself imports JAX on every backend where JAX is installed
(``keras.src.callbacks.orbax_checkpoint`` does ``import jax`` when ``import keras`` runs), so
JAX beside a Keras model on the torch or TensorFlow backend is Keras's, not camlens's, and is
not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

#: sympy too: torch.fx's ShapeProp imported it (0.7 s of a torch explain's first call) for fake
#: tensors camlens never passes; camlens propagates the shapes itself
FRAMEWORKS = ("jax", "keras", "sympy", "tensorflow", "torch")
#: runs the command line, then prints the frameworks its process imported; the app's server is
#: replaced by a return so that its start-up (the model loaded, the app built) is what is seen
PROBE = (
    "import sys\n"
    "try:\n"
    "    import uvicorn\n"
    "    uvicorn.Server.run = lambda self, *a, **k: None\n"
    "except ImportError:\n"
    "    pass\n"
    "from camlens.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    f"found = sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})\n"
    "print('FRAMEWORKS', code, ','.join(found))\n"
)

TORCH_FILE = (
    "import torch\n\n\n"
    "def net():\n"
    "    torch.manual_seed(0)\n"
    "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),\n"
    "                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
    "                               torch.nn.Linear(4, 3)).eval()\n"
)


def imported(args: list[str], env: dict[str, str] | None = None, cwd=None) -> set[str]:
    """The frameworks a fresh process imported running ``camlens ARGS`` (which must succeed)."""
    full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full.update(env or {})  # an empty value unsets the variable
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env={k: v for k, v in full.items() if v},
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FRAMEWORKS ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, code, found = (lines[-1].split(" ") + [""])[:3]
    assert code == "0", proc.stdout[-2000:] + proc.stderr[-2000:]
    return set(filter(None, found.split(",")))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("startup")
    (folder / "tiny_net.py").write_text(TORCH_FILE)
    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    return folder


def test_help_imports_no_framework():
    assert imported(["--help"]) == set()


@pytest.mark.parametrize("command", ["explain", "layers"])
def test_a_torch_file_imports_torch_only(files, command):
    """Also with ``KERAS_BACKEND=tensorflow`` set (the test run's default, and what the
    command line sets when nothing is): no Keras, no TensorFlow, no JAX."""
    pytest.importorskip("torch")
    args = [command, "tiny_net.py:net", "--size", "32"]
    if command == "explain":
        args[2:2] = ["a.png", "-o", str(files / "out")]
    assert imported(args, env={"KERAS_BACKEND": "tensorflow"}, cwd=files) == {"torch"}


def test_a_keras_file_imports_its_backend_only(files):
    """The caller's Keras backend: TensorFlow only on TensorFlow, torch only on torch."""
    keras = pytest.importorskip("keras")
    from keras_models import saved_cli_classifier

    backend = keras.backend.backend()
    model = saved_cli_classifier(files / f"cls_{backend}.keras")
    found = imported(["explain", str(model), str(files / "a.png"), "-o", str(files / f"k_{backend}")],
                     env={"KERAS_BACKEND": backend})
    assert "keras" in found and backend in found
    assert ("tensorflow" in found) == (backend == "tensorflow"), found
    assert ("torch" in found) == (backend == "torch"), found


def test_the_backend_flag_decides_the_framework(files):
    """``--backend jax`` with no KERAS_BACKEND set: JAX and Keras, no TensorFlow (which is
    Keras's default backend) and no torch. Once, in the JAX run."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("runs once, in the JAX run")
    from keras_models import saved_cli_classifier

    model = saved_cli_classifier(files / "cls_flag.keras")
    found = imported(["layers", str(model), "--backend", "jax"], env={"KERAS_BACKEND": ""})
    assert found == {"jax", "keras"}
