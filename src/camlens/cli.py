"""The ``camlens`` command: ``camlens demo``, ``camlens explain MODEL IMAGE...``,
``camlens features MODEL IMAGE...``, ``camlens visualize MODEL --layer L --channels 0-15``,
``camlens layers MODEL``, ``camlens report MODEL IMAGE...``,
``camlens evaluate MODEL IMAGE...``, ``camlens run MODEL SOURCE... -o OUT`` (a data set into a
Parquet table), ``camlens app [MODEL]`` and ``camlens --version``.

One grammar for all of them: ``MODEL`` is a model file, ``FILE.py:NAME`` or ``bundled``;
``IMAGE`` is a file, a folder or a glob pattern (expanded here when the shell did not);
``--method a,b`` (alias ``--methods``) is a comma list wherever methods are taken; ``--layer``
(``features`` also ``--layers``); ``--batch-size`` is images per model call, default
:data:`BATCH_SIZE`, on every command that runs the model; ``--backend`` picks the Keras backend
on every command that loads a model; ``--preprocess`` names one of
:data:`camlens.io.PREPROCESSING`.

Exit status: 0 when everything worked, 1 when some images failed (the others are still done),
2 for a bad command line, a model that cannot be used or a file that cannot be written; 130
after Ctrl-C and 143 after SIGTERM (``camlens explain`` first writes ``results.json`` for the
images done).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    from .models import Bundled

__all__ = ["main", "UsageError"]


class UsageError(Exception):
    """A bad command line, or a model or image list the command line cannot use: :func:`main`
    says ``camlens: <message>`` (a line each) on stderr and the exit status is 2.

    ``system_exit``: :func:`main` raises ``SystemExit(2)`` rather than returning 2, as it always
    has for a model file that cannot be loaded and an image folder that holds no image."""

    def __init__(self, *messages: str, system_exit: bool = False) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages
        self.system_exit = system_exit


def _parse_target(text: str) -> Any:
    from .targets import parse_target

    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_MODEL = ("a Keras model file (.keras or .h5), Python code that builds a Keras model or torch "
          "module (FILE.py:NAME or package.module:NAME), or 'bundled' for the pretrained "
          "EfficientNet-Lite0 of `camlens demo`")
_IMAGES = ("image files (PNG, JPEG, ...), folders (all their images, sorted) or quoted glob "
           "patterns ('photos/*.jpg')")
_PREPROCESS = ("pixel scaling the model expects: none (0..255, default), unit (0..1), symmetric "
               "(-1..1), imagenet ((x/255 - mean) / std, as torchvision's models), caffe (RGB to "
               "BGR minus the ImageNet mean, as Keras' ResNet50 and VGG16); 'bundled' uses its own")
#: one meaning of --batch-size for every command that runs the model
BATCH_SIZE = 16
_BATCH_SIZE = f"images per model call (default {BATCH_SIZE})"
_BACKENDS = ("tensorflow", "jax", "torch")
_BACKEND = ("Keras backend to load Keras models with (sets KERAS_BACKEND; default: "
            "KERAS_BACKEND, else tensorflow)")
_LAYER = "layer path, or auto (default)"
_SIZE = ("HEIGHT,WIDTH (or N for N,N) to resize images to, for a model without a fixed input size "
         "(PyTorch modules); default: each image's own size")


def _target_help() -> str:
    from .targets import text_targets

    forms = text_targets()
    return f"{forms[0]} (default), " + ", ".join(forms[1:])


def _parse_size(text: str) -> tuple[int, int]:
    parts = [t.strip() for t in text.replace("x", ",").split(",")]
    try:
        hw = [int(t) for t in parts]
    except ValueError:
        hw = []
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 2:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use HEIGHT,WIDTH such as 224,224, or 224")
    return hw[0], hw[1]


def _model_and_images(parser: argparse.ArgumentParser, layer: bool = True, images: str = "+") -> None:
    """The arguments every command on a set of images takes: the model, the images (files,
    folders or patterns; ``images`` is their ``nargs``), --size, --preprocess, --backend, --batch-size and --layer."""
    parser.add_argument("model", help=_MODEL)
    parser.add_argument("images", nargs=images, help=_IMAGES)
    parser.add_argument("--size", type=_parse_size, default=None, help=_SIZE)
    _preprocess_arg(parser)
    _backend_arg(parser)
    _batch_size_arg(parser)
    if layer:
        parser.add_argument("--layer", default="auto", help=_LAYER)


def _preprocess_arg(parser: argparse.ArgumentParser) -> None:
    from .io import PREPROCESSING

    parser.add_argument("--preprocess", choices=sorted(PREPROCESSING), default=None, help=_PREPROCESS)


def _backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=_BACKENDS, default=None, help=_BACKEND)


def _batch_size_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=_BATCH_SIZE)


def _method_arg(parser: argparse.ArgumentParser, default: str, example: str) -> None:
    parser.add_argument("--method", "--methods", dest="method", default=default,
                        help=f"comma-separated methods (default {default}), e.g. {example}")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="camlens", description="See what a vision model looks at.")
    p.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="write heatmaps and overlays for images")
    _model_and_images(e, layer=False, images="*")
    e.add_argument("--layer", "--layers", dest="layer", action="append", default=None,
                   help="layer path, or auto (default); several: repeat it or separate them by "
                        "commas (a map per layer, or one with --fuse)")
    e.add_argument("--fuse", choices=FUSE_CHOICES, default=None,
                   help="fuse the maps of several --layer into one per image: their per-image "
                        "[0, 1] maps combined by max (torchcam's fuse_cams) or mean")
    e.add_argument("--eigen-smooth", action="store_true",
                   help="the first principal component of the weighted activations instead of "
                        "their sum (pytorch-grad-cam's eigen_smooth)")
    e.add_argument("--aug-smooth", action="store_true",
                   help="average each map over a left-right flip and input scalings 0.9 and 1.1 "
                        "(pytorch-grad-cam's aug_smooth; 6 runs per image)")
    e.add_argument("--concepts", type=int, default=None, metavar="K",
                   help="dff: the number of concepts (default 5); every concept's map is written")
    _method_arg(e, "gradcam", "gradcam,layercam (several: one subfolder of -o each)")
    e.add_argument("--target", type=_parse_target, default=None,
                   help=_target_help())
    e.add_argument("--output", default=None, help="which model output, for models with several")
    e.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (0..1)")
    e.add_argument("--cmap", default="jet", help="matplotlib colormap")
    e.add_argument("--heatmap", choices=("color", "gray"), default="color",
                   help="the heatmap PNG: coloured by --cmap (default), or gray (8-bit, one channel)")
    e.add_argument("--pairs", default=None, metavar="FILE",
                   help="for a model with several image inputs (a siamese pair): a CSV file with "
                        "one row per sample and one image path per input, in the model's input "
                        "order (a header row is skipped; paths relative to the CSV's folder); "
                        "instead of IMAGES")
    e.add_argument("-o", "--out", default="camlens-out", help="output folder (default camlens-out)")

    d = sub.add_parser("demo", help="a pretrained ImageNet model on bundled photos (offline)")
    _method_arg(d, "gradcam,cam", "gradcam++,layercam")
    d.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="your own photos instead of the bundled ones: a file, folder or pattern (repeatable)")
    d.add_argument("--layer", default="auto", help=_LAYER)
    _backend_arg(d)
    _batch_size_arg(d)
    d.add_argument("-o", "--out", default="camlens-demo", help="output folder (default camlens-demo)")

    f = sub.add_parser("features", help="write a grid of feature maps per layer for each image")
    _model_and_images(f, layer=False)
    f.add_argument("--layer", "--layers", dest="layer", default="conv",
                   help="conv (default: every convolution), spatial (every layer with a "
                        "(h, w, C) output), auto, or layer names separated by commas")
    f.add_argument("--max-channels", type=int, default=64, help="channels per grid (default 64)")
    f.add_argument("--cmap", default="viridis", help="matplotlib colormap (default viridis)")
    f.add_argument("--style", choices=("minmax", "standardized"), default="minmax",
                   help="tile scaling: minmax (each channel to its own range, default) or "
                        "standardized ((x - mean) / std * 64 + 128); dead channels are crossed out")
    f.add_argument("-o", "--out", default="camlens-features",
                   help="output folder (default camlens-features); for several images one "
                        "subfolder per image")

    v = sub.add_parser("visualize", help="synthesise the images that maximise channels of a layer "
                                         "(or class logits): feature visualization")
    v.add_argument("model", help=_MODEL)
    v.add_argument("--size", type=_parse_size, default=None, help=_SIZE)
    _preprocess_arg(v)
    _backend_arg(v)
    _batch_size_arg(v)
    v.add_argument("--layer", default=None, help="the layer whose channels to visualize (a layer path)")
    v.add_argument("--channels", default=None, help="channels, e.g. 0-15 or 0,4,8-11")
    v.add_argument("--classes", default=None, help="class indices for their logits instead of a layer, e.g. 1,207")
    v.add_argument("--position", type=_parse_size, default=None,
                   help="Y,X on the layer's map: maximise that neuron instead of the channel's mean")
    v.add_argument("--steps", type=int, default=256, help="gradient ascent steps (default 256)")
    v.add_argument("--lr", type=float, default=0.05, help="Adam step size (default 0.05)")
    v.add_argument("--param", choices=("fourier", "pixels"), default="fourier",
                   help="image parametrisation (default fourier, decorrelated colour)")
    v.add_argument("--jitter", type=int, default=8, help="random shift per step in pixels (default 8)")
    v.add_argument("--blur-every", type=int, default=0, help="blur the image every N steps (default 0: never)")
    v.add_argument("--tv", type=float, default=0.0, help="total-variation penalty weight (default 0)")
    v.add_argument("--l2", type=float, default=0.0, help="L2 penalty weight (default 0)")
    v.add_argument("--seed", type=int, default=0, help="random start and shifts (default 0)")
    v.add_argument("-o", "--out", default="camlens-visualize", help="output folder (default camlens-visualize)")

    r = sub.add_parser("report", help="one self-contained HTML page: overlays per method, top "
                                      "classes, layers, optional faithfulness metrics")
    _model_and_images(r)
    _method_arg(r, "gradcam", "gradcam,scorecam")
    r.add_argument("--metrics", default="",
                   help="comma-separated faithfulness metrics (deletion, insertion, average_drop, "
                        "increase_in_confidence, road); none by default")
    r.add_argument("--top", type=int, default=5, help="predictions listed per image (default 5)")
    r.add_argument("--classes", default=None, metavar="FILE",
                   help="class names: a text file with one per line or a JSON list ('bundled' "
                        "uses the ImageNet names)")
    r.add_argument("--title", default=None, help="page title (default: the model file name)")
    r.add_argument("-o", "--out", default="camlens-report.html",
                   help="the HTML file to write (default camlens-report.html)")

    ev = sub.add_parser("evaluate", help="faithfulness metrics of each method's heatmaps, as tables")
    _model_and_images(ev)
    _method_arg(ev, "gradcam,gradcam++,scorecam", "gradcam,layercam")
    ev.add_argument("--metrics", default="deletion,insertion,average_drop,increase_in_confidence",
                    help="comma-separated: deletion, insertion, average_drop, "
                         "increase_in_confidence (default: these four), road")
    ev.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (default 100)")
    ev.add_argument("--score", choices=("probability", "logit", "raw"), default="probability",
                    help="the score the metrics read: probability of the class (default), logit, raw")
    ev.add_argument("--target", type=_parse_target, default=None,
                    help=_target_help())
    ev.add_argument("--json", default=None, metavar="PATH", help="also write the numbers to PATH")

    rn = sub.add_parser("run", help="explain a whole data set into one Parquet table, a row per "
                                    "image and method (resumable; locally or on a Ray cluster)")
    _model_and_images(rn)
    next(a for a in rn._actions if a.dest == "images").help = (
        _IMAGES + ", a .txt file of paths (one per line) or a .csv file with a header: path, "
        "optional label, a box x0,y0,x1,y1 or JSON boxes")
    _method_arg(rn, "gradcam", "gradcam,layercam")
    rn.add_argument("--metrics", default="",
                    help="comma-separated faithfulness metrics, a column each (deletion, insertion, "
                         "average_drop, increase_in_confidence, road); none by default")
    rn.add_argument("--steps", type=int, default=100, help="deletion/insertion steps (default 100)")
    rn.add_argument("--target", default=None, help=_target_help())
    rn.add_argument("--boxes", default=None, metavar="FILE",
                    help="a CSV file with a header: path, optional label, a box x0,y0,x1,y1 (image "
                         "pixels, x1/y1 exclusive) or JSON boxes; adds the pointing game "
                         "(pointing_hit, energy_share). IMAGES may also be such a CSV file, or a "
                         ".txt list of paths")
    rn.add_argument("--overlays", action="store_true", help="also write overlay PNGs")
    rn.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local (default: this process) or ray (Ray Data; needs camlens[ray])")
    rn.add_argument("--address", default=None,
                    help="with --engine ray: the cluster to join (ray start --head prints it; "
                         "default: a local Ray started here)")
    rn.add_argument("--workers", type=int, default=None,
                    help="with --engine ray: model copies (actors) explaining at once")
    rn.add_argument("-o", "--out", default="camlens-run",
                    help="output folder (default camlens-run): results.parquet, maps/, parts/, "
                         "run.json; run the same command again to resume it")

    lay = sub.add_parser("layers", help="list layers and the one chosen automatically")
    lay.add_argument("model", help=_MODEL)
    lay.add_argument("--size", type=_parse_size, default=None,
                     help="HEIGHT,WIDTH of the input, for a model without a fixed input size "
                          "(PyTorch modules need it)")
    lay.add_argument("--output", default=None, help="which model output, for models with several")
    _backend_arg(lay)

    a = sub.add_parser("app", help="a local web page to explain photos (needs camlens[app])")
    a.add_argument("model", nargs="?", default=None,
                   help=_MODEL + "; default: bundled")
    a.add_argument("--size", type=_parse_size, default=None,
                   help="HEIGHT,WIDTH images are resized to, for a model without a fixed input "
                        "size (PyTorch modules need it)")
    a.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this computer only)")
    a.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    _preprocess_arg(a)
    _backend_arg(a)
    a.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload (default 8 MB)")

    c = sub.add_parser("cache", help="where the converted weights of the bundled model are "
                                     "cached, and how big (clear: remove them)")
    c.add_argument("action", nargs="?", choices=("info", "clear"), default="info",
                   help="info (default): the folder, its files and size; clear: remove them")
    return p


def _names(text: str) -> list[str]:
    """The names of a comma-separated option (``--methods gradcam,cam``), blanks dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _output_arg(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def _load_model(path: str) -> Any:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from .io import load_model

    try:
        return load_model(path)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc), system_exit=True) from None


