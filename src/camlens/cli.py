"""The ``camlens`` command: ``camlens demo``, ``camlens explain MODEL IMAGE...``,
``camlens features MODEL IMAGE`` and ``camlens layers MODEL``.

Exit status: 0 when everything worked, 1 when some images failed (the others are still done),
2 for a bad command line or a model that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main"]


def _parse_target(text: str) -> Any:
    from . import targets

    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    try:
        if kind in ("top", ""):
            return None
        if kind.lstrip("-").isdigit() and not arg:
            return int(kind)
        if kind == "logit":
            return targets.Logit(int(arg) if arg else None)
        if kind == "class":
            return targets.ClassScore(int(arg) if arg else None)
        if kind == "regression":
            return targets.RegressionScore(int(arg) if arg else 0)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"bad target {text!r}: use top, a class index (281), class:281, logit, logit:281 or "
        "regression:0"
    )


def _parser() -> argparse.ArgumentParser:
    from .io import PREPROCESSING

    p = argparse.ArgumentParser(prog="camlens", description="See what a vision model looks at.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="write heatmaps and overlays for images")
    e.add_argument("model", help="a Keras model file (.keras or .h5)")
    e.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    e.add_argument("--method", default="gradcam", help="gradcam (default), gradcam++, cam, ...")
    e.add_argument("--layer", default="auto", help="layer path, or auto (default)")
    e.add_argument("--target", type=_parse_target, default=None,
                   help="top (default), CLASS, class:CLASS, logit[:CLASS], regression:INDEX")
    e.add_argument("--output", default=None, help="which model output, for models with several")
    e.add_argument("--preprocess", choices=sorted(PREPROCESSING), default="none",
                   help="pixel scaling the model expects: none (0..255, default), unit (0..1), "
                        "symmetric (-1..1)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (0..1)")
    e.add_argument("--cmap", default="jet", help="matplotlib colormap")
    e.add_argument("-o", "--out", default="camlens-out", help="output folder (default camlens-out)")

    d = sub.add_parser("demo", help="a pretrained ImageNet model on bundled photos (offline)")
    d.add_argument("--method", default="gradcam,cam",
                   help="comma-separated methods (default gradcam,cam)")
    d.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="your own photo instead of the bundled ones (repeatable)")
    d.add_argument("--layer", default="auto", help="layer path, or auto (default)")
    d.add_argument("-o", "--out", default="camlens-demo", help="output folder (default camlens-demo)")

    f = sub.add_parser("features", help="write a grid of feature maps per layer for one image")
    f.add_argument("model", help="a Keras model file (.keras or .h5), or 'bundled' for the "
                                 "pretrained EfficientNet-Lite0 of `camlens demo`")
    f.add_argument("image", help="an image file (PNG, JPEG, ...)")
    f.add_argument("--layers", default="conv",
                   help="conv (default: every convolution), spatial (every layer with a "
                        "(h, w, C) output), auto, or layer names separated by commas")
    f.add_argument("--max-channels", type=int, default=64, help="channels per grid (default 64)")
    f.add_argument("--preprocess", choices=sorted(PREPROCESSING), default=None,
                   help="pixel scaling a model file expects: none (0..255, default), unit "
                        "(0..1), symmetric (-1..1); 'bundled' uses its own")
    f.add_argument("--cmap", default="viridis", help="matplotlib colormap (default viridis)")
    f.add_argument("-o", "--out", default="camlens-features",
                   help="output folder (default camlens-features)")

    lay = sub.add_parser("layers", help="list layers and the one chosen automatically")
    lay.add_argument("model", help="a Keras model file (.keras or .h5)")
    lay.add_argument("--output", default=None, help="which model output, for models with several")
    return p


def _output_arg(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _load_model_or_exit(path: str) -> Any:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from .io import load_model

    try:
        return load_model(path)
    except (OSError, ValueError) as exc:
        print(f"camlens: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_layers(args: argparse.Namespace) -> int:
    from .explain import layers

    model = _load_model_or_exit(args.model)
    try:
        print(layers(model, output=_output_arg(args.output)))
    except (ValueError, TypeError) as exc:
        print(f"camlens: {exc}", file=sys.stderr)
        return 2
    return 0


def _unique_names(paths: Sequence[str]) -> list[str]:
    """File-safe output names, one per image, never two alike (``a``, ``a-1``, ...)."""
    from .explanation import _safe

    taken: set[str] = set()
    names = []
    for p in paths:
        stem = _safe(Path(p).stem or "image")
        name, k = stem, 0
        while name in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name)
        names.append(name)
    return names


def _cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from .explain import adapt, explain
    from .layers import find_nodes
    from .methods import get_method
    from .explanation import _safe
    from .io import PREPROCESSING, ImageError, load_image

    if not 0.0 <= args.alpha <= 1.0:
        print(f"camlens: --alpha must be between 0 and 1; got {args.alpha}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"camlens: --batch-size must be at least 1; got {args.batch_size}", file=sys.stderr)
        return 2
    model = _load_model_or_exit(args.model)
    try:
        adapter = adapt(model)
        specs = adapter.input_specs()
        get_method(args.method)
        if args.layer != "auto":
            find_nodes(adapter.graph(), args.layer)
    except (TypeError, ValueError) as exc:
        print(f"camlens: {exc}", file=sys.stderr)
        return 2
    if len(specs) != 1 or len(specs[0].shape) != 4:
        print(
            f"camlens: the command line explains one-image models; this one takes "
            f"{[s.shape for s in specs]}. Use the Python API, camlens.explain(model, [a, b]).",
            file=sys.stderr,
        )
        return 2
    _, h, w, c = specs[0].shape
    prep = PREPROCESSING[args.preprocess]
    out = Path(args.out)
    names = _unique_names(args.images)
    failed: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    order = list(zip(args.images, names))
    with tqdm(total=len(order), desc="explaining", unit="img", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            pixels, kept = [], []
            for path, name in batch:
                try:
                    img = load_image(path, (h, w), channels=c or 3)
                except ImageError as exc:
                    failed.append((path, str(exc)))
                    bar.update(1)
                    continue
                if pixels and img.shape != pixels[0].shape:
                    # models without a fixed size: explain images of other sizes on their own
                    failed.append((path, f"{path}: size {img.shape[:2]} differs from the batch; run it alone or give the model a fixed input size"))
                    bar.update(1)
                    continue
                pixels.append(img)
                kept.append((path, name))
            if not pixels:
                continue
            x = np.stack(pixels)
            try:
                exp = explain(model, prep(x), method=args.method, target=args.target,
                              layer=args.layer, output=_output_arg(args.output),
                              batch_size=args.batch_size)
            except (ValueError, TypeError, NotImplementedError) as exc:
                print(f"camlens: {exc}", file=sys.stderr)
                return 2
            files = exp.save(out, images=x.astype(np.uint8) if c != 1 else x, names=[n for _, n in kept],
                             cmap=args.cmap, alpha=args.alpha, write_json=False)
            for i, (path, name) in enumerate(kept):
                results.append({
                    "image": path,
                    "score": float(exp.scores[i]),
                    "class": None if exp.class_indices is None else int(exp.class_indices[i]),
                    # save() names files "<safe name>_<method>_<layer>_..."; match all of that
                    # prefix so that "cat" does not also claim the files of "cat_2"
                    "files": [f.name for f in files
                              if f.name.startswith(f"{_safe(name)}_{exp.method}_")],
                })
            layer_text = exp.reason
            bar.update(len(kept))
    if results:
        (out / "results.json").write_text(json.dumps(
            {"method": args.method, "layer": layer_text, "images": results,
             "failed": [{"image": p, "error": e} for p, e in failed]}, indent=2))
        print(f"layer: {layer_text}")
        print(f"wrote {len(results)} explanation(s) to {out}/ (overlays, heatmaps, results.json)")
    for _, message in failed:
        print(f"camlens: skipped {message}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_features(args: argparse.Namespace) -> int:
    from .explain import adapt
    from .features import LAYER_SETS, feature_maps
    from .io import PREPROCESSING, ImageError, load_image
    from .viz.color import _get_cmap

    if args.max_channels < 1:
        print(f"camlens: --max-channels must be at least 1; got {args.max_channels}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.layers.split(",") if n.strip()]
    if not names:
        print(f"camlens: --layers is empty; give {', '.join(LAYER_SETS)} or layer names", file=sys.stderr)
        return 2
    layers: str | list[str] = names[0] if len(names) == 1 and names[0] in LAYER_SETS else names
    try:
        _get_cmap(args.cmap)  # fail before the model loads
    except ValueError as exc:
        print(f"camlens: {exc}", file=sys.stderr)
        return 2
    prep: Callable[[Any], Any]
    if args.model == "bundled":
        if args.preprocess is not None:
            print("camlens: the bundled model scales pixels itself; drop --preprocess", file=sys.stderr)
            return 2
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        from .models import efficientnet_lite0
        from .models.efficientnet_lite import preprocess as lite_preprocess

        prep = lite_preprocess
        try:
            model = efficientnet_lite0(pretrained=True)
        except (ImportError, OSError, ValueError) as exc:
            print(f"camlens: {exc}", file=sys.stderr)
            return 2
        size: tuple[int | None, int | None] | None = None
        channels = 3
    else:
        model = _load_model_or_exit(args.model)
        try:
            specs = adapt(model).input_specs()
        except (TypeError, ValueError) as exc:
            print(f"camlens: {exc}", file=sys.stderr)
            return 2
        if len(specs) != 1 or len(specs[0].shape) != 4:
            print(
                f"camlens: the command line reads one-image models; this one takes "
                f"{[s.shape for s in specs]}. Use the Python API, camlens.feature_maps(model, [a, b]).",
                file=sys.stderr,
            )
            return 2
        _, h, w, c = specs[0].shape
        size, channels = (h, w), c or 3
        prep = PREPROCESSING[args.preprocess or "none"]
    try:
        pixels = load_image(args.image, size, channels=channels)
    except ImageError as exc:
        print(f"camlens: skipped {exc}", file=sys.stderr)
        return 1
    try:
        fmaps = feature_maps(model, prep(pixels), layers)
        files = fmaps.save(args.out, max_channels=args.max_channels, cmap=args.cmap)
    except (ValueError, TypeError) as exc:
        print(f"camlens: {exc}", file=sys.stderr)
        return 2
    print(f"layers: {fmaps.reason}")
    print(f"wrote {len(files) - 2} feature grid(s), overview.png and index.json to {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's start-up banner (oneDNN, CPU features) is noise on a command line
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    if args.command == "layers":
        return _cmd_layers(args)
    if args.command == "features":
        return _cmd_features(args)
    if args.command == "demo":
        from .demo import run_demo

        try:
            return run_demo(args.out, [m.strip() for m in args.method.split(",") if m.strip()],
                            args.image, layer=args.layer)
        except (ValueError, ImportError) as exc:
            print(f"camlens: {exc}", file=sys.stderr)
            return 2
    return _cmd_explain(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
