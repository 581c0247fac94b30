"""How many model calls a deletion or insertion curve costs, against the bound of the issue.

A curve of ``S`` steps scores ``S + 1`` images (the unmodified image, then one more step of
pixels changed each time); :func:`camlens.metrics.deletion` and ``insertion`` send them to the
model ``B`` (``batch_size``) at a time, so one image costs ``ceil((S + 1) / B)`` model calls,
which is never more than the issue's bound ``S / B + 1``. For each metric, ``S`` and ``B`` on
one photo (EfficientNet-Lite0, ImageNet weights, its Grad-CAM map), the table gives:

* ``calls``: model calls counted at the adapter (a wrapper around camlens's own adapter counts
  every ``forward`` and ``score``), and ``.batches``, the count the result itself reports;
* ``ceil``: ``ceil((S + 1) / B)``, what one image needs; ``bound``: ``S / B + 1``; ``holds``:
  whether ``calls <= bound``;
* ``curve_s``: the whole metric call (masks, blur, model calls), the best of ``--repeat``;
  ``fwd_s``: one model call on ``B`` copies of the photo; ``model_s``: the same model calls
  as the curve, timed alone (``(S + 1) // B`` calls of ``B`` images and one of the rest), each
  the best of ``--repeat``; ``overhead``: ``curve_s / model_s`` (1.00: the curve costs nothing
  beyond its model calls).

    python benchmarks/metrics_speed.py                 # S = 50, 100, 224; B = 16, 32, 64
    python benchmarks/metrics_speed.py --steps 100 --batch-sizes 8,128
    python benchmarks/metrics_speed.py --smoke         # tiny random model at 32 px, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import numpy as np

from _common import machine, quiet, seconds, tiny_keras, versions

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CountingAdapter:
    """camlens's adapter for a model, counting the model calls made through it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._inner.forward(*args, **kwargs)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._inner.score(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # prepare, graph, capture...: the inner adapter's
        return getattr(self._inner, name)


def load(smoke: bool) -> tuple[Any, np.ndarray, str]:
    """The model, one image ``(1, H, W, 3)`` as it takes it, and the model's name."""
    if smoke:
        import keras

        keras.utils.set_random_seed(0)
        image = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
        return tiny_keras(32), image, "tiny random Keras model, 32 px"
    from camlens.models.efficientnet_lite import efficientnet_lite0, preprocess_batch
    from camlens.samples import photo

    return efficientnet_lite0(), preprocess_batch([photo("chelsea")]), "EfficientNet-Lite0 (ImageNet weights), chelsea photo"


def ints(text: str, flag: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{flag} takes comma-separated whole numbers; got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{flag} takes whole numbers of at least 1; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model at 32 px (CI)")
    parser.add_argument("--steps", default=None, help="comma-separated S (default 50,100,224; smoke 10,25)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated B (default 16,32,64; smoke 4,8)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs of each, best kept (default 2; smoke 1)")
    args = parser.parse_args(argv)
    steps = ints(args.steps or ("10,25" if args.smoke else "50,100,224"), "--steps", parser)
    sizes = ints(args.batch_sizes or ("4,8" if args.smoke else "16,32,64"), "--batch-sizes", parser)
    repeat = args.repeat or (1 if args.smoke else 2)

    import camlens
    from camlens import metrics as cm
    from camlens.adapters import adapt

    model, x, name = load(args.smoke)
    adapter = CountingAdapter(adapt(model))
    exp = camlens.explain(model, x, "gradcam")
    print(f"model: {name}; map: Grad-CAM of the top class; score: its probability")
    print(f"machine: {machine()}; {versions('keras', 'tensorflow', 'numpy')}\n", flush=True)

    forward: dict[int, float] = {0: 0.0}

    def fwd(b: int) -> float:
        """Seconds of one model call on ``b`` images (the best of ``repeat``)."""
        if b not in forward:
            batch = np.repeat(x, b, axis=0)
            adapter.forward([batch])  # the first call of a batch shape may trace it
            forward[b] = min(seconds(lambda: adapter.forward([batch])) for _ in range(repeat))
        return forward[b]

    header = (f"{'metric':<9}  {'S':>4}  {'B':>3}  {'calls':>5}  {'.batches':>8}  {'ceil':>4}  "
              f"{'bound':>6}  {'holds':>5}  {'curve_s':>7}  {'fwd_s':>6}  {'model_s':>7}  {'overhead':>8}")
    print(header)
    print("-" * len(header))
    held = True
    with quiet():
        for metric in ("deletion", "insertion"):
            fn = getattr(cm, metric)
            fn(adapter, exp, steps=min(steps), batch_size=min(sizes))  # first-call costs, untimed
            for s in steps:
                for b in sizes:
                    times, counts = [], set()
                    for _ in range(repeat):
                        adapter.calls = 0
                        holder: list[Any] = []
                        times.append(seconds(lambda: holder.append(fn(adapter, exp, steps=s, batch_size=b))))
                        counts.add((adapter.calls, holder[0].batches))
                    (calls, batches), = counts  # the same every run
                    bound = s / b + 1
                    model_s = (s + 1) // b * fwd(b) + fwd((s + 1) % b)
                    ok = calls <= bound and batches == calls
                    held &= ok
                    print(f"{metric:<9}  {s:>4}  {b:>3}  {calls:>5}  {batches:>8}  {math.ceil((s + 1) / b):>4}  "
                          f"{bound:>6.2f}  {'yes' if ok else 'NO':>5}  {min(times):>7.2f}  {fwd(b):>6.3f}  "
                          f"{model_s:>7.2f}  {min(times) / model_s:>8.2f}", flush=True)
    print("\nS steps, B batch size; bound = S / B + 1 (the issue's); ceil = ceil((S + 1) / B), the calls one "
          "image needs; times in seconds, best of", repeat)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