def _images(paths: Sequence[str]) -> list[str]:
    """Image files, folders expanded to their images."""
    from .io import image_files

    try:
        return image_files(list(paths))
    except ValueError as exc:
        raise UsageError(str(exc), system_exit=True) from None


def _input_geometry(model: Any, size: tuple[int, int] | None, api: str, command: str) -> tuple[tuple[Any, Any], int]:
    """``((H, W), channels)`` images are read at for the model's one image input (``None``
    sides: each image's own size). ``size`` (--size) sets the size of a model that has none and
    must agree with one that has. ``api``: what to use for a model the command line cannot."""
    from .io import image_geometry

    return image_geometry(
        model, size, drop=_size_flag(size),
        refusal=f"camlens {command} takes models with one image input; this one takes "
                f"{{shapes}}. For a model with several image inputs (a siamese pair) use "
                f"`camlens explain MODEL --pairs FILE.csv`, or the Python API, {api}.",
    )


def _size_flag(size: tuple[int, int] | None) -> str:
    return "" if size is None else f"--size {size[0]},{size[1]}"


def _cmd_layers(args: argparse.Namespace) -> int:
    from .adapters import adapt
    from ._explain import layers

    if args.model == "bundled":
        if args.size is not None:
            raise UsageError("the bundled model resizes images itself; drop --size")
        print(layers(_bundled_model(args).model, output=_output_arg(args.output)))
        return 0
    model = _load_model(args.model)
    # a native module (a Keras model on the torch backend is a torch module too, with a shape)
    if args.size is None and adapt(model).needs_input_size:
        raise UsageError("this model (a PyTorch module, or a subclassed Keras model) has no "
                         "input size of its own: give --size H,W (e.g. --size 224)")
    print(layers(model, output=_output_arg(args.output), input_size=args.size))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .files import explain_files, input_geometry, read_pairs

    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be between 0 and 1; got {args.alpha}")
    methods = _methods(args.method)
    layer = _explain_layers(args.layer)
    settings = _method_options(args, methods, layer)
    if args.pairs is not None and args.images:
        raise UsageError(f"give images or --pairs {args.pairs}, not both: the CSV file lists "
                         "the images of each sample")
    if args.pairs is None and not args.images:
        raise UsageError("give image files or folders, or --pairs FILE.csv for a model with "
                         "several image inputs")
    if args.pairs is not None and not Path(args.pairs).is_file():
        raise UsageError(f"--pairs {args.pairs}: no such file; give a CSV file with one row per "
                         "sample and one image path per model input")
    samples: list[Any] = _images(args.images) if args.images else []
    _output_folder(args.out)
    if args.model == "bundled":
        if args.pairs is not None:
            raise UsageError("the bundled model takes one image; drop --pairs")
        lite = _bundled_model(args)
        model = lite.model
        # it crops and scales each photo itself; the files show the crop it sees
        how: dict[str, Any] = dict(preprocess=lite.preprocess_batch, resize=False, display=lite.display)
    else:
        model = _load_model(args.model)
        try:
            geometry = input_geometry(model, args.size, drop=_size_flag(args.size),
                                      what="camlens explain")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.pairs is not None:
            samples = read_pairs(args.pairs, len(geometry))
        elif len(geometry) > 1:
            raise UsageError(f"{args.model} takes {len(geometry)} image inputs; give the images of "
                             "each sample with --pairs FILE.csv (one row per sample, one image path "
                             "per input, in the model's input order)")
        how = dict(preprocess=args.preprocess, size=args.size)
    unit = "img" if args.pairs is None else "sample"
    failed: dict[str, None] = {}  # an unreadable image fails for every method: said once
    for method, setting in zip(methods, settings):
        # several methods: one folder each, each a whole explain output with its results.json
        out = args.out if len(methods) == 1 else str(Path(args.out) / method)
        with tqdm(total=len(samples), desc=f"explaining ({method})" if len(methods) > 1 else "explaining",
                  unit=unit, disable=None, file=sys.stderr) as bar:
            done = explain_files(model, samples, out, method=setting, target=args.target,
                                 layer=layer, output=_output_arg(args.output),
                                 batch_size=args.batch_size, alpha=args.alpha, cmap=args.cmap,
                                 heatmap=args.heatmap, progress=bar.update, fuse=args.fuse,
                                 aug_smooth=args.aug_smooth, **how)
        if done.images:
            lead = f"{method}: " if len(methods) > 1 else ""
            print(f"{lead}layer: {done.layer}")
            print(f"{lead}wrote {len(done.images)} explanation(s) to {done.out}/ (overlays, "
                  "heatmaps, .npy maps, results.json, results.csv)")
        failed.update((message, None) for _, message in done.failed)
    return _skipped(failed)


