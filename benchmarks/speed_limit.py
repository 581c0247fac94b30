"""Grad-CAM against its limit, one forward pass: EfficientNet-Lite0 and ResNet-50, every backend.

Grad-CAM needs one forward pass and the gradient of the score with respect to one layer. The
gradient only runs back through the layers after that layer (for a CNN, the pooling and the
classifier), so the best possible Grad-CAM costs about one forward pass. The target is
camlens's Grad-CAM within 1.5x of a forward pass, with no parameter gradient computed.

Each backend runs in its own process (Keras fixes its backend when it is imported): Keras 3 on
TensorFlow, JAX and PyTorch, and native PyTorch. For each model and batch size (1 and 8 images of
224x224), the forward pass and ``camlens.explain(model, x, method="gradcam")`` take turns
``--repeat`` times; the table gives the first call of each (JAX compiles then) and the fastest
of the others, in milliseconds:

* ``forward``: the model called as a user calls it: ``model(x, training=False)`` (Keras, eager)
  or ``model(x)`` under ``torch.no_grad()`` (native PyTorch);
* ``predict``: Keras's compiled inference, ``model.predict_on_batch(x)`` (a ``tf.function`` on
  TensorFlow, ``jax.jit`` on JAX, ``no_grad`` on PyTorch);
* ``gradcam`` and the ratios ``gradcam / forward``, ``gradcam / predict``;
* ``by hand`` and ``gradcam / by hand``: the least a Grad-CAM can cost, written by hand for
  this model and layer with none of camlens's checks: on native PyTorch a forward hook that
  makes the layer's output a leaf, the forward pass under ``no_grad`` until there,
  ``torch.autograd.grad`` of the top class's score to it, the weights, the weighted sum and the
  upsampled, normalised map; on Keras/TensorFlow the recipe of the Keras examples (a model with
  the layer's output and the prediction, a ``GradientTape``) in one ``tf.function``, then the
  same map. Where ``gradcam / by hand`` is near 1, what is left is the gradient itself; the
  rest of ``gradcam / predict`` is camlens's own work per call (checks, patches, the
  Explanation). Other backends: ``-``;
* ``param grads``: how many parameter gradients autograd computed during ``explain`` (a hook
  on every parameter counts them; PyTorch backends only: TensorFlow's tape watches only the
  probes, and JAX differentiates a function of the probes alone).

ResNet-50 has random weights (``keras.applications.ResNet50(weights=None)``; a torchvision-style
ResNet-50 built in ``_common.py``); EfficientNet-Lite0 has its ImageNet weights (camlens's Keras
port; the original PyTorch model). Inputs are random: timing does not depend on them.

    python benchmarks/speed_limit.py                    # every backend, both models, batch 1 and 8
    python benchmarks/speed_limit.py --backends torch   # native PyTorch only
    python benchmarks/speed_limit.py --smoke            # tiny models, same code path, seconds
    python benchmarks/speed_limit.py --device cuda --batches 1,8,64   # on a GPU (benchmarks/gpu.sh)

``--device cuda``: native PyTorch moves the model and the input to the GPU and waits for it
(``torch.cuda.synchronize()``) after each forward pass (``explain`` returns numpy maps, so it
has waited); Keras on torch uses the GPU by itself, JAX and TensorFlow where their CUDA builds
are installed, and each row's last column says where it ran. ``--device cpu`` (the default)
hides any GPU from the Keras processes (``CUDA_VISIBLE_DEVICES=""``). Without a CUDA device,
``--device cuda`` stops at once (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _common import child, emit, has, interleaved, machine, quiet, require_cuda, cuda_name, seconds, versions

BACKENDS = ("tensorflow", "jax", "torch-keras", "torch")
LABELS = {"tensorflow": "Keras/TensorFlow", "jax": "Keras/JAX", "torch-keras": "Keras/PyTorch", "torch": "PyTorch"}
MODELS = ("efficientnet-lite0", "resnet50")
TARGET = 1.5


def _count_param_grads(tensors: list[Any]) -> tuple[list[int], list[Any]]:
    """A hook on every tensor that requires grad, counting the gradients computed for it."""
    count = [0]

    def hook(g: Any) -> Any:
        count[0] += 1
        return g

    handles = [t.register_hook(hook) for t in tensors if getattr(t, "requires_grad", False)]
    return count, handles


def _keras_device(backend: str) -> str:
    """Where this process's Keras backend runs: ``cuda``, or ``cpu`` and why not the GPU."""
    if backend == "torch-keras":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu (torch sees no CUDA device)"
    if backend == "jax":
        import jax

        return "cuda" if jax.default_backend() == "gpu" else "cpu (no CUDA build of jax: pip install 'jax[cuda12]')"
    import tensorflow as tf

    return "cuda" if tf.config.list_physical_devices("GPU") else "cpu (no CUDA build of tensorflow)"


