"""The first call: the first ``camlens.explain`` of each method against the model's own first
compiled ``predict_on_batch``, each in a fresh Python process.

What a user waits for the first time is mostly compilation (tf.function tracing, XLA), which a
steady-state benchmark never sees. Per Keras backend, one fresh process builds the model and
times its first ``model.predict_on_batch(x)``; then, per method, another fresh process builds
the same model (random weights, same seed) and times its first ``camlens.explain(model, x,
method=M)``, predict never called first. Imports and the model's construction are not timed.
The ratio first explain / first predict is the issue's target (at most 1.5).

``--second-process`` (JAX only): the explain process runs twice with the persistent compilation
cache (``CAMLENS_JAX_CACHE``) in a fresh folder per method: the first run fills it (its time is
the ``explain`` column then), the second reads it (``2nd``, ``2nd/pred``).

    python benchmarks/first_call.py                       # DenseNet121, 224 px, every backend
    python benchmarks/first_call.py --backends jax --methods cam,gradcam --second-process
    python benchmarks/first_call.py --model efficientnetb0
    python benchmarks/first_call.py --smoke               # a tiny model, the caller's backend, CAM only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import child, emit, machine, quiet, tiny_keras, versions

HERE = Path(__file__).resolve()
METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "saliency", "integratedgradients")
BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("densenet121", "efficientnetb0", "mobilenetv2", "tiny")


def build(name: str, size: int) -> object:
    import keras

    keras.utils.set_random_seed(0)
    if name == "tiny":
        return tiny_keras(size)
    app = {"densenet121": keras.applications.DenseNet121, "efficientnetb0": keras.applications.EfficientNetB0,
           "mobilenetv2": keras.applications.MobileNetV2}[name]
    return app(weights=None, input_shape=(size, size, 3))


def worker(args: argparse.Namespace) -> None:
    """One timed first call in this fresh process: ``predict`` or ``explain``."""
    import keras

    import camlens

    model = build(args.model, args.size)
    x = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype(np.float32)
    start = time.perf_counter()
    if args.worker == "predict":
        model.predict_on_batch(x)
    else:
        with quiet():
            camlens.explain(model, x, method=args.method)
    emit({"seconds": time.perf_counter() - start, "backend": keras.backend.backend()})


def run(backend: str, args: argparse.Namespace, *extra: str, env: dict[str, str] | None = None) -> float:
    common = ["--model", args.model, "--size", str(args.size)]
    full = {"KERAS_BACKEND": backend, **(env or {})}
    if "CAMLENS_JAX_CACHE" not in full:
        full["CAMLENS_JAX_CACHE"] = ""  # the caller's own cache setting must not leak in
    got = child(HERE, [*common, *extra], env=full)
    assert got["backend"] == backend, got
    return float(got["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model, the caller's backend, cam only (CI)")
    parser.add_argument("--backends", default=None, help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--methods", default=None, help=f"comma-separated (default {','.join(METHODS)})")
    parser.add_argument("--model", default=None, choices=MODELS)
    parser.add_argument("--size", type=int, default=None, help="input size in pixels (224; 32 with --smoke)")
    parser.add_argument("--second-process", action="store_true",
                        help="JAX: a second explain process reading the persistent compilation cache")
    parser.add_argument("--worker", choices=("predict", "explain"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or ("tiny" if args.smoke else "densenet121")
    args.size = args.size or (32 if args.smoke else 224)
    if args.worker:
        worker(args)
        return 0

    from camlens.methods import available_methods

    default_backends = os.environ.get("KERAS_BACKEND", "tensorflow") if args.smoke else ",".join(BACKENDS)
    backends = [b for b in (args.backends or default_backends).split(",") if b]
    methods = [m for m in (args.methods or ("cam" if args.smoke else ",".join(METHODS))).split(",") if m]
    for b in backends:
        if b not in BACKENDS:
            parser.error(f"no backend {b!r}; they are {', '.join(BACKENDS)}")
    for m in methods:
        if m not in available_methods():
            parser.error(f"no method {m!r}; they are {', '.join(available_methods())}")

    print(f"first calls, each in a fresh process: {args.model} at {args.size} px, batch 1, random weights")
    print(machine())
    print(versions("keras", "tensorflow", "jax", "torch"))
    header = f"{'backend':<11} {'model':<15} {'method':<19} {'predict_s':>9} {'explain_s':>9} {'ratio':>6} " \
             f"{'2nd_s':>7} {'2nd/pred':>8}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for backend in backends:
        predict = run(backend, args, "--worker", "predict")
        for method in methods:
            second = None
            if args.second_process and backend == "jax":
                with tempfile.TemporaryDirectory(prefix="camlens-jax-cache-") as cache:
                    env = {"CAMLENS_JAX_CACHE": cache}
                    explain = run(backend, args, "--worker", "explain", "--method", method, env=env)
                    second = run(backend, args, "--worker", "explain", "--method", method, env=env)
            else:
                explain = run(backend, args, "--worker", "explain", "--method", method)
            worst = max(worst, explain / predict)
            tail = "      -        -" if second is None else f"{second:7.4g} {second / predict:8.2f}"
            # 4 significant digits: a tiny model's first call on torch takes a few milliseconds
            print(f"{backend:<11} {args.model:<15} {method:<19} {predict:9.4g} {explain:9.4g} "
                  f"{explain / predict:6.2f} {tail}", flush=True)
    print(f"target: first explain at most 1.5x the first predict_on_batch; worst ratio here {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