#: ``camlens explain --fuse``: how the maps of several layers become one
FUSE_CHOICES = ("max", "mean")


def _explain_layers(values: list[str] | None) -> str | list[str]:
    """``--layer`` (repeatable, each a comma list) as ``explain`` takes it: one layer path or
    "auto" as it is, several as a list."""
    names = [n for v in values or [] for n in _names(v)]
    if values and not names:
        raise UsageError("--layer is empty; give a layer path, auto, or several: --layer a,b")
    if len(names) > 1 and "auto" in names:
        raise UsageError(f"--layer {','.join(names)}: auto chooses one layer; give layer paths "
                         "only (camlens layers MODEL lists them)")
    return names[0] if len(names) == 1 else (names or "auto")


def _method_options(args: argparse.Namespace, methods: list[str], layer: str | list[str]) -> list[Any]:
    """Each method of ``--method`` with the options of ``--eigen-smooth``, ``--concepts``, and
    ``--fuse`` / ``--aug-smooth`` checked: a flag a method does not take is refused, naming the
    methods that take it."""
    import inspect

    from .methods import available_methods, get_method

    def takes(name: str, param: str) -> bool:
        return param in inspect.signature(type(get_method(name))).parameters

    def layered(name: str) -> bool:
        m = get_method(name)
        return bool(m.needs_layer) and not getattr(m, "needs_attention", False)

    every = available_methods()
    checks = []
    if args.eigen_smooth:
        checks.append(("--eigen-smooth", lambda m: takes(m, "eigen_smooth")))
    if args.concepts is not None:
        checks.append(("--concepts", lambda m: m == "dff"))
    if args.fuse is not None:
        checks.append(("--fuse", layered))
    for flag, ok in checks:
        bad = [m for m in methods if not ok(m)]
        if bad:
            good = [m for m in every if ok(m)]
            raise UsageError(f"{flag} does not apply to {', '.join(bad)}; it applies to "
                             f"{', '.join(good)}")
    if args.concepts is not None and args.concepts < 1:
        raise UsageError(f"--concepts must be at least 1; got {args.concepts}")
    if args.fuse is not None and not isinstance(layer, list):
        raise UsageError(f"--fuse {args.fuse} fuses the maps of several layers; give them with "
                         "--layer a,b (or --layer a --layer b)")
    chosen: list[Any] = []
    for name in methods:
        options: dict[str, Any] = {}
        if args.eigen_smooth:
            options["eigen_smooth"] = True
        if args.concepts is not None:
            options["k"] = args.concepts
        chosen.append(type(get_method(name))(**options) if options else name)
    return chosen


