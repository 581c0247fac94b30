"""LRP and DeepLIFT against one forward pass and a plain input gradient: VGG-11 and ResNet-18.

A modified gradient cannot cost less than a plain one: one forward and one backward pass. The
issue's target is LRP at about that cost (read: within ~2 forward passes). Each LRP rule adds
the convolutions of its terms: epsilon none (its one term is the layer itself), z+ one more per
convolution (the positive weights on the non-negative input after a ReLU), alpha-beta and gamma
two (the positive and the negative weights; the layer's own output is their sum), so the best
z+ costs about 1.5 plain gradients, alpha-beta and gamma about 2. DeepLIFT runs the model once
more on the baseline (no gradient) and once with its rescale rule.

For each model and batch size the functions take turns ``--repeat`` times (so the load of
other processes spreads over all of them alike) and the table gives each one's median as a
ratio to the forward pass's median:

* ``forward``: the model under ``torch.no_grad()`` (Keras: ``model(x, training=False)``), ms;
* ``autograd``: the input gradient of the top class's logit by hand (``torch.autograd.grad``);
* ``saliency``: ``camlens.explain(..., method="saliency")``: the same gradient through camlens;
* one column per LRP composite (``camlens.explain(..., method=LRP(composite=...))``);
* ``deeplift``: ``method="deeplift"`` (zero baseline).

Random weights (torchvision's ``vgg11`` and ``resnet18``, eval mode), random 224x224 inputs:
timing does not depend on them. The Keras rows use a small VGG-like CNN at 224 px (strided
convolutions, as in the first measurement, so that the rows compare), on the caller's backend
(``KERAS_BACKEND``: run the script once per backend, ``--no-torch`` for the Keras rows alone).

    python benchmarks/relevance_speed.py                   # torch vgg11 and resnet18, batch 1 and 8; Keras CNN
    python benchmarks/relevance_speed.py --batches 1 --repeat 3
    python benchmarks/relevance_speed.py --smoke           # tiny models at 32 px, seconds
    KERAS_BACKEND=jax python benchmarks/relevance_speed.py --no-torch   # the Keras rows on JAX
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _common import child, emit, has, interleaved, machine, quiet, versions

MODELS = ("vgg11", "resnet18")
COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha1_beta0")
SHORT = {"epsilon": "eps", "epsilon_plus_flat": "eps+flat", "epsilon_plus": "eps+", "epsilon_gamma_box": "gammabox",
         "epsilon_alpha2_beta1": "a2b1", "epsilon_alpha1_beta0": "a1b0"}
COLUMNS = ("autograd", "saliency", *COMPOSITES, "deeplift")
TARGET = 2.0


def _keras_net(name: str, size: int) -> Any:
    import keras

    from _common import tiny_keras

    if name == "tiny":
        return tiny_keras(size)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    h = inputs
    for width in (16, 32, 64, 64):  # VGG-like, strided (the first measurement's model)
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h)
        h = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(1000)(h))


def measure(backend: str, model_name: str, batch: int, repeat: int, size: int) -> dict[str, Any]:
    import camlens
    from camlens.methods.relevance import LRP

    rng = np.random.default_rng(0)
    fns: dict[str, Any] = {}
    if backend == "torch":
        import torch

        from _common import torch_run

        net, x, forward = torch_run(model_name, batch, size)

        def autograd() -> Any:
            xg = x.clone().requires_grad_(True)
            out = net(xg)
            top = out.argmax(dim=1, keepdim=True)
            return torch.autograd.grad(out.gather(1, top).sum(), [xg])[0]

        fns = {"forward": forward, "autograd": autograd}
    else:
        import keras

        net = _keras_net(model_name, size)
        x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)

        def forward() -> Any:
            return keras.ops.convert_to_numpy(net(x, training=False))

        fns = {"forward": forward}

    fns["saliency"] = lambda: camlens.explain(net, x, method="saliency")
    for c in COMPOSITES:
        fns[c] = lambda __c=c: camlens.explain(net, x, method=LRP(composite=__c))
    fns["deeplift"] = lambda: camlens.explain(net, x, method="deeplift")
    for fn in fns.values():  # first calls (compiling, caches) are not timed
        fn()
    times = interleaved(fns, repeat)
    return {"backend": backend, "model": model_name, "batch": batch,
            "median": {name: float(np.median(ts)) for name, ts in times.items()}}


def worker(backend: str, models: list[str], batches: list[int], repeat: int, size: int) -> list[dict[str, Any]]:
    with quiet():
        return [measure(backend, m, b, repeat, size) for m in models for b in batches]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models at 32 px, for CI: same code path")
    parser.add_argument("--models", default=",".join(MODELS), help="torchvision model names")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls of each (default 5; smoke 2)")
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras rows")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    models = ["tiny"] if args.smoke else args.models.split(",")
    batches = [1, 2] if args.smoke else [int(b) for b in args.batches.split(",")]
    repeat = args.repeat or (2 if args.smoke else 5)
    size = 32 if args.smoke else 224
    if args.worker:
        emit(worker(args.worker, models if args.worker == "torch" else ["tiny" if args.smoke else "cnn"],
                    batches, repeat, size))
        return 0

    backends = []
    if args.no_torch:
        pass
    elif has("torch") and has("torchvision") or args.smoke and has("torch"):
        backends.append("torch")
    else:
        print("(torch or torchvision is not installed: the PyTorch rows are skipped)")
    if not args.no_keras and has("keras"):
        backends.append("keras")
    keras_backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    what = "smoke: tiny models, 32 px" if args.smoke else f"{size}x{size} px, random inputs and weights"
    print(f"LRP and DeepLIFT against one forward pass ({what}); median of {repeat} interleaved calls; "
          "forward in ms, the others as multiples of it")
    print(f"machine: {machine()}; {versions('numpy', 'torch', 'torchvision', 'keras', 'tensorflow-cpu', 'tensorflow', 'jax')}")
    head = f"{'backend':<16} {'model':<9} {'batch':>5} {'forward':>8} " + " ".join(
        f"{SHORT.get(c, c):>9}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    script = Path(__file__).resolve()
    flags = ["--smoke"] if args.smoke else ["--models", ",".join(models), "--batches", ",".join(map(str, batches))]
    flags += ["--repeat", str(repeat)]
    for backend in backends:
        rows = child(script, ["--worker", backend, *flags], env={"KERAS_BACKEND": keras_backend})
        label = "PyTorch" if backend == "torch" else f"Keras/{keras_backend}"
        for r in rows:
            med = r["median"]
            fwd = med["forward"]
            cells = " ".join(f"{med[c] / fwd:>9.2f}" if c in med else f"{'-':>9}" for c in COLUMNS)
            print(f"{label:<16} {r['model']:<9} {r['batch']:>5} {1000 * fwd:>8.1f} {cells}", flush=True)
    print(f"target: LRP within ~{TARGET:.0f} forward passes (about a plain input gradient, 'autograd')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