def measure(backend: str, model_name: str, batch: int, repeat: int, size: int, device: str = "cpu") -> dict[str, Any]:
    import camlens

    from _common import keras_model, torch_run

    rng = np.random.default_rng(0)
    if backend == "torch":
        net, x, forward = torch_run(model_name, batch, size, device)
        ran_on = device
        predict = None
        params = list(net.parameters())
    else:
        import keras

        net = keras_model(model_name)
        x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        ran_on = _keras_device(backend) if device == "cuda" else "cpu"

        def forward() -> Any:
            return keras.ops.convert_to_numpy(net(x, training=False))

        def predict() -> Any:
            return net.predict_on_batch(x)

        params = [v.value for v in net.weights] if backend == "torch-keras" else []

    def gradcam() -> Any:  # its maps come back as numpy arrays: the device has finished
        return camlens.explain(net, x, method="gradcam")

    fns = {"forward": forward, "gradcam": gradcam}
    if predict is not None:
        fns["predict"] = predict
    first = {name: seconds(fn) for name, fn in fns.items()}
    layer = gradcam().sites[0].label
    by_hand = _by_hand(backend, net, x, layer, size)
    if by_hand is not None:
        by_hand()  # its first call (tracing) is not reported
        fns["by hand"] = by_hand
    times = interleaved(fns, repeat)
    grads, handles = _count_param_grads(params)
    gradcam()
    for h in handles:
        h.remove()
    best = {name: min(ts) for name, ts in times.items()}
    return {
        "backend": backend,
        "model": model_name,
        "batch": batch,
        "layer": layer,
        "first": first,
        "best": best,
        "median": {name: float(np.median(ts)) for name, ts in times.items()},
        "param_grads": grads[0] if backend in ("torch", "torch-keras") else None,
        "device": ran_on,
    }


def _map(acts: np.ndarray, grads: np.ndarray, size: int) -> np.ndarray:
    """Grad-CAM of channels-last ``(N, h, w, C)`` activations and gradients, upsampled and
    normalised as camlens does (its own resize and normalise: the floor is the work, not a
    slower resize)."""
    from camlens.viz import normalize, resize_bilinear

    weights = grads.mean(axis=(1, 2))
    cam = np.maximum(np.einsum("nhwc,nc->nhw", acts, weights), 0.0)
    return normalize(resize_bilinear(cam, (size, size)))


def _by_hand(backend: str, net: Any, x: Any, layer: str, size: int) -> Any:
    """The hand-written Grad-CAM of the ``by hand`` column, or ``None`` on other backends."""
    if backend == "torch":
        import torch

        module = dict(net.named_modules())[layer.split("#")[0]]
        call = int(layer.split("#")[1]) if "#" in layer else 0  # "path#k": the call k, from 0

        def run() -> Any:
            seen: list[Any] = []

            def hook(mod: Any, args: Any, out: Any) -> Any:
                seen.append(out)
                if len(seen) - 1 != call:
                    return None
                leaf = out.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # record from here on
                seen[-1] = leaf
                return leaf

            handle = module.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    out = net(x)
                    with torch.enable_grad():
                        score = out.gather(1, out.argmax(1, keepdim=True)).sum()
                        (g,) = torch.autograd.grad(score, [seen[call]])
            finally:
                handle.remove()
            acts = seen[call].detach().permute(0, 2, 3, 1).cpu().numpy()
            return _map(acts, g.permute(0, 2, 3, 1).cpu().numpy(), size)

        return run
    if backend != "tensorflow":
        return None
    import keras
    import tensorflow as tf

    if "/" in layer or "#" in layer:  # inside a nested model, or a shared layer's later call
        return None
    both = keras.Model(net.inputs, [net.get_layer(layer).output, net.output])

    @tf.function(autograph=False)
    def program(xs: Any) -> Any:
        with tf.GradientTape() as tape:
            acts, preds = both(xs, training=False)
            score = tf.reduce_sum(tf.reduce_max(preds, axis=1))
        return acts, tape.gradient(score, acts)

    def run() -> Any:
        acts, grads = program(tf.convert_to_tensor(x))
        return _map(acts.numpy(), grads.numpy(), size)

    return run


