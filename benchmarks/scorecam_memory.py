"""Peak memory and time of Score-CAM on EfficientNet-Lite0, and what Faster Score-CAM costs.

Each configuration runs in a fresh Python process (so one run's caches and allocator pools do
not inflate the next): it builds the model, runs one forward pass (weights built, kernels
loaded), reads the process's resident set size (RSS), then times one
``camlens.explain(model, x, method=...)`` call at the default batch sizes. Memory reported:

* ``base MiB``: RSS just before the call (Python, the framework, the model, one image);
* ``peak MiB``: the growth of RSS during the call above that base. The peak is the larger of
  a thread sampling ``/proc/self/statm`` every millisecond and, when the call raised the
  process's lifetime peak, ``getrusage(RUSAGE_SELF).ru_maxrss`` (which catches spikes
  between samples).

The issue's target is a peak growth under 1 GiB at the default batch size: Score-CAM builds
``ScoreCAM.batch_size`` (8) masked copies at a time and ``explain`` runs them through the
model at most ``batch_size`` (16) at a time, whatever the channel count. The peak therefore
grows with the images per forward pass, not with the channels: compare the Faster Score-CAM
rows, and try ``--batch-size 32``.

The full run also compares Faster Score-CAM (``fastscorecam``: only the ``k`` channels of
largest spatial variance are scored) with Score-CAM on bundled photos: the Pearson
correlation of the maps, and the relative drop of the explained class's probability when only
the top 20% pixels of each map are kept (the others set to 0, mid-grey after preprocessing),
``max(0, p - p_kept) / p``, lower is more faithful.

    python benchmarks/scorecam_memory.py           # EfficientNet-Lite0, Keras and PyTorch
    python benchmarks/scorecam_memory.py --smoke   # tiny models, same code path, seconds
    python benchmarks/scorecam_memory.py --only keras --batch-size 32 --no-faithfulness
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1024 * 1024
PHOTOS = ("chelsea", "coffee", "rocket")
FAITHFUL_KS = (16, 64, 256)
KEEP = 0.2
EXPLAIN_BATCH = 16  # camlens.explain's default batch_size: the most images per forward pass

# name -> (framework, method, k)
CONFIGS: dict[str, tuple[str, str, int | None]] = {
    "keras scorecam": ("keras", "scorecam", None),
    "keras fastscorecam k=64": ("keras", "fastscorecam", 64),
    "torch scorecam": ("torch", "scorecam", None),
    "torch fastscorecam k=64": ("torch", "fastscorecam", 64),
}


# --- memory: shared with the other benchmarks -----------------------------------------------

from _common import PeakSampler, max_rss_bytes, rss_bytes  # noqa: E402  (this folder is on sys.path)


# --- models ---------------------------------------------------------------------------------


def keras_model(smoke: bool) -> tuple[Any, np.ndarray]:
    """The model and one input image ``(1, H, W, 3)``."""
    if smoke:
        import keras

        inputs = keras.Input((32, 32, 3))
        h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
        h = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, keras.layers.Dense(10)(h))
        return model, np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype("float32")
    from camlens.models import efficientnet_lite0, preprocess_batch
    from camlens.samples import photo

    return efficientnet_lite0(), preprocess_batch([photo("chelsea")])


def torch_model(smoke: bool) -> tuple[Any, Any]:
    """The native PyTorch model and one input image ``(1, 3, H, W)``."""
    import torch

    if smoke:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 24, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 10),
        )  # fmt: skip
        return net.eval(), torch.randn(1, 3, 32, 32)
    from efficientnet_lite_pytorch import EfficientNet

    from camlens.models import efficientnet_lite as lite
    from camlens.models import preprocess_batch
    from camlens.samples import photo

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(lite.weights_path(), weights_only=True, map_location="cpu"))
    x = preprocess_batch([photo("chelsea")]).transpose(0, 3, 1, 2)
    return net.eval(), torch.from_numpy(np.ascontiguousarray(x))


def method_for(name: str, k: int | None, smoke: bool, batch_size: int | None) -> Any:
    """The method at its default batch size, unless one is given."""
    from camlens.methods import FastScoreCAM, ScoreCAM

    kw = {} if batch_size is None else {"batch_size": batch_size}
    if name == "scorecam":
        return ScoreCAM(**kw)
    return FastScoreCAM(k=(4 if smoke else k) or 64, **kw)


# --- one configuration, in its own process ----------------------------------------------------


def run_config(config: str, smoke: bool, batch_size: int | None = None) -> dict[str, Any]:
    import camlens

    framework, method_name, k = CONFIGS[config]
    model, x = (keras_model if framework == "keras" else torch_model)(smoke)
    if framework == "torch":
        import torch

        with torch.no_grad():
            model(x)
    else:
        model(x, training=False)
    method = method_for(method_name, k, smoke, batch_size)
    base = rss_bytes()
    lifetime_before = max_rss_bytes()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        exp = camlens.explain(model, x, method=method, batch_size=EXPLAIN_BATCH)
    seconds = time.perf_counter() - start
    lifetime_after = max_rss_bytes()
    peak = max(sampler.peak, lifetime_after if lifetime_after > lifetime_before else 0)
    return {
        "config": config.replace("k=64", f"k={method.k}") if method_name == "fastscorecam" else config,
        "layer": exp.sites[0].label,
        "channels": int(exp.sites[0].shape[-1]),
        "batch": f"{method.batch_size}/{min(method.batch_size, EXPLAIN_BATCH)}",
        "seconds": seconds,
        "base_mib": None if base is None else base / MIB,
        "peak_mib": None if base is None else (peak - base) / MIB,
    }


def run_faithfulness() -> list[dict[str, Any]]:
    """Faster Score-CAM against Score-CAM on bundled photos, Keras EfficientNet-Lite0."""
    import keras

    import camlens
    from camlens.methods import FastScoreCAM, ScoreCAM
    from camlens.models import efficientnet_lite0, preprocess_batch
    from camlens.samples import photos

    model = efficientnet_lite0()
    x = preprocess_batch(list(photos(list(PHOTOS)).values()))

    def probs(batch: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.ops.softmax(model(batch, training=False), axis=-1))

    def kept(maps: np.ndarray) -> np.ndarray:
        # exactly the top KEEP of the pixels by rank, so flat regions of a map cannot tie in
        flat = maps.reshape(len(maps), -1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, : int(round(KEEP * flat.shape[1]))]
        mask = np.zeros_like(flat, dtype=bool)
        np.put_along_axis(mask, top, True, axis=1)
        return x * mask.reshape(maps.shape)[..., None]

    start = time.perf_counter()
    full = camlens.explain(model, x, method=ScoreCAM())
    full_seconds = time.perf_counter() - start
    cls = np.asarray(full.class_indices)
    rows_n = np.arange(len(x))
    p = probs(x)[rows_n, cls]

    def drop(maps: np.ndarray) -> np.ndarray:
        return np.maximum(p - probs(kept(maps))[rows_n, cls], 0) / p

    rows = [
        {
            "method": "scorecam",
            "k": int(full.sites[0].shape[-1]),
            "seconds": full_seconds,
            "r": [1.0] * len(x),
            "drop": drop(full.map).tolist(),
        }
    ]
    for k in FAITHFUL_KS:
        start = time.perf_counter()
        fast = camlens.explain(model, x, method=FastScoreCAM(k=k), target=cls.tolist())
        seconds = time.perf_counter() - start
        r = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(full.map, fast.map)]
        rows.append(
            {"method": "fastscorecam", "k": k, "seconds": seconds, "r": r, "drop": drop(fast.map).tolist()}
        )
    return rows


# --- the driver -------------------------------------------------------------------------------


def _child(args: list[str]) -> Any:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(args)} failed with exit status {proc.returncode}")
    return json.loads(results[-1][len("RESULT ") :])


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, for CI: same code path")
    parser.add_argument("--only", default="", help="run the configurations whose name contains this")
    parser.add_argument("--no-faithfulness", action="store_true", help="skip the photo comparison")
    parser.add_argument("--batch-size", type=int, help="the method's batch_size (default: its own)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # inside a child process: one measurement, printed as JSON
        if args.worker == "faithfulness":
            result: Any = run_faithfulness()
        else:
            result = run_config(args.worker, args.smoke, args.batch_size)
        print("RESULT " + json.dumps(result))
        return 0

    configs = [c for c in CONFIGS if args.only in c]
    if args.smoke:  # each framework and each method once: a few seconds of model time
        configs = [c for c in configs if c in ("keras scorecam", "torch fastscorecam k=64")]
    if importlib.util.find_spec("torch") is None:
        configs = [c for c in configs if not c.startswith("torch")]
        print("(torch is not installed: the PyTorch rows are skipped)")
    what = "smoke: tiny models" if args.smoke else "EfficientNet-Lite0, 224 px, 1 image"
    print(f"Score-CAM peak memory and time ({what})")
    print("batch = masked copies built at once / images per forward pass; peak = RSS growth during explain()")
    header = f"{'config':<28} {'channels':>8} {'batch':>6} {'time s':>7} {'base MiB':>9} {'peak MiB':>9}  layer"
    print(header)
    print("-" * len(header))
    for config in configs:
        flag = ["--smoke"] if args.smoke else []
        if args.batch_size is not None:
            flag += ["--batch-size", str(args.batch_size)]
        r = _child(["--worker", config, *flag])
        print(
            f"{r['config']:<28} {r['channels']:>8} {r['batch']:>6} {r['seconds']:>7.1f} "
            f"{_mib(r['base_mib']):>9} {_mib(r['peak_mib']):>9}  {r['layer']}",
            flush=True,
        )

    if not args.smoke and not args.no_faithfulness:
        rows = _child(["--worker", "faithfulness"])
        print()
        print(f"Faster Score-CAM against Score-CAM, Keras EfficientNet-Lite0, photos: {', '.join(PHOTOS)}")
        print("r = Pearson correlation with the Score-CAM map; drop = relative fall of the class")
        print(f"probability keeping only the top {KEEP:.0%} pixels of each map (lower is better)")
        head = f"{'method':<14} {'k':>5} {'time s':>7} {'mean r':>7} {'mean drop':>10}  per photo r / drop"
        print(head)
        print("-" * len(head))
        for row in rows:
            per = "  ".join(f"{r:.3f}/{d:.0%}" for r, d in zip(row["r"], row["drop"]))
            print(
                f"{row['method']:<14} {row['k']:>5} {row['seconds']:>7.1f} {np.mean(row['r']):>7.3f} "
                f"{np.mean(row['drop']):>10.1%}  {per}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