def _methods(text: str) -> list[str]:
    """The methods of ``--method a,b`` by their registered names, each once; an unknown one
    fails before the model loads."""
    from .methods import get_method

    methods: list[str] = []
    for name in _names(text):
        canonical = get_method(name).name
        if canonical not in methods:
            methods.append(canonical)
    if not methods:
        raise UsageError("--method is empty; give a method such as gradcam, or several: gradcam,layercam")
    return methods


def _output_folder(out: str) -> None:
    """``-o`` must be a folder that can be written, or one that can be made: said before the
    model loads, not as a traceback after it ran."""
    from .files import check_output_folder

    check_output_folder(out, "-o")


def _output_file(path: str, flag: str) -> None:
    """The folder of an output file (``report -o``, ``evaluate --json``) must be writable, and
    the path not a folder: said before the work, not as a traceback after it."""
    from .files import check_output_folder

    if Path(path).is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name such as {Path(path) / 'out'}"
                         f"{'.html' if flag == '-o' else '.json'}")
    check_output_folder(Path(path).parent, flag)


def _skipped(messages: Iterable[str]) -> int:
    """Says which images were skipped and why; the exit status: 1 if any was, else 0."""
    said = 0
    for said, message in enumerate(messages, 1):
        print(f"camlens: skipped {message}", file=sys.stderr)
    return 1 if said else 0


