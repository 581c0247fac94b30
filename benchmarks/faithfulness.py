"""Faithfulness of every method on real photos: deletion and insertion AUC, Average Drop and
Increase in Confidence with EfficientNet-Lite0 (ImageNet weights), and what each costs.

For each registered method (``camlens.methods.available_methods()``), one
``camlens.explain(model, photos, method)`` call explains the top class of every photo; then the
four metrics of :mod:`camlens.metrics` read the explanation, in the probability of the
explained class:

* ``deletion``: AUC of the curve as the most important pixels are set to 0 (mid-grey after
  EfficientNet-Lite0's ``(rgb - 127) / 128`` scaling), ``--steps`` steps; lower is better.
* ``insertion``: AUC as the most important pixels are put back into a blurred copy (sigma 5,
  11 taps); higher is better.
* ``avg drop %``: ``100 * mean max(0, Y - O) / Y``, ``O`` the probability on ``map * image``;
  lower is better. ``incr conf %``: the share of photos where ``O > Y``; higher is better.
* ``explain s/img``: the ``explain`` call's time over the photo count (first calls of each
  method included); ``metrics s/img``: the four metrics together, the same way.

Each column's best value among the methods carries a ``*``. The ``random map`` row (uniform
noise, seed 0, scored by the same metrics) is a reference, never marked best: a method that
does not beat it on a column says nothing the model agrees with there. Methods that are slow
on a CPU run with the lighter settings in ``SETTINGS`` (printed under the table); the others
with their defaults.

    python benchmarks/faithfulness.py                      # 3 photos, every method: ~11 min
    python benchmarks/faithfulness.py --photos 7           # every bundled photo (~25 min)
    python benchmarks/faithfulness.py --methods gradcam,scorecam --json /tmp/faith.json
    python benchmarks/faithfulness.py --smoke              # tiny random model, 32 px, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import machine, quiet, tiny_keras, versions

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Lighter settings for the methods that rerun the model hundreds of times per image. With them
# one photo takes about 3.5 minutes on 2 CPU cores (2026-11-22, TensorFlow, compiled forward
# passes), over 1 of them SS-CAM and IS-CAM (each of the 1280 channels of the explained layer
# scored twice, about 38 s a photo each), then Score-CAM (about 9 s: its constant channels
# share one scored copy) and RISE.
SETTINGS: dict[str, Callable[[], Any]] = {}
SMOKE_SETTINGS: dict[str, Callable[[], Any]] = {}


def _settings() -> None:
    from camlens import methods as m

    SETTINGS.update(
        sscam=lambda: m.SSCAM(n_samples=2, seed=0),  # paper: 35
        iscam=lambda: m.ISCAM(n_steps=2),  # paper: 10
        rise=lambda: m.RISE(n_masks=500, seed=0),  # default 1000, paper 4000
        integratedgradients=lambda: m.IntegratedGradients(steps=32),  # default 64
        occlusion=lambda: m.Occlusion(window=32, stride=16),  # default 28, stride 14
        smoothgrad=lambda: m.SmoothGrad(n_samples=16, seed=0),  # default 25
    )
    SETTINGS["smoothgradcam++"] = lambda: m.SmoothGradCAMPlusPlus(seed=0)  # defaults, seeded
    SMOKE_SETTINGS.update(
        sscam=lambda: m.SSCAM(n_samples=2, seed=0),
        iscam=lambda: m.ISCAM(n_steps=2),
        rise=lambda: m.RISE(n_masks=64, cell=4, seed=0),
        integratedgradients=lambda: m.IntegratedGradients(steps=8),
        occlusion=lambda: m.Occlusion(window=8, stride=4),
        smoothgrad=lambda: m.SmoothGrad(n_samples=4, seed=0),
        fastscorecam=lambda: m.FastScoreCAM(k=8),
    )
    SMOKE_SETTINGS["smoothgradcam++"] = lambda: m.SmoothGradCAMPlusPlus(n_samples=2, seed=0)
    SMOKE_SETTINGS.update(
        gradientshap=lambda: m.GradientShap(n_samples=4),
        lime=lambda: m.Lime(n_samples=16, segments="grid", grid=4),
        kernelshap=lambda: m.KernelShap(n_samples=16, segments="grid", grid=4),
    )


def describe(method: Any) -> str:
    """``SSCAM(n_samples=2, sigma=2.0, seed=0, batch_size=8)``: a method's settings."""
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(method).items() if not k.startswith("_"))
    return f"{type(method).__name__}({fields})"


