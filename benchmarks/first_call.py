"""The first call: the first ``camlens.explain`` of each method against the model's own first
compiled ``predict_on_batch``, each in a fresh Python process.

What a user waits for the first time is mostly compilation (tf.function tracing, XLA), which a
steady-state benchmark never sees. Per backend, one fresh process builds the model and times
its first ``model.predict_on_batch(x)``; then, per method, another fresh process builds the
same model (random weights, same seed) and times its first ``camlens.explain(model, x,
method=M)``, predict never called first. Imports and the model's construction are not timed.
The ratio first explain / first predict (``ratio``) is the issue's target (at most 1.5).

Backends: the Keras ones (``tensorflow``, ``jax``, ``torch``: ``KERAS_BACKEND``; on torch
``predict_on_batch`` runs eagerly under ``no_grad``, nothing is compiled) and ``torch-native``,
a PyTorch module (``--torch-model``, built by ``_common.torch_model``) whose "predict" is its
first ``with torch.no_grad(): model(x)`` and whose explain is ``camlens.explain(module, x)``
on the NCHW tensor.

Where one predict is not the work a method has to do, the last three columns give a fairer
bound, also built from the model's own first calls in fresh processes:

- ``runs``: the model runs explain made, counted at camlens's adapter (its ``score``,
  ``input_gradients`` and ``input_capture``): ``1`` is the first pass (a forward one), ``1g``
  a first pass that took the input gradient too (Saliency, Input x Gradient: one forward and
  one backward pass), then ``+KxB`` for K reruns of B images scored and ``+KxBg`` for K
  input-gradient runs of B images (Score-CAM: one image per channel, 8 a run; Integrated
  Gradients: 64 path points, 32 a run, and 2 images scored for its completeness check).
- ``ref_s``: what those runs cost the model itself: the first pass's reference (the first
  ``predict_on_batch``, or for ``1g`` the model's own first compiled input gradient: JAX
  ``jax.jit(jax.grad(...))`` of ``model.stateless_call``, TensorFlow a ``tf.function`` with a
  ``GradientTape`` on the input, torch one forward and one ``torch.autograd.grad`` to the
  input), then for each batch size B of the reruns its compilation once (the model's first
  call at B minus its steady call at B, in a process that had called it at batch 1 already;
  a gradient at batch 1 after a forward first pass: the model's first input gradient in its
  fresh process) and K steady calls at B (the median of 5 at batch 1, 3 above). So
  ``ref_s`` is compilation plus computation at the model's own speed; the reference processes
  run after the explain ones, which is how they know the batch sizes. A few steady calls
  stand for K of them: on a shared machine read a Score-CAM ``expl/ref`` of 1.5 or 2 as
  noise until a steady run in one process says otherwise.
- ``expl/ref``: explain_s / ref_s; above 1 is what camlens adds besides the model's own
  compilation and computation. The target stays ``ratio``; for Score-CAM and Integrated
  Gradients (hundreds of images through the model) no first call can be 1.5x one predict.

``--repeat N``: each cell is the fastest of N fresh processes (on a machine shared with other
work the same first call varies by 2x from one process to the next).

``--threads N``: torch's threads (``torch.set_num_threads``) in the torch processes, predict
and explain alike. On a machine whose cores other processes use, torch's OpenMP threads wait
for each other at every operation, and a first forward pass takes 0.03 s or 2 s by chance;
one thread removes that. (TensorFlow and JAX keep their own thread pools.)

``--second-process`` (JAX only): the explain process runs twice with the persistent compilation
cache (``CAMLENS_JAX_CACHE``) in a fresh folder per method: the first run fills it (its time is
the ``explain`` column then), the second reads it (``2nd``, ``2nd/pred``).

    python benchmarks/first_call.py                       # DenseNet121, 224 px, the Keras backends
    python benchmarks/first_call.py --backends jax --methods cam,gradcam --second-process
    python benchmarks/first_call.py --backends torch,torch-native --model mobilenetv2 \
        --torch-model efficientnet-lite0 --methods cam,saliency,scorecam
    python benchmarks/first_call.py --smoke               # a tiny model, the caller's backend
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import child, emit, keras_model, machine, quiet, tiny_keras, torch_model, versions

HERE = Path(__file__).resolve()
METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "saliency", "integratedgradients")
BACKENDS = ("tensorflow", "jax", "torch", "torch-native")
LABELS = {"tensorflow": "Keras/TensorFlow", "jax": "Keras/JAX", "torch": "Keras/PyTorch", "torch-native": "PyTorch"}
MODELS = ("densenet121", "efficientnetb0", "mobilenetv2", "efficientnet-lite0", "tiny")
TORCH_MODELS = ("efficientnet-lite0", "resnet50", "tiny")


def build(name: str, size: int) -> object:
    import keras

    keras.utils.set_random_seed(0)
    if name == "tiny":
        return tiny_keras(size)
    if name == "efficientnet-lite0":
        return keras_model(name)  # camlens's Keras port, ImageNet weights, 224 px
    app = {"densenet121": keras.applications.DenseNet121, "efficientnetb0": keras.applications.EfficientNetB0,
           "mobilenetv2": keras.applications.MobileNetV2}[name]
    return app(weights=None, input_shape=(size, size, 3))


# --- counting the model runs at camlens's adapter ---------------------------------------------


class RunLog:
    """The model runs of one explain: ``first`` ("forward" or "gradient") and ``calls``, a list
    of ``(kind, images)`` with kind "score" or "gradient". Only the outermost adapter call
    counts (an adapter method calling another is one run)."""

    def __init__(self) -> None:
        self.first = "forward"
        self.calls: list[tuple[str, int]] = []
        self.depth = 0

    def wrap(self, cls: type, name: str, kind: str) -> None:
        inner = getattr(cls, name, None)
        if inner is None:
            return
        log = self

        def counted(adapter: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            log.depth += 1
            try:
                out = inner(adapter, inputs, *args, **kwargs)
            finally:
                log.depth -= 1
            if log.depth == 0:
                if kind == "capture":
                    if out is not None:
                        log.first = "gradient"
                else:
                    log.calls.append((kind, int(np.shape(inputs[0])[0])))
            return out

        setattr(cls, name, counted)

    def install(self, native_torch: bool) -> None:
        if native_torch:
            from camlens.adapters.torch.adapter import TorchAdapter as cls
        else:
            from camlens.adapters.keras.adapter import KerasAdapter as cls
        self.wrap(cls, "score", "score")
        self.wrap(cls, "input_gradients", "gradient")
        self.wrap(cls, "input_capture", "capture")

    def summary(self) -> dict[str, Any]:
        """``{"first": ..., "groups": [[kind, images, count], ...]}``, groups in first-seen order."""
        groups: dict[tuple[str, int], int] = {}
        for call in self.calls:
            groups[call] = groups.get(call, 0) + 1
        return {"first": self.first, "groups": [[k, b, n] for (k, b), n in groups.items()]}


def runs_label(runs: dict[str, Any]) -> str:
    out = "1g" if runs["first"] == "gradient" else "1"
    for kind, batch, count in runs["groups"]:
        out += f"+{count}x{batch}{'g' if kind == 'gradient' else ''}"
    return out


# --- the worker processes ---------------------------------------------------------------------


def inputs(args: argparse.Namespace, backend: str, batch: int = 1) -> Any:
    """The input at ``batch`` images: NHWC numpy for Keras, an NCHW tensor for native torch."""
    rng = np.random.default_rng(0)
    if backend == "torch-native":
        import torch

        return torch.from_numpy(rng.standard_normal((batch, 3, args.size, args.size)).astype(np.float32))
    return rng.uniform(0, 255, (batch, args.size, args.size, 3)).astype(np.float32)


def model_calls(args: argparse.Namespace, backend: str, model: Any) -> tuple[Any, Any]:
    """``(predict, grad)``: the model's own forward pass and its own input gradient (of the
    top class's score summed over the batch), as a user of each framework writes them, each
    taking the input and returning once the values are computed."""
    if backend == "torch-native":
        import torch

        def predict(x: Any) -> Any:
            with torch.no_grad():
                return model(x)

        def grad_native(x: Any) -> Any:
            x = x.clone().requires_grad_(True)
            return torch.autograd.grad(model(x).max(dim=1).values.sum(), x)[0]

        return predict, grad_native
    if backend == "torch":
        import torch

        def grad_torch(x: Any) -> Any:
            xt = torch.from_numpy(x).requires_grad_(True)
            return torch.autograd.grad(model(xt, training=False).max(dim=-1).values.sum(), xt)[0]

        return model.predict_on_batch, grad_torch
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        fixed = [v.value for v in model.non_trainable_variables]

        def score(x: Any, trainable: Any, fixed: Any) -> Any:
            out, _ = model.stateless_call(trainable, fixed, x, training=False)
            return out.max(axis=-1).sum()

        compiled = jax.jit(jax.grad(score))
        return model.predict_on_batch, lambda x: compiled(x, trainable, fixed).block_until_ready()
    import tensorflow as tf

    @tf.function  # as predict_on_batch on the CPU: a traced graph, no XLA (Keras's "auto")
    def grad_tf(x: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            s = tf.reduce_sum(tf.reduce_max(model(x, training=False), axis=-1))
        return tape.gradient(s, x)

    return model.predict_on_batch, lambda x: grad_tf(tf.constant(x)).numpy()


def worker(args: argparse.Namespace) -> None:
    """One timed first call in this fresh process: ``predict``, ``grad`` (the model's own) or
    ``explain``; ``predict`` and ``grad`` then time a first and steady calls at ``--batches``."""
    import camlens

    backend = "torch-native" if args.native else None
    if args.threads and (args.native or os.environ.get("KERAS_BACKEND") == "torch"):
        import torch

        torch.set_num_threads(args.threads)
    if backend:
        model = torch_model(args.torch_model)
    else:
        import keras

        backend = keras.backend.backend()
        model = build(args.model, args.size)
    x = inputs(args, backend)
    out: dict[str, Any] = {"backend": backend}
    if args.worker == "explain":
        log = RunLog()
        log.install(backend == "torch-native")
        start = time.perf_counter()
        with quiet():
            camlens.explain(model, x, method=args.method)
        out["seconds"] = time.perf_counter() - start
        out["runs"] = log.summary()
    else:
        call = model_calls(args, backend, model)[args.worker == "grad"]
        start = time.perf_counter()
        call(x)
        out["seconds"] = time.perf_counter() - start
        out["batches"] = {}
        for batch in [int(b) for b in args.batches.split(",") if b]:
            xb = inputs(args, backend, batch)
            first = time.perf_counter()
            call(xb)
            first = time.perf_counter() - first
            steady = []
            for _ in range(5 if batch == 1 else 3):
                t = time.perf_counter()
                call(xb)
                steady.append(time.perf_counter() - t)
            out["batches"][str(batch)] = {"first": first, "steady": statistics.median(steady)}
    emit(out)


def run(backend: str, args: argparse.Namespace, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The worker's result; with ``--repeat N`` the fastest of N fresh processes (the one least
    disturbed by the machine's other work)."""
    got = [run_once(backend, args, *extra, env=env) for _ in range(args.repeat)]
    return min(got, key=lambda g: g["seconds"])


def run_once(backend: str, args: argparse.Namespace, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    common = ["--model", args.model, "--torch-model", args.torch_model, "--size", str(args.size),
              "--threads", str(args.threads)]
    if backend == "torch-native":
        common.append("--native")
    full = {"KERAS_BACKEND": "torch" if backend == "torch-native" else backend, **(env or {})}
    if "CAMLENS_JAX_CACHE" not in full:
        full["CAMLENS_JAX_CACHE"] = ""  # the caller's own cache setting must not leak in
    got = child(HERE, [*common, *extra], env=full)
    assert got["backend"] == backend, got
    return got


def reference(runs: dict[str, Any], refs: dict[str, dict[str, Any]]) -> float:
    """``ref_s`` (see the module docstring) from the explain's runs and the model's own calls."""
    first_kind = "grad" if runs["first"] == "gradient" else "predict"
    total = refs[first_kind]["seconds"]
    for kind, batch, count in runs["groups"]:
        own = "grad" if kind == "gradient" else "predict"
        timed = refs[own]["batches"][str(batch)]
        # at batch 1 the worker's "first" is its second call; the program of the other kind
        # than the first pass compiled at its fresh process's first call
        first = refs[own]["seconds"] if batch == 1 and own != first_kind else timed["first"]
        total += max(first - timed["steady"], 0.0) + count * timed["steady"]
    return total


def needed(runs: list[dict[str, Any]]) -> dict[str, set[int]]:
    """The reference processes' batch sizes: ``{"predict": {...}, "grad": {...}}``; the
    ``grad`` one runs only where some explain took an input gradient."""
    out: dict[str, set[int]] = {"predict": set()}
    for r in runs:
        if r["first"] == "gradient":
            out.setdefault("grad", set())
        for kind, batch, _ in r["groups"]:
            out.setdefault("grad" if kind == "gradient" else "predict", set()).add(batch)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model, the caller's backend (and torch-native on torch), "
                             "cam, saliency, scorecam (CI)")
    parser.add_argument("--backends", default=None, help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--methods", default=None, help=f"comma-separated (default {','.join(METHODS)})")
    parser.add_argument("--model", default=None, choices=MODELS, help="the Keras model (densenet121)")
    parser.add_argument("--torch-model", default=None, choices=TORCH_MODELS,
                        help="torch-native's model (efficientnet-lite0, 224 px)")
    parser.add_argument("--size", type=int, default=None, help="input size in pixels (224; 32 with --smoke)")
    parser.add_argument("--second-process", action="store_true",
                        help="JAX: a second explain process reading the persistent compilation cache")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per cell, the fastest reported (1; on a busy machine 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch's threads in the torch processes (default: torch's own; 1 on a busy machine)")
    parser.add_argument("--worker", choices=("predict", "grad", "explain"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--native", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or ("tiny" if args.smoke else "densenet121")
    args.torch_model = args.torch_model or ("tiny" if args.smoke else "efficientnet-lite0")
    args.size = args.size or (32 if args.smoke else 224)
    if args.worker:
        worker(args)
        return 0

    from camlens.methods import available_methods

    caller = os.environ.get("KERAS_BACKEND", "tensorflow")
    if args.smoke:
        default_backends = caller + (",torch-native" if caller == "torch" else "")
    else:
        default_backends = "tensorflow,jax,torch"
    backends = [b for b in (args.backends or default_backends).split(",") if b]
    methods = [m for m in (args.methods or ("cam,saliency,scorecam" if args.smoke else ",".join(METHODS))).split(",")
               if m]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"no backend {b!r}; they are {', '.join(BACKENDS)}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1; got {args.repeat}")
    for m in methods:
        if m not in available_methods():
            parser.error(f"no method {m!r}; they are {', '.join(available_methods())}")

    print(f"first calls, each in a fresh process: Keras {args.model}, torch-native {args.torch_model}, at "
          f"{args.size} px, batch 1, the fastest of {args.repeat} process(es) per cell"
          + (f", torch on {args.threads} thread(s)" if args.threads else ""))
    print(machine())
    print(versions("keras", "tensorflow-cpu", "tensorflow", "jax", "torch"))
    header = (f"{'backend':<12} {'model':<18} {'method':<19} {'predict_s':>9} {'explain_s':>9} {'ratio':>6} "
              f"{'2nd_s':>7} {'2nd/pred':>8} {'runs':>16} {'ref_s':>8} {'expl/ref':>8}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for backend in backends:
        model = args.torch_model if backend == "torch-native" else args.model
        rows = []
        for method in methods:
            second = None
            if args.second_process and backend == "jax":
                pairs = []
                for _ in range(args.repeat):  # a fresh cache folder for each pair
                    with tempfile.TemporaryDirectory(prefix="camlens-jax-cache-") as cache:
                        env = {"CAMLENS_JAX_CACHE": cache}
                        pairs.append((run_once(backend, args, "--worker", "explain", "--method", method, env=env),
                                      run_once(backend, args, "--worker", "explain", "--method", method, env=env)))
                got = min((p[0] for p in pairs), key=lambda g: g["seconds"])
                second = min(p[1]["seconds"] for p in pairs)
            else:
                got = run(backend, args, "--worker", "explain", "--method", method)
            rows.append((method, got["seconds"], second, got["runs"]))
        # the model's own calls, after the explains: the batch sizes are the ones explain ran
        refs = {kind: run(backend, args, "--worker", kind, "--batches", ",".join(str(b) for b in sorted(sizes)))
                for kind, sizes in needed([r[3] for r in rows]).items()}
        predict = refs["predict"]["seconds"]
        for method, explain, second, runs in rows:
            worst = max(worst, explain / predict)
            ref = reference(runs, refs)
            tail = "      -        -" if second is None else f"{second:7.4g} {second / predict:8.2f}"
            # 4 significant digits: a tiny model's first call on torch takes a few milliseconds
            print(f"{backend:<12} {model:<18} {method:<19} {predict:9.4g} {explain:9.4g} "
                  f"{explain / predict:6.2f} {tail} {runs_label(runs):>16} {ref:8.4g} {explain / ref:8.2f}",
                  flush=True)
    print(f"target: first explain at most 1.5x the first predict_on_batch; worst ratio here {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