def _cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from ._args import batches
    from .features import LAYER_SETS, feature_maps
    from .files import _read_image
    from tqdm import tqdm

    from .io import ImageError, as_preprocess, unique_names
    from .viz.color import _get_cmap

    if args.max_channels < 1:
        raise UsageError(f"--max-channels must be at least 1; got {args.max_channels}")
    names = _names(args.layer)
    if not names:
        raise UsageError(f"--layer is empty; give {', '.join(LAYER_SETS)} or layer names")
    layers: str | list[str] = names[0] if len(names) == 1 and names[0] in LAYER_SETS else names
    _get_cmap(args.cmap)  # fail before the model loads
    images = _images(args.images)
    _output_folder(args.out)
    model, lite, size, channels = _chosen_model(args, "camlens.feature_maps(model, [a, b])")
    prep = lite.preprocess if lite is not None else as_preprocess(args.preprocess)
    # one image: its grids in -o, as always; several: a subfolder of -o per image
    outs = ([Path(args.out)] if len(images) == 1
            else [Path(args.out) / n for n in unique_names(images)])
    failed: list[str] = []
    reason, grids, done = "", 0, 0
    # drawing a grid per layer is most of the time (a second each for a deep network)
    bar = None  # made once the first batch says how many layers there are
    for part in batches(len(images), args.batch_size):
        groups: dict[tuple[int, ...], list[tuple[Path, np.ndarray]]] = {}
        for path, out in zip(images[part], outs[part]):
            try:
                x = np.asarray(prep(_read_image(path, size, channels)), np.float32)
            except ImageError as exc:
                failed.append(str(exc))
                continue
            groups.setdefault(x.shape, []).append((out, x))
        for group in groups.values():  # a model without a fixed size: one call per size
            fmaps = feature_maps(model, np.stack([x for _, x in group]), layers,
                                 batch_size=args.batch_size)
            reason = fmaps.reason
            if bar is None:
                bar = tqdm(total=len(images) * (len(fmaps.layers) + 1), desc="feature grids",
                           unit="grid", disable=None, file=sys.stderr)
            for i, (out, _) in enumerate(group):
                grids += len(fmaps.save(out, index=i, max_channels=args.max_channels,
                                        cmap=args.cmap, style=args.style, progress=bar.update)) - 2
                done += 1
                dead = {k: v for k, v in fmaps.dead_counts(index=i).items() if v}
                if dead:
                    whose = "" if len(images) == 1 else f" in {out.name}"
                    print(f"dead (constant) channels{whose}: "
                          + ", ".join(f"{k} {v}" for k, v in dead.items()))
    if bar is not None:
        bar.close()
    if done:
        print(f"layers: {reason}")
        where = (f"{args.out}/" if len(images) == 1
                 else f"{done} subfolders of {Path(args.out)}/ (one per image)")
        print(f"wrote {grids} feature grid(s), overview.png and index.json to {where}")
    return _skipped(failed)


