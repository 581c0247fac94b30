"""Run the model and the methods on each image; keep only what the page shows (encoded images,
predictions, layers, metric values), so that 200 images cost megabytes, not gigabytes."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._args import warn
from ..explanation import score_text
from ..viz import data_uri

__all__ = ["Panel", "ImageResult", "Report", "collect", "check_options", "HIGHER_IS_BETTER", "MetricFn"]

#: A metric for the report: ``fn(model, explanation) -> {metric name: (N,) values}``, one value
#: per explained sample (several names are fine when they share work, as deletion and insertion
#: do).
MetricFn = Callable[[Any, Any], Mapping[str, Any]]

#: Which way is better, per metric name: deletion AUC and average drop are better low, insertion
#: AUC and increase in confidence are better high.
HIGHER_IS_BETTER: dict[str, bool] = {
    "deletion": False,
    "insertion": True,
    "average_drop": False,
    "increase_in_confidence": True,
}

_MAX_TOP = 50
#: the prediction kind of a one-unit output: its value, shown as it is
RAW_PREDICTIONS = "raw model output"


@dataclass
class Panel:
    """One method at one call site for one image: the overlay and the map as ``data:`` URIs
    (with their pixel sizes), and which layer."""

    method: str
    site: str
    overlay: tuple[str, int, int]
    heatmap: tuple[str, int, int]


@dataclass
class ImageResult:
    """What the report shows for one image; ``error`` is set (and the rest empty) when the image
    could not be used."""

    name: str
    image: tuple[str, int, int] | None = None
    predictions: list[tuple[int, str, float]] = field(default_factory=list)
    explained: tuple[int | None, str, float] | None = None  # (class, label, target score)
    score_space: str = ""  # what the target score is: "probability", "logit" or "raw"
    panels: list[Panel] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)  # method -> site labels
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> name -> value
    error: str | None = None


@dataclass
class Report:
    """Everything :func:`~camlens.report.render_html` needs; no arrays, no model."""

    title: str
    methods: list[str]
    images: list[ImageResult]
    reasons: dict[str, str]  # method -> why its layer was used
    metric_names: list[str]
    higher_is_better: dict[str, bool]
    prediction_kind: str  # what the prediction values are
    target: str
    cmap: str
    alpha: float

    @property
    def failed(self) -> list[ImageResult]:
        return [r for r in self.images if r.error is not None]


def collect(
    model: Any,
    images: Sequence[Any],
    names: Sequence[str] | None = None,
    *,
    methods: Sequence[Any] = ("gradcam",),
    metrics: Sequence[str | MetricFn] = (),
    higher_is_better: Mapping[str, bool] | None = None,
    top: int = 5,
    class_names: Sequence[str] | None = None,
    preprocess: str | Callable[[np.ndarray], np.ndarray] | None = None,
    display: Callable[[np.ndarray], np.ndarray] | None = None,
    resize: bool = True,
    input_size: tuple[int, int] | None = None,
    layer: Any = "auto",
    target: Any = None,
    output: int | str | None = None,
    batch_size: int = 16,
    cmap: str = "jet",
    alpha: float = 0.4,
    size: int = 224,
    title: str | None = None,
    progress: bool | None = False,
) -> Report:
    """Explain every image with every method and keep what the HTML page shows.

    Args:
        model: a one-image model (Keras 3, or a torch module with ``preprocess`` giving
            channels-last arrays of its input size).
        images: file paths and/or arrays of pixel values 0..255 ``(H, W, C)``. A file that
            cannot be read becomes a failure entry of the report; the others go on.
        names: one label per image (default: the file name, or ``image N``).
        methods: method names or method instances, as for :func:`camlens.explain`.
        metrics: names known to ``camlens.metrics`` ("deletion", "insertion", "average_drop",
            "increase_in_confidence") or callables ``fn(model, explanation) -> {name: (N,)}``.
        higher_is_better: directions for metric names not in :data:`HIGHER_IS_BETTER`.
        top: how many predictions to list per image.
        class_names: one label per model output unit.
        preprocess: pixels 0..255 ``(H, W, C)`` -> one model input, or a name of
            :data:`camlens.io.PREPROCESSING` ("unit", "imagenet", "caffe", ...); default: none.
        display: one model input -> the uint8 image to draw on; default: the pixels when
            ``preprocess`` keeps their size, else the input rescaled for display.
        resize: resize images to the model's input size before ``preprocess`` (turn it off
            when ``preprocess`` resizes, like ``camlens.models.preprocess``).
        input_size: ``(H, W)`` to resize images to for a model without a fixed input size (a
            torch module); default: each image's own size. A model with a size of its own
            must agree.
        layer, target, output, batch_size: as for :func:`camlens.explain`.
        cmap, alpha: overlay colours.
        size: the longer side of the stored images, in pixels.
        title: the page title (default: the model's name).
        progress: show a progress bar on stderr (``None``: only on a terminal).
    """
    from ..adapters import adapt
    from .._explain import explain
    from ..io import image_geometry
    from ..models import bundled_parts
    from ..viz.color import _get_cmap

    lite = bundled_parts(model)
    if lite is not None:  # the bundled model: its own crop, scaling, display and class names
        model = lite.model
        if preprocess is None:
            preprocess, resize = lite.preprocess, False
            display = display if display is not None else lite.display
        class_names = class_names if class_names is not None else lite.class_names
        title = title if title is not None else lite.title
    unscaled = lite is None and preprocess is None and not _scales_itself(model)

    items = list(images)
    if not items:
        raise ValueError("no images: give at least one image file or (H, W, C) array")
    if names is None:
        names = [_default_name(item, i) for i, item in enumerate(items)]
    names = [str(n) for n in names]
    if len(names) != len(items):
        raise ValueError(f"{len(names)} names given for {len(items)} images")
    methods = [methods] if isinstance(methods, str) else list(methods)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    algos, metric_fns = check_options(methods, metrics, top)
    method_names = [a.name for a in algos]
    if isinstance(preprocess, str):
        from ..io import as_preprocess

        preprocess = as_preprocess(preprocess)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels; got {size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha}")
    _get_cmap(cmap)
    directions = {**HIGHER_IS_BETTER, **_package_directions(), **(higher_is_better or {})}
    if unscaled:  # checked after the options, so a bad option is said first
        say = ("the report feeds the photos' pixels to the model as they are, unscaled 0..255: "
               "pass preprocess= (one photo 0..255 -> one model input) if the model expects "
               "scaled input (preprocess=lambda x: x says it does not)")
        if class_names is None:
            say += ", and class_names= to name the classes (else they are 'class N')"
        warn(say + "; for the bundled EfficientNet-Lite0 pass camlens.models.bundled()", UserWarning)

    (h, w), c = image_geometry(
        model, input_size, drop=f"input_size={input_size}",
        refusal="the report takes one-image models; this one takes {shapes}. "
                "Use camlens.explain(model, [a, b]) and Explanation.plot() for pairs.",
    )
    fixed = (h, w) if resize and h is not None and w is not None else None
    out_index = _output_index(adapt(model), output)

    results = [ImageResult(name=n) for n in names]
    state: dict[str, Any] = {"reasons": {}, "kind": "", "target": "", "metric_names": []}
    bar = _progress(len(items), progress)
    try:
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            ready: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray]]] = {}
            for i in chunk:
                try:
                    x, shown = _prepare(items[i], fixed, c, preprocess, display)
                except ValueError as exc:  # ImageError is a ValueError
                    results[i].error = str(exc)
                    continue
                ready.setdefault(x.shape, []).append((i, x, shown))
            # models without a fixed size: images of one size go together
            for group in ready.values():
                _explain_group(
                    model, group, results, algos, metric_fns, directions, state,
                    top=top, class_names=class_names, layer=layer, target=target,
                    output=output, out_index=out_index, batch_size=batch_size,
                    cmap=cmap, alpha=alpha, size=size, explain=explain,
                )
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return Report(
        title=title if title is not None else str(getattr(model, "name", type(model).__name__)),
        methods=method_names,
        images=results,
        reasons=state["reasons"],
        metric_names=state["metric_names"],
        higher_is_better={k: directions[k] for k in state["metric_names"]},
        prediction_kind=state["kind"],
        target=state["target"],
        cmap=cmap if isinstance(cmap, str) else getattr(cmap, "name", "custom"),
        alpha=alpha,
    )


def _scales_itself(model: Any) -> bool:
    """Whether a Keras model starts with a layer that scales pixels (``Rescaling``,
    ``Normalization``): then 0..255 is what it takes. Read from class names, so no framework is
    imported."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (list, tuple)):
        return False
    return any(type(layer).__name__ in ("Rescaling", "Normalization") for layer in layers[:4])


def check_options(methods: Sequence[Any], metrics: Sequence[str | MetricFn], top: int) -> tuple[list[Any], list[MetricFn]]:
    """The methods and metrics, resolved; a ``ValueError`` that names the bad one otherwise
    (cheap: the command line calls it before it loads the model)."""
    from ..methods import get_method

    if isinstance(methods, str) or isinstance(metrics, str):
        raise TypeError("methods and metrics are lists of names: methods=['gradcam'], metrics=['deletion']")
    if not methods:
        raise ValueError("no methods: give at least one, e.g. methods=['gradcam']")
    algos = [get_method(m) for m in methods]  # unknown names fail here, with hints
    names = [a.name for a in algos]
    if len(set(names)) != len(names):
        raise ValueError(f"a method is named twice: {', '.join(map(str, methods))}")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= _MAX_TOP:
        raise ValueError(f"top must be a whole number from 1 to {_MAX_TOP}; got {top!r}")
    return algos, [_resolve_metric(m) for m in metrics]


def _default_name(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name
    return f"image {i + 1}"


def _output_index(adapter: Any, output: int | str | None) -> int:
    if output is None:
        return 0
    if isinstance(output, int):
        return output
    names = adapter.output_names()
    if output not in names:
        raise ValueError(f"no output {output!r}; the model's outputs are {', '.join(names)}")
    return names.index(output)


def _progress(total: int, enabled: bool | None) -> Any:
    if enabled is False:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="report", unit="img", disable=None if enabled is None else False, file=sys.stderr)


def _prepare(
    item: Any,
    fixed: tuple[int, int] | None,
    channels: int,
    preprocess: Callable[[np.ndarray], np.ndarray] | None,
    display: Callable[[np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (model input, uint8 image to draw on)."""
    from ..io import _resize, load_image
    from ..viz import to_rgb_uint8

    if isinstance(item, (str, os.PathLike)):
        pixels = load_image(item, fixed, channels=channels)
    else:
        pixels = np.asarray(item, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
            raise ValueError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {pixels.shape}")
        if not np.isfinite(pixels).all():
            raise ValueError("the image array holds NaN or inf")
        pixels = pixels[..., :3]
        if channels == 1 and pixels.shape[-1] == 3:
            pixels = pixels @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        elif channels == 3 and pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        if fixed is not None and pixels.shape[:2] != fixed:
            pixels = _resize(pixels, fixed)
    x = np.asarray(preprocess(pixels) if preprocess is not None else pixels, dtype=np.float32)
    if display is not None:
        shown = to_rgb_uint8(np.asarray(display(x)))
    elif x.shape[:2] == pixels.shape[:2]:
        # the pixels are 0..255 by contract: no min-max guess, a dark image stays dark
        shown = to_rgb_uint8(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    else:
        shown = to_rgb_uint8(x)
    return x, shown


def _resolve_metric(metric: str | MetricFn) -> MetricFn:
    if callable(metric):
        return metric
    if not isinstance(metric, str):
        raise TypeError(f"a metric is a name or a callable fn(model, explanation); got {type(metric).__name__}")
    return _package_metric(metric)


def _package_metric(name: str) -> MetricFn:
    """The named metric of ``camlens.metrics``, as a report metric.

    The contract asked of that package: ``get_metric(name)`` returns a callable
    ``fn(model, explanation) -> {name: (N,) values}`` and raises ``ValueError`` naming the
    known metrics for an unknown name."""
    try:
        from ..metrics import get_metric
    except ImportError:
        raise ValueError(
            f"metric {name!r} needs camlens.metrics (get_metric), which this install does not "
            "have; pass a callable fn(model, explanation) -> {name: values} instead"
        ) from None
    fn: MetricFn = get_metric(name)
    return fn


def _package_directions() -> dict[str, bool]:
    """``camlens.metrics.METRICS``: every metric it knows and whether higher is better."""
    try:
        from ..metrics import METRICS
    except ImportError:
        return {}
    return dict(METRICS)


def _predictions(
    out: np.ndarray, top: int, class_names: Sequence[str] | None
) -> tuple[str, list[list[tuple[int, str, float]]]]:
    """(what the values are, per sample the ``top`` classes as (index, label, value))."""
    z = np.asarray(out, dtype=np.float64).reshape(len(out), -1) if out.ndim > 1 else np.asarray(out, np.float64)[:, None]
    if out.ndim > 2:
        return "the output is not a vector of classes; no predictions listed", [[] for _ in z]
    k = z.shape[1]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names given for a model with {k} outputs")
    if k == 1:
        label = class_names[0] if class_names is not None else "output"
        return RAW_PREDICTIONS, [[(0, label, float(row[0]))] for row in z]
    finite = np.isfinite(z).all()
    if finite and z.min() >= 0 and z.max() <= 1 and np.allclose(z.sum(axis=1), 1.0, atol=1e-3):
        kind, p = "probability", z
    else:
        kind = "probability: softmax of the logits"
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :top]
    label = (lambda j: str(class_names[j])) if class_names is not None else (lambda j: f"class {j}")
    return kind, [[(int(j), label(int(j)), float(row[j])) for j in idx] for row, idx in zip(p, order)]


def _explain_group(
    model: Any,
    group: list[tuple[int, np.ndarray, np.ndarray]],
    results: list[ImageResult],
    methods: list[Any],
    metric_fns: list[MetricFn],
    directions: Mapping[str, bool],
    state: dict[str, Any],
    *,
    top: int,
    class_names: Sequence[str] | None,
    layer: Any,
    target: Any,
    output: int | str | None,
    out_index: int,
    batch_size: int,
    cmap: str,
    alpha: float,
    size: int,
    explain: Callable[..., Any],
) -> None:
    from .. import viz

    idx = [i for i, _, _ in group]
    x = np.stack([a for _, a, _ in group])
    shown = [s for _, _, s in group]
    for m_pos, algo in enumerate(methods):
        method = algo.name
        exp = explain(model, x, method=algo, target=target, layer=layer, output=output, batch_size=batch_size)
        state["reasons"].setdefault(method, exp.reason)
        state["target"] = state["target"] or exp.target
        if m_pos == 0:
            kind, preds = _predictions(np.asarray(exp.outputs[out_index]), top, class_names)
            state["kind"] = state["kind"] or kind
            for j, i in enumerate(idx):
                results[i].image = data_uri(shown[j], size)
                results[i].predictions = preds[j]
                cls = None if exp.class_indices is None else int(exp.class_indices[j])
                label = "" if cls is None else (str(class_names[cls]) if class_names is not None and 0 <= cls < len(class_names) else f"class {cls}")
                results[i].explained = (cls, label, float(exp.scores[j]))
                results[i].score_space = exp.score_space
        for j, i in enumerate(idx):
            results[i].layers[method] = ", ".join(s.label for s in exp.sites)
            for k, site in enumerate(exp.sites):
                heat = exp.maps[k][j]
                results[i].panels.append(Panel(
                    method=method,
                    site=site.label,
                    overlay=data_uri(viz.overlay(shown[j], heat, cmap=cmap, alpha=alpha), size),
                    heatmap=data_uri(viz.colorize(heat, cmap), size),
                ))
        for fn in metric_fns:
            values = fn(model, exp)
            if not isinstance(values, Mapping):
                raise TypeError(f"a report metric returns {{name: values}}; {fn!r} returned {type(values).__name__}")
            for name, v in values.items():
                if name not in directions:
                    raise ValueError(
                        f"metric {name!r}: is higher or lower better? pass "
                        f"higher_is_better={{{name!r}: True}} (or False)"
                    )
                if name not in state["metric_names"]:
                    state["metric_names"].append(name)
                arr = np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (len(idx),))
                for j, i in enumerate(idx):
                    results[i].metrics.setdefault(method, {})[name] = float(arr[j])


def best_methods(values: Mapping[str, float], higher_is_better: bool) -> set[str]:
    """The methods with the best finite value (all of them on a tie); empty when none is finite."""
    finite = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return set()
    best = max(finite.values()) if higher_is_better else min(finite.values())
    return {m for m, v in finite.items() if v == best}