def worker(backend: str, models: list[str], batches: list[int], repeat: int, size: int,
           device: str = "cpu") -> list[dict[str, Any]]:
    with quiet():
        return [measure(backend, m, b, repeat, size, device) for m in models for b in batches]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model at 32 px, for CI: same code path")
    parser.add_argument("--backends", default=None, help=f"comma-separated, from {','.join(BACKENDS)}")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls of each (default 5; smoke 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: native PyTorch on the GPU, and each Keras backend where its CUDA build "
                             "is installed (the row says where it ran); default cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    models = ["tiny"] if args.smoke else args.models.split(",")
    batches = [1, 2] if args.smoke else [int(b) for b in args.batches.split(",")]
    repeat = args.repeat or (2 if args.smoke else 5)
    size = 32 if args.smoke else 224
    if args.worker:
        emit(worker(args.worker, models, batches, repeat, size, args.device))
        return 0
    if args.device == "cuda":
        require_cuda()

    if args.backends:
        backends = args.backends.split(",")
    elif args.smoke:  # the backend the caller's process uses, and native PyTorch: seconds
        import os

        keras_backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        backends = ["torch-keras" if keras_backend == "torch" else keras_backend, "torch"]
    else:
        backends = list(BACKENDS)
    if not has("torch"):
        backends = [b for b in backends if not b.startswith("torch")]
        print("(torch is not installed: the PyTorch rows are skipped)")
    what = "smoke: tiny model, 32 px" if args.smoke else "224x224 px, random inputs"
    if args.device == "cuda":
        what += f", on {cuda_name()}"
    print(f"Grad-CAM against one forward pass ({what}); best of {repeat} calls, ms; first = first call")
    print(f"machine: {machine()}; {versions('numpy', 'keras', 'tensorflow-cpu', 'tensorflow', 'jax', 'torch')}")
    head = (
        f"{'backend':<17} {'model':<19} {'batch':>5} {'forward':>8} {'predict':>8} {'gradcam':>8} "
        f"{'/forward':>8} {'/predict':>8} {'by hand':>8} {'/by hand':>8} {'param grads':>11}  {'first: fwd/pred/cam':<22} layer" + ("  device" if args.device == "cuda" else "")
    )
    print(head)
    print("-" * len(head))
    script = Path(__file__).resolve()
    flags = ["--smoke"] if args.smoke else ["--models", ",".join(models), "--batches", ",".join(map(str, batches))]
    flags += ["--repeat", str(repeat), "--device", args.device]
    for backend in backends:
        env = {"KERAS_BACKEND": "torch" if backend == "torch-keras" else backend}
        if args.device == "cpu":  # on a GPU machine, the Keras backends would take the GPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        if backend == "torch":
            env["KERAS_BACKEND"] = "tensorflow"  # unused: native PyTorch imports no Keras
        rows = child(script, ["--worker", backend, *flags], env=env)
        for r in rows:
            best, first = r["best"], r["first"]
            fwd, pred, cam = best["forward"], best.get("predict"), best["gradcam"]
            hand = best.get("by hand")
            grads = "-" if r["param_grads"] is None else str(r["param_grads"])
            firsts = "/".join(_ms(first.get(k)) for k in ("forward", "predict", "gradcam"))
            print(
                f"{LABELS[backend]:<17} {r['model']:<19} {r['batch']:>5} {_ms(fwd):>8} {_ms(pred):>8} "
                f"{_ms(cam):>8} {cam / fwd:>8.2f} {'-' if pred is None else f'{cam / pred:.2f}':>8} "
                f"{_ms(hand):>8} {'-' if hand is None else f'{cam / hand:.2f}':>8} "
                f"{grads:>11}  {firsts:<22} {r['layer']}" + (f"  {r['device']}" if args.device == "cuda" else ""),
                flush=True,
            )
    print(f"target: gradcam within {TARGET}x of a forward pass, no parameter gradient")
    return 0


if __name__ == "__main__":
    sys.exit(main())