def _cmd_visualize(args: argparse.Namespace) -> int:
    from ._visualize import parse_channels, visualize

    if args.classes is None and (args.layer is None or args.channels is None):
        raise UsageError("give --layer and --channels (e.g. --layer conv2d --channels 0-15), or --classes")
    if args.classes is not None and (args.layer is not None or args.channels is not None):
        raise UsageError("give --classes or --layer with --channels, not both")
    try:
        channels = None if args.channels is None else parse_channels(args.channels)
        classes = None if args.classes is None else parse_channels(args.classes)
    except ValueError as exc:
        raise UsageError(str(exc).replace("channels ", "--channels " if args.classes is None else "--classes ", 1)) from None
    _output_folder(args.out)
    if args.model == "bundled":
        from .models.efficientnet_lite import MEAN_RGB, STDDEV_RGB

        lite = _bundled_model(args)
        model, size = lite.model, None

        def prep(x: Any) -> Any:  # the bundled model's pixel scaling, without its resize and crop
            return (x - MEAN_RGB) / STDDEV_RGB
    else:
        model = _load_model(args.model)
        size, _ = _input_geometry(model, args.size, "camlens.visualize(model, ...)", args.command)
        if None in size:
            raise UsageError("this model has no input size of its own: give --size HEIGHT,WIDTH, e.g. --size 224")
        prep = args.preprocess
    vis = visualize(model, args.layer, channels, classes=classes, position=args.position,
                    size=None if size is None else tuple(size), preprocess=prep,
                    steps=args.steps, lr=args.lr, param=args.param, jitter=args.jitter,
                    blur_every=args.blur_every, tv=args.tv, l2=args.l2, seed=args.seed,
                    batch_size=args.batch_size)
    written = vis.save(args.out)
    gain = vis.final - vis.objectives[0]
    print(f"{len(vis)} image(s) after {args.steps} steps; the objective rose by {float(gain.mean()):.4g} "
          f"on average ({float(gain.min()):.4g} at least)")
    print(f"wrote grid.png, {len(written) - 2} image(s) and index.json to {args.out}/")
    return 0


def _cmd_app(args: argparse.Namespace) -> int:
    if args.model == "bundled":
        args.model = None
    if args.model is None and (args.preprocess is not None or args.size is not None):
        raise UsageError("the bundled model scales and resizes photos itself; drop --preprocess "
                         "and --size")
    if not 0 < args.max_upload_mb <= 1024 or not 0 < args.port < 65536:
        raise UsageError("--max-upload-mb must be in (0, 1024] and --port in 1..65535")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        from .app import serve

        serve(args.model, host=args.host, port=args.port, preprocess=args.preprocess,
              max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), input_size=args.size)
    except (OSError, ImportError) as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:  # serve has said "stopped by Ctrl+C"
        return 130
    return 0


