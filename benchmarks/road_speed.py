"""ROAD's cost per image at 224 px with the default settings, before and after the faster
imputation, measured in one run (issue 18, target 4: at most 1.5 s per image, same numbers).

One photo (chelsea), its Grad-CAM map, EfficientNet-Lite0; ``metrics.road(model, exp)`` with
every default (9 fractions, MoRF and LeRF: 18 imputations and 19 model inputs per image). The
``before`` rows run the same call with the imputation camlens used until 2026-12-06
(``_road_before.py``) patched in. Rows, each the best of ``--repeat`` calls taken in turns:

* ``road``: the whole ``metrics.road`` call, seconds per image;
* ``imputation``: ``noisy_linear_imputation`` alone on the 18 masks ``road`` builds;
* ``rest``: ``road - imputation`` (the model calls, ranking, noise);
* ``*_cpu_s``: the same calls' CPU time (all threads), which a busy machine inflates less than
  wall time (the model's threads may make it exceed the wall time on an idle one).

Then the ratios before / after, the largest difference of the ROAD curves and of the imputed
pixels between the two, and how far each is from a tight solve (tolerance 1e-12).

    python benchmarks/road_speed.py             # EfficientNet-Lite0, 224 px (about a minute)
    python benchmarks/road_speed.py --smoke     # tiny random model at 32 px, seconds
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

import numpy as np

from _common import interleaved, machine, quiet, versions

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TARGET_S = 1.5


def road_masks(map_: np.ndarray, percentages: np.ndarray) -> np.ndarray:
    """The ``(2P, H, W)`` masks ``metrics.road`` imputes for one map (MoRF, then LeRF)."""
    from camlens.metrics._common import stable_ranks

    h, w = map_.shape
    counts = np.floor(percentages * h * w + 0.5).astype(np.int64)
    return np.concatenate([stable_ranks(map_, descending=d)[None] < counts[:, None, None] for d in (True, False)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model at 32 px (CI)")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls of each, best kept (default 3; smoke 1)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.smoke else 3)
    if repeat < 1:
        parser.error(f"--repeat takes a whole number of at least 1; got {repeat}")

    import camlens
    from camlens import metrics
    from metrics_speed import load

    import _road_before

    module = importlib.import_module("camlens.metrics.road")  # the package's `road` is the function
    after_impute = module.noisy_linear_imputation
    model, x, name = load(args.smoke)
    exp = camlens.explain(model, x, "gradcam")
    print(f"model: {name}; map: Grad-CAM of the top class; metrics.road with its defaults")
    print(f"machine: {machine()}; {versions('keras', 'tensorflow', 'numpy')}\n", flush=True)

    results: dict[str, Any] = {}

    def road(version: str) -> None:
        module.noisy_linear_imputation = _road_before.noisy_linear_imputation if version == "before" else after_impute
        try:
            results[version] = metrics.road(model, exp)
        finally:
            module.noisy_linear_imputation = after_impute

    pct = np.asarray((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))  # road's default
    image = np.asarray(x[0], np.float64)
    masks = road_masks(np.asarray(exp.maps)[0, 0], pct)
    imputed: dict[str, np.ndarray] = {}

    def impute(version: str) -> None:
        fn = _road_before.noisy_linear_imputation if version == "before" else after_impute
        imputed[version] = fn(image, masks, noise=0)

    with quiet():
        road("after")  # first-call costs (tracing the model), untimed
        cpu: dict[str, list[float]] = {}
        times = interleaved({"road before": lambda: road("before"), "road after": lambda: road("after"),
                             "impute before": lambda: impute("before"),
                             "impute after": lambda: impute("after")}, repeat, cpu)
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    header = (f"{'version':<8}  {'road_s/img':>10}  {'imputation_s':>12}  {'rest_s':>6}  {'road_cpu_s':>10}  "
              f"{'imputation_cpu_s':>16}")
    print(header)
    print("-" * len(header))
    for version in ("before", "after"):
        r, i = best[f"road {version}"], best[f"impute {version}"]
        print(f"{version:<8}  {r:>10.2f}  {i:>12.2f}  {r - i:>6.2f}  {best_cpu[f'road {version}']:>10.2f}  "
              f"{best_cpu[f'impute {version}']:>16.2f}")
    print()
    print(f"before / after: road {best['road before'] / best['road after']:.2f}x, "
          f"imputation {best['impute before'] / best['impute after']:.2f}x (CPU time: road "
          f"{best_cpu['road before'] / best_cpu['road after']:.2f}x, imputation "
          f"{best_cpu['impute before'] / best_cpu['impute after']:.2f}x)")
    curves = max(float(np.abs(getattr(results["before"], k) - getattr(results["after"], k)).max())
                 for k in ("morf", "lerf", "clean", "combined"))
    tight = after_impute(image, masks, noise=0, tol=1e-12, max_iter=1000)
    print(f"largest difference before - after: ROAD curves {curves:.1e}, imputed pixels "
          f"{np.abs(imputed['before'] - imputed['after']).max():.1e}")
    print(f"imputed pixels against a tight solve (tol 1e-12): before {np.abs(imputed['before'] - tight).max():.1e}, "
          f"after {np.abs(imputed['after'] - tight).max():.1e} (image values span "
          f"{image.min():.2f} to {image.max():.2f})")
    size = f"{x.shape[1]} px" + (" (smoke: not the target's size)" if args.smoke else "")
    wall, used = best["road after"], best_cpu["road after"]
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if hasattr(os, "getloadavg") else ""
    print(f"target: ROAD at most {TARGET_S} s per image at 224 px with the default settings, at {size}: "
          f"wall {wall:.2f} s, {'met' if wall <= TARGET_S else 'NOT met'}; CPU {used:.2f} s, "
          f"{'within' if used <= TARGET_S else 'NOT within'} ({load}; an idle machine's wall time "
          f"is about the CPU time or less)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