def instance(name: str, smoke: bool) -> Any:
    from camlens.methods import get_method

    method = get_method(name)  # names the bad ones, with close matches
    table = SMOKE_SETTINGS if smoke else SETTINGS
    return table[method.name]() if method.name in table else method


# --- data -----------------------------------------------------------------------------------


def load(smoke: bool, count: int) -> tuple[Any, np.ndarray, list[str], str]:
    """The model, the images ``(N, H, W, 3)`` as it takes them, their names, and its name."""
    from camlens.samples import PHOTOS, photo

    names = list(PHOTOS)[:count]
    if smoke:
        from camlens.viz import resize_bilinear

        import keras

        keras.utils.set_random_seed(0)
        model = tiny_keras(32)
        # the bundled photos, scaled to [-1, 1] and shrunk to the tiny model's 32 px
        x = np.stack([resize_bilinear(np.moveaxis(photo(n) / 127.5 - 1.0, -1, 0), (32, 32)) for n in names])
        return model, np.moveaxis(x, 1, -1).astype(np.float32), names, "tiny random Keras model, 32 px"
    from camlens.models.efficientnet_lite import efficientnet_lite0, preprocess_batch

    model = efficientnet_lite0()
    return model, preprocess_batch([photo(n) for n in names]), names, "EfficientNet-Lite0 (Keras port, ImageNet weights)"


# --- measuring ------------------------------------------------------------------------------

COLUMNS = (  # key, header, higher is better
    ("deletion", "deletion", False),
    ("insertion", "insertion", True),
    ("average_drop", "avg_drop_%", False),
    ("increase_in_confidence", "incr_conf_%", True),
    ("explain_s", "explain_s/img", False),
    ("metrics_s", "metrics_s/img", False),
)


def metrics(model: Any, images: Any, maps: Any, steps: int, batch_size: int) -> dict[str, float]:
    """The four metrics' means over the images, and their time per image (seconds)."""
    from camlens import metrics as cm

    n = len(images.inputs[0]) if maps is None else len(images)
    curve = dict(steps=steps, batch_size=batch_size)
    start = time.perf_counter()
    out = {
        "deletion": cm.deletion(model, images, maps, **curve).value,
        "insertion": cm.insertion(model, images, maps, **curve).value,
        "average_drop": cm.average_drop(model, images, maps, batch_size=batch_size).value,
        "increase_in_confidence": cm.increase_in_confidence(model, images, maps, batch_size=batch_size).value,
    }
    out["metrics_s"] = (time.perf_counter() - start) / n
    return out


def measure(model: Any, x: np.ndarray, method: Any, steps: int, batch_size: int) -> dict[str, Any]:
    import camlens

    start = time.perf_counter()
    exp = camlens.explain(model, x, method=method)
    explain_s = (time.perf_counter() - start) / len(x)
    row = metrics(model, exp, None, steps, batch_size)
    row["explain_s"] = explain_s
    row["classes"] = [int(c) for c in exp.class_indices] if exp.class_indices is not None else None
    return row


def random_reference(model: Any, x: np.ndarray, steps: int, batch_size: int) -> dict[str, Any]:
    maps = np.random.default_rng(0).random(x.shape[:3])
    row = metrics(model, x, maps, steps, batch_size)
    row["explain_s"] = float("nan")
    return row