def _read_class_names(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        names = json.loads(text)
        if not isinstance(names, list):
            raise ValueError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import check_options, write_report

    methods = _names(args.method)
    metrics = _names(args.metrics)
    check_options(methods, metrics, args.top)  # bad names fail before the model loads
    _output_file(args.out, "-o")
    options: dict[str, Any] = {}
    images = _images(args.images)
    if args.model == "bundled":
        if args.preprocess is not None or args.classes is not None or args.size is not None:
            raise UsageError("the bundled model has its own scaling, size and ImageNet class "
                             "names; drop --preprocess, --size and --classes")
    elif args.classes is not None:
        try:
            options["class_names"] = _read_class_names(args.classes)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--classes: {exc}") from None
    model, lite, hw, _ = _chosen_model(args, "camlens.explain(model, [a, b])")
    if lite is not None:
        options.update(preprocess=lite.preprocess, display=lite.display, resize=False,
                       class_names=lite.class_names)
        title = args.title or lite.title
    else:
        from .io import as_preprocess

        options["preprocess"] = as_preprocess(args.preprocess)
        options["input_size"] = None if None in hw else hw
        title = args.title or Path(args.model).name
    report = write_report(args.out, model, images, methods=methods, metrics=metrics,
                          top=args.top, layer=args.layer, batch_size=args.batch_size,
                          title=title, progress=None, **options)
    failed = report.failed
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({len(report.images) - len(failed)} image(s), "
          f"{', '.join(report.methods)}; {size / 1e6:.1f} MB)")
    return _skipped(r.error for r in failed)


def _bundled_model(args: argparse.Namespace) -> Bundled:
    """The bundled pretrained EfficientNet-Lite0, which resizes and scales photos itself."""
    if args.size is not None:
        raise UsageError("the bundled model resizes images itself; drop --size")
    if getattr(args, "preprocess", None) is not None:
        raise UsageError("the bundled model scales pixels itself; drop --preprocess")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from .models import bundled

    try:
        return bundled()
    except (ImportError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _chosen_model(args: argparse.Namespace, api: str) -> tuple[Any, Bundled | None, tuple[Any, Any] | None, int]:
    """(model, the bundled model's :class:`~camlens.models.Bundled` or None, the ``(H, W)``
    images are read at (None: their own size), channels) for a command that takes a model file
    or 'bundled' (``api``: the Python function for models the command line cannot use)."""
    if args.model == "bundled":
        lite = _bundled_model(args)
        return lite.model, lite, None, 3
    model = _load_model(args.model)
    size, channels = _input_geometry(model, args.size, api, args.command)
    return model, None, size, channels


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .files import evaluate_files, evaluate_problems

    methods = _names(args.method)
    names = _names(args.metrics)
    problems = evaluate_problems(methods, names, args.steps, args.batch_size,
                                 flag=lambda name: "--" + name.replace("_", "-"))
    if problems:
        raise UsageError(*problems)
    if args.json:
        _output_file(args.json, "--json")
    images = _images(args.images)
    model, lite, _, _ = _chosen_model(args, "camlens.metrics")

    from tqdm import tqdm

    bar = tqdm(total=len(methods) * len(images), desc="evaluating", unit="img", disable=None,
               file=sys.stderr)

    def table(method: str, numbers: dict[str, Any]) -> None:
        with bar.external_write_mode(file=sys.stderr):  # the bar steps aside for the table
            print(_metrics_table(method, numbers, names))
            print()
            sys.stdout.flush()

    with bar:
        done = evaluate_files(model, images, methods=methods, metrics=names, steps=args.steps,
                              score=args.score, target=args.target, layer=args.layer,
                              batch_size=args.batch_size, size=args.size, resize=lite is None,
                              preprocess=lite.preprocess_batch if lite is not None else args.preprocess,
                              on_method=table, progress=bar.update)
    if done.methods:
        low = [n for n in names if not done.higher_is_better[n]]
        high = [n for n in names if done.higher_is_better[n]]
        print("; ".join(part for part in (
            f"lower is better: {', '.join(low)}" if low else "",
            f"higher is better: {', '.join(high)}" if high else "") if part))
    if args.json and done.methods:
        from .viz import write_atomic

        write_atomic(args.json, json.dumps({"model": args.model, **done.to_dict()}, indent=2))
        print(f"wrote {args.json}")
    return _skipped(message for _, message in done.failed)


def _cmd_run(args: argparse.Namespace) -> int:
    from .dataset import run

    methods = _methods(args.method)
    if args.engine != "ray" and (args.address is not None or args.workers is not None):
        raise UsageError("--address and --workers are for --engine ray; add --engine ray or drop them")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1; got {args.workers}")
    if args.boxes is not None and not Path(args.boxes).is_file():
        raise UsageError(f"--boxes {args.boxes}: no such file; give a CSV file with a path column "
                         "and boxes (x0,y0,x1,y1)")
    _output_folder(args.out)
    try:
        done = run(args.model, args.images, args.out, methods=methods, metrics=_names(args.metrics),
                   boxes=args.boxes, engine=args.engine, address=args.address, workers=args.workers,
                   layer=args.layer, target=args.target, size=args.size, preprocess=args.preprocess,
                   batch_size=args.batch_size, overlays=args.overlays, backend=args.backend,
                   steps=args.steps, progress=True)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"camlens: the batches done are kept in {args.out}; run the same command again to "
              "go on from there", file=sys.stderr)
        raise
    from .report.summary import write_summary

    # the page a user opens first: per class the mean map and the metrics, the worst images
    page = write_summary(done.out)
    print(f"wrote {done.results}: {done.rows} rows ({done.images} images x {len(methods)} "
          f"method(s)), raw maps in {done.out / 'maps'}/, summary page {page}")
    shown = 10  # a data set can have thousands of bad files: the table has them all
    code = _skipped(f"{message}" for _, message in done.failed[:shown])
    if len(done.failed) > shown:
        print(f"camlens: ... and {len(done.failed) - shown} more; the error column of "
              f"{done.results} lists them all", file=sys.stderr)
    return code


def _metrics_table(method: str, result: dict[str, Any], names: Sequence[str]) -> str:
    """One method's numbers: a row per image and the mean."""
    labels = [str(r["image"]) for r in result["images"]] + ["mean"]
    first = max(len("image"), *(len(t) for t in labels))
    widths = [max(len(n), 10) for n in names]
    lines = [f"{method} at {result['layer']} (score: {result['score']})",
             "  ".join([f"{'image':<{first}}", *(f"{n:>{w}}" for n, w in zip(names, widths))])]
    for label, row in zip(labels, [*result["images"], result["mean"]]):
        lines.append("  ".join([f"{label:<{first}}", *(f"{row[n]:>{w}.4f}" for n, w in zip(names, widths))]))
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    methods = _methods(args.method)
    images = _images(args.image) if args.image else None  # folders and patterns too
    _output_folder(args.out)
    try:
        return run_demo(args.out, methods, images, layer=args.layer, batch_size=args.batch_size)
    except ImportError as exc:
        raise UsageError(str(exc)) from None


def _cmd_cache(args: argparse.Namespace) -> int:
    from .models import cache_info, clear_cache

    if args.action == "clear":
        count, size = clear_cache()
        print(f"removed {count} file(s), {size / 1e6:.1f} MB, from {cache_info()['path']}")
        return 0
    info = cache_info()
    print(f"weight cache: {info['path']} ($CAMLENS_CACHE sets it)")
    for name, size in info["files"]:
        print(f"  {name}  {size / 1e6:.1f} MB")
    print(f"{len(info['files'])} file(s), {info['bytes'] / 1e6:.1f} MB; `camlens cache clear` removes them")
    return 0


#: what each command runs; it returns the exit status (0, or 1: some images failed)
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "explain": _cmd_explain,
    "demo": _cmd_demo,
    "features": _cmd_features,
    "visualize": _cmd_visualize,
    "report": _cmd_report,
    "evaluate": _cmd_evaluate,
    "run": _cmd_run,
    "layers": _cmd_layers,
    "app": _cmd_app,
    "cache": _cmd_cache,
}

#: what a command raises for a bad command line or a model it cannot use: exit status 2
_USAGE_ERRORS = (UsageError, ValueError, TypeError, NotImplementedError)


class _Stop(KeyboardInterrupt):
    """SIGTERM as the command line sees it: a ``KeyboardInterrupt``, so that everything that
    puts a model back or finishes files on Ctrl-C does the same on SIGTERM."""


@contextlib.contextmanager
def _stop_on_signals(enabled: bool = True) -> Iterator[dict[str, int]]:
    """While a command runs, SIGINT and SIGTERM raise :class:`KeyboardInterrupt` (``_Stop``) in
    the main thread, once: the ``dict`` says which signal came (``"signum"``). A second one
    while the command stops (restoring the model, writing ``results.json``) is ignored so that
    the clean-up finishes; a third ends the process at once. Only the command line does this:
    the library's handler (``camlens._restore``, on only while a patch is on the model) holds a
    signal for the microseconds a patch is being set or undone and then passes it here. A signal ignored when camlens started (``nohup``,
    a shell's background job) stays ignored; the old handlers come back afterwards."""
    came: dict[str, int] = {}
    if not enabled or threading.current_thread() is not threading.main_thread():  # signal() needs it
        yield came
        return

    def handler(signum: int, frame: Any) -> None:
        came["count"] = came.get("count", 0) + 1
        if came["count"] == 1:
            came["signum"] = signum
            if not came.get("closing"):  # else the command is done: main says it and exits
                raise _Stop(signum)
        if came["count"] >= 3:
            os._exit(128 + came["signum"])

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield came
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _interrupted(exc: KeyboardInterrupt, came: dict[str, int]) -> int:
    """The one line said after an interrupt, and the exit status: 128 + the signal's number
    (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process a signal ended."""
    from .files import Interrupted

    signum = came.get("signum", signal.SIGINT)
    what = "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"
    if isinstance(exc, Interrupted):
        done, total = exc.done, exc.total
        tail = (f"{done.results} lists them" if done.results is not None
                else "nothing was written")
        print(f"camlens: {what}: {len(done.images)} of {total} images done; {tail}", file=sys.stderr)
    else:
        print(f"camlens: {what}; files already written are complete", file=sys.stderr)
    return 128 + int(signum)


def _os_error(exc: OSError) -> str:
    """An ``OSError`` as one line: the file, what went wrong, and for the usual ones the fix."""
    import errno

    where = exc.filename if exc.filename is not None else "camlens"
    fix = {errno.ENOSPC: "; free some space or write elsewhere (-o)",
           errno.EACCES: "; fix the permissions or write elsewhere (-o)",
           errno.EROFS: "; write elsewhere (-o)"}.get(exc.errno or 0, "")
    return f"{where}: {exc.strerror or exc}{fix}"


class _QuietTensorFlow:
    """A ``sys.meta_path`` finder that imports ``tensorflow`` with the process's stderr (file
    descriptor 2) on the null device. TensorFlow's C++ start-up lines ("oneDNN custom operations
    are on", "All log messages before absl::InitializeLog()", twice: two of its libraries log
    them) are written to the descriptor while it imports, before its own log level is read, so
    ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them and ``TF_ENABLE_ONEDNN_OPTS=0`` would change the
    numbers. Python's own ``sys.stderr`` stays on the terminal meanwhile: a Python warning or
    error of the import is still seen. Installed by :func:`main` only, never for the library."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with _c_stderr_silenced():
                run(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 on the null device; ``sys.stderr`` on a copy of the real one."""
    try:
        sys.stderr.flush()
        kept = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (a GUI launcher)
        yield
        return
    python_stderr = sys.stderr
    mirror = None
    try:
        encoding = getattr(python_stderr, "encoding", None) or "utf-8"
        mirror = os.fdopen(os.dup(kept), "w", buffering=1, encoding=encoding, errors="backslashreplace")
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        if getattr(python_stderr, "fileno", None) is not None and _is_fd(python_stderr, 2):
            sys.stderr = mirror
        yield
    finally:
        sys.stderr = python_stderr
        if mirror is not None:
            mirror.close()
        os.dup2(kept, 2)
        os.close(kept)


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return bool(stream.fileno() == fd)
    except (OSError, ValueError, AttributeError):
        return False  # pytest's capture, a StringIO: not the descriptor, leave it


def _quiet_frameworks() -> Callable[[], None]:
    """Silence what TensorFlow prints at start-up on the command line (not in the library);
    returns the undo."""
    import logging

    # TensorFlow's C++ INFO and WARNING lines after start-up (CPU features, ...)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    finder = None
    if "tensorflow" not in sys.modules:
        finder = _QuietTensorFlow()
        sys.meta_path.insert(0, finder)
    # absl's Python warnings ("Compiled the loaded model, but the compiled metrics have yet to
    # be built") are about training, which the command line never does; TensorFlow's ("5 out
    # of the last 6 calls ... triggered tf.function retracing", for images of several sizes)
    # are about camlens' programs, which a user of the command line cannot change
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)

    def undo() -> None:
        if finder is not None and finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for log, level in zip(loggers, levels):
            log.setLevel(level)

    return undo


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    undo = _quiet_frameworks()
    try:
        # the app's server handles its own signals (and its Ctrl-C is its normal end)
        with _stop_on_signals(args.command != "app") as came:
            try:
                code = _run(args)
            except KeyboardInterrupt as exc:  # also one that came while an error was being said
                code = _interrupted(exc, came)
            came["closing"] = 1
    finally:
        undo()
    if "signum" in came and code < 128:  # a signal as the command finished: its status
        code = 128 + int(came["signum"])
    return code


def _run(args: argparse.Namespace) -> int:
    """The command, with its errors said in one line each (:data:`_USAGE_ERRORS` and
    ``OSError``); the exit status."""
    try:
        if getattr(args, "batch_size", 1) < 1:
            raise UsageError(f"--batch-size must be at least 1; got {args.batch_size}")
        from .io import use_keras_backend

        use_keras_backend(getattr(args, "backend", None), "--backend")
        return _COMMANDS[args.command](args)
    except _USAGE_ERRORS as exc:
        for line in exc.messages if isinstance(exc, UsageError) else (str(exc),):
            print(f"camlens: {line}", file=sys.stderr)
        if isinstance(exc, UsageError) and exc.system_exit:
            raise SystemExit(2) from None
        return 2
    except OSError as exc:  # a disk that filled up, a folder made read-only while writing
        print(f"camlens: {_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