# --- the table ------------------------------------------------------------------------------


def best(rows: dict[str, dict[str, Any]]) -> dict[str, set[str]]:
    """For each column, the methods holding its best value (ties all marked)."""
    out: dict[str, set[str]] = {}
    for key, _, higher in COLUMNS:
        values = {m: r[key] for m, r in rows.items() if not r.get("reference") and np.isfinite(r[key])}
        if values:
            top = max(values.values()) if higher else min(values.values())
            out[key] = {m for m, v in values.items() if np.isclose(v, top, rtol=0, atol=1e-12)}
    return out


def cell(key: str, value: float) -> str:
    if not np.isfinite(value):
        return "-"
    if key in ("average_drop", "increase_in_confidence"):
        return f"{value:.1f}"
    if key.endswith("_s"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    marks = best(rows)
    width = max(len("method"), *(len(m) for m in rows))
    header = f"{'method':<{width}}" + "".join(f"  {h:>13}" for _, h, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, r in rows.items():
        cells = [cell(k, r[k]) + ("*" if name in marks.get(k, ()) else " ") for k, _, _ in COLUMNS]
        lines.append(f"{name:<{width}}" + "".join(f"  {c:>13}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 photos at 32 px (CI)")
    parser.add_argument("--photos", type=int, default=None, help="how many bundled photos (default 3; smoke 2)")
    parser.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="deletion/insertion steps (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="modified images per model call (default 32)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    from camlens.methods import available_methods
    from camlens.samples import PHOTOS

    _settings()
    names = available_methods() if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    chosen: dict[str, Any] = {}
    for n in names:
        try:
            method = instance(n, args.smoke)
        except ValueError as exc:
            parser.error(f"--methods: {exc}")
        if args.methods is None and getattr(method, "needs_attention", False):
            continue  # the models here are CNNs: no attention to read (rollout, LeGrad)
        chosen[method.name] = method
    if not chosen:
        parser.error("--methods names no method")
    count = args.photos if args.photos is not None else (2 if args.smoke else 3)
    if not 1 <= count <= len(PHOTOS):
        parser.error(f"--photos must be 1 to {len(PHOTOS)}, the bundled photos; got {count}")

    model, x, photo_names, model_name = load(args.smoke, count)
    import camlens
    from camlens.samples import top_k

    warm = camlens.explain(model, x, "gradcam")  # traces the model once, outside every timing
    print(f"model: {model_name}; photos: {', '.join(photo_names)}")
    if not args.smoke:
        for n, top in zip(photo_names, top_k(warm.outputs[0], k=1)):
            print(f"  {n}: {top[0][1]} ({top[0][2]:.0%})")
    print(f"deletion/insertion: {args.steps} steps, batch {args.batch_size}; score: probability of the top class")
    print(f"machine: {machine()}; {versions('keras', 'tensorflow', 'numpy')}\n", flush=True)

    rows: dict[str, dict[str, Any]] = {}
    with quiet():
        for name, method in chosen.items():
            start = time.perf_counter()
            rows[name] = measure(model, x, method, args.steps, args.batch_size)
            rows[name]["settings"] = describe(method)
            print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        rows["random_map"] = random_reference(model, x, args.steps, args.batch_size)
        rows["random_map"]["reference"] = True
    print(table(rows))
    print("\n* best in its column (random_map, uniform noise, is a reference and never marked)")
    print("lower is better: deletion, avg_drop_%, times; higher: insertion, incr_conf_%")
    changed = {m: rows[m]["settings"] for m in chosen if m in (SMOKE_SETTINGS if args.smoke else SETTINGS)}
    if changed:
        print("settings (the other methods: defaults):")
        for m, s in changed.items():
            print(f"  {m}: {s}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "machine": machine(), "model": model_name,
            "photos": photo_names, "steps": args.steps, "batch_size": args.batch_size,
            "versions": versions("keras", "tensorflow", "numpy"), "methods": rows,
        }, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
