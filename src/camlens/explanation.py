"""The result of an explanation: maps per layer call site, and ways to show and save them."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import viz
from .io import safe_name
from ._args import warn
from ._image import normalize_flagged

__all__ = ["Site", "Explanation", "SPACE_WORDS", "score_text", "few_values", "is_probability",
           "class_probabilities", "fuse_maps", "FUSIONS"]

#: How every place that shows a score says what it is (the Explanation's summary, the report,
#: the metric results): the space's name, in these words.
SPACE_WORDS = {"probability": "probability", "logit": "logit", "raw": "raw model output"}


def score_text(value: float, space: str) -> str:
    """``"9.372 (logit)"``: a score with the space it is in, as camlens shows scores."""
    return f"{float(value):.4g} ({SPACE_WORDS.get(space, space)})"


def few_values(values: Any, shown: int = 4) -> str:
    """``"[0.25, 0.5, 1, ...] (8 values)"``: the first few of a 1-D array, not all of them."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    text = ", ".join(f"{v:.4g}" for v in flat[:shown])
    if flat.size > shown:
        return f"[{text}, ...] ({flat.size} values)"
    return f"[{text}]"


def is_probability(y: np.ndarray) -> bool:
    """Whether rows of a class output are already probabilities: a one-unit output in [0, 1],
    or rows of non-negative values summing to 1 (within 1e-3). The one rule for the
    Explanation's score space and the metrics' probability score."""
    if y.ndim != 2 or y.size == 0 or not np.isfinite(y).all():
        return False
    if y.shape[1] == 1:
        return bool(((y >= 0) & (y <= 1)).all())
    return bool((y >= 0).all() and np.abs(y.sum(axis=1) - 1.0).max() <= 1e-3)


def class_probabilities(y: np.ndarray) -> np.ndarray:
    """``(N, K)`` class scores as probabilities, row by row (so a row's value does not depend
    on the rows beside it): a row of non-negative values summing to 1 (within 1e-3) as it is,
    any other row through a softmax."""
    y = np.asarray(y, dtype=np.float64)
    e = np.exp(y - y.max(axis=1, keepdims=True))
    soft = e / e.sum(axis=1, keepdims=True)
    already = (y >= 0).all(axis=1) & (np.abs(y.sum(axis=1) - 1.0) <= 1e-3)
    return np.where(already[:, None], y, soft)


@dataclass(frozen=True)
class Site:
    """One call of one layer: ``layer`` is its path, ``call`` which call (0 for the first),
    ``input_index`` the model input whose image the map belongs to."""

    layer: str
    call: int
    input_index: int
    shape: tuple[int | None, ...] | None

    @property
    def label(self) -> str:
        return self.layer if self.call == 0 else f"{self.layer}#{self.call}"


@dataclass
class Explanation:
    """Maps for a batch of ``N`` samples, one per call site of the explained layer(s).

    Attributes:
        maps: one ``(N, H, W)`` float32 array per site, in [0, 1], at the size of its input.
        raw_maps: one ``(N, h, w)`` array per site at the layer's resolution, before
            normalisation (the method's own numbers).
        sites: where each map comes from (layer path, call, input).
        method, target: what was computed, for what score.
        scores: ``(N,)`` the value of the target for each sample.
        class_indices: ``(N,)`` the explained class, for class targets, else ``None``.
        reason: why these layers were used.
        inputs: the model inputs the maps belong to (for overlays), one array per input.
        outputs: the model's outputs on the inputs.
        details: per site, what the method reports beyond the map (pixel attributions:
            ``"attributions"`` ``(N, H, W, c)``; Integrated Gradients also
            ``"completeness_error"``; DFF: ``"concept_maps"``, ``"top_classes"``...), else
            empty dicts.
        target_spec: the :class:`camlens.targets.Target` object that was explained (``target``
            is its description); the metrics measure it again when given this explanation.
        boxes: for a :class:`~camlens.targets.Detection` target, the box explained in each
            image, ``(N, 4)`` (x1, y1, x2, y2) in input pixels; ``overlay`` draws it. Else ``None``.
    """

    maps: list[np.ndarray]
    raw_maps: list[np.ndarray]
    sites: list[Site]
    method: str
    target: str
    scores: np.ndarray
    class_indices: np.ndarray | None
    reason: str
    inputs: list[np.ndarray] = field(repr=False, default_factory=list)
    outputs: list[np.ndarray] = field(repr=False, default_factory=list)
    details: list[dict[str, Any]] = field(repr=False, default_factory=list)
    target_spec: Any = field(repr=False, default=None)
    boxes: np.ndarray | None = field(repr=False, default=None)

    @property
    def score_space(self) -> str:
        """What :attr:`scores` are: ``"logit"`` (a :class:`~camlens.targets.Logit` target, or a
        class of an output that is not a probability: the values a softmax would take),
        ``"probability"`` (a class of an output whose rows are already probabilities), or
        ``"raw"`` (any other target's own value)."""
        from .targets import ClassScore

        spec = self.target_spec
        if not isinstance(spec, ClassScore):
            return "raw"
        if spec.wants_logits:
            return "logit"
        out = spec.output if spec.output is not None else 0
        if not isinstance(out, int) or not -len(self.outputs) <= out < len(self.outputs):
            return "raw"  # an output named by a name the explanation cannot look up
        y = np.asarray(self.outputs[out])
        if y.ndim != 2:
            return "raw"
        return "probability" if is_probability(y) else "logit"

    def __repr__(self) -> str:
        """A few lines that say what was explained, not the arrays (``.maps``, ``.scores``
        hold them)."""
        n = len(self)
        sites = ", ".join(f"{s.label} (input {s.input_index})" for s in self.sites) or "none"
        map_shape = tuple(self.maps[0].shape[1:]) if self.maps else ()
        raw_shape = tuple(self.raw_maps[0].shape[1:]) if self.raw_maps else ()
        if len(self.maps) > 1 and len({tuple(m.shape[1:]) for m in self.maps}) > 1:
            map_shape = "per site " + ", ".join(str(tuple(m.shape[1:])) for m in self.maps)  # type: ignore[assignment]
        if len(self.raw_maps) > 1 and len({tuple(m.shape[1:]) for m in self.raw_maps}) > 1:
            raw_shape = "per site " + ", ".join(str(tuple(m.shape[1:])) for m in self.raw_maps)  # type: ignore[assignment]
        lines = [
            f"Explanation: {self.method}, {n} image{'' if n == 1 else 's'}",
            f"  target:   {self.target}",
            f"  {'sites' if len(self.sites) > 1 else 'site'}:{' ' if len(self.sites) > 1 else '     '}{sites}",
            f"  maps:     {map_shape} per image{' and site' if len(self.maps) > 1 else ''}, in [0, 1]",
            f"  raw maps: {raw_shape} per image (the method's own numbers)",
            f"  scores:   {few_values(self.scores)} ({SPACE_WORDS[self.score_space]})",
        ]
        if self.class_indices is not None:
            lines.append(f"  classes:  {few_values(self.class_indices)}")
        return "\n".join(lines)

    __str__ = __repr__

    @property
    def map(self) -> np.ndarray:
        """The ``(N, H, W)`` maps when there is exactly one call site."""
        if len(self.maps) != 1:
            raise ValueError(
                f"this explanation has {len(self.maps)} call sites "
                f"({', '.join(s.label for s in self.sites)}); use .maps[i]"
            )
        return self.maps[0]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def fused(self, how: str = "max", normalize: str = "minmax") -> "Explanation":
        """The maps of every call site of each input fused into one map per image, as
        torchcam's ``fuse_cams`` does: each site's raw map scaled to ``[0, 1]`` per image,
        resized bilinearly to the largest height and width among them, and combined
        element-wise by ``how``, ``"max"`` (torchcam's) or ``"mean"``.

        Returns an Explanation with one site per model input (labelled by the fused sites'
        labels joined by ``+``), whose ``raw_maps`` are the fused maps at that resolution and
        ``maps`` them resized to the input and scaled by ``normalize``; ``details`` say which
        sites were fused and how. An input with one site keeps it as it is. torchcam's
        LayerCAM also passes each map through ``tanh(2 x)`` before fusing; this does not, for
        any method.
        """
        if how not in FUSIONS:
            raise ValueError(f"how must be one of {', '.join(map(repr, FUSIONS))}; got {how!r}")
        groups: dict[int, list[int]] = {}
        for k, s in enumerate(self.sites):
            groups.setdefault(s.input_index, []).append(k)
        maps, raws, sites, details = [], [], [], []
        for which, ks in groups.items():
            if len(ks) == 1:
                k = ks[0]
                maps.append(self.maps[k])
                raws.append(self.raw_maps[k])
                sites.append(self.sites[k])
                details.append(self.details[k] if k < len(self.details) else {})
                continue
            labels = [self.sites[k].label for k in ks]
            raw = fuse_maps([self.raw_maps[k] for k in ks], how)
            size = self.maps[ks[0]].shape[1:3]
            maps.append(finish_maps(raw, (int(size[0]), int(size[1])), normalize,
                                    f"{self.method} fused over {', '.join(labels)}"))
            raws.append(raw)
            sites.append(Site("+".join(labels), 0, which, tuple(raw.shape[1:3])))
            details.append({"fused": labels, "how": how})
        return dataclasses.replace(
            self, maps=maps, raw_maps=raws, sites=sites, details=details,
            reason=f"{self.reason}; fused by {how} per input",
        )

    def _images_for(self, site: Site, images: Any) -> np.ndarray:
        if images is None:
            if not self.inputs:
                raise ValueError("no images: pass the images to overlay on")
            return self.inputs[site.input_index]
        if isinstance(images, (list, tuple)) and len(self.inputs) > 1:
            return np.asarray(images[site.input_index])
        return np.asarray(images)

    def overlay(
        self,
        images: Any = None,
        cmap: str = "jet",
        alpha: float = 0.4,
        site: int | None = None,
        boxes: Any = "auto",
    ) -> np.ndarray | list[np.ndarray]:
        """Heatmaps blended onto the images, uint8 RGB ``(N, H, W, 3)``.

        ``images``: the photos to draw on (any size: the map is resized to them); by default
        the model inputs, rescaled for display. For a model with several inputs, a list with
        one batch per input. Returns one array for a single site (or when ``site`` is given),
        else a list with one array per site. ``boxes``: outlines to draw, one ``(K, 4)`` array
        per image in input pixels (scaled to the photos); ``"auto"`` draws the explained box of
        a detection, ``None`` nothing.
        """
        picked = range(len(self.sites)) if site is None else [site]
        result = []
        for k in picked:
            imgs = self._images_for(self.sites[k], images)
            if imgs.ndim in (2, 3) and (imgs.ndim == 2 or imgs.shape[-1] in (1, 3, 4)) and len(self) == 1:
                imgs = imgs[None]
            if imgs.shape[0] != len(self):
                raise ValueError(f"{imgs.shape[0]} images given for {len(self)} maps")
            drawn = viz.overlay(imgs, self.maps[k], cmap=cmap, alpha=alpha)
            outlines = boxes
            if isinstance(boxes, str) and boxes == "auto":  # the explained box of a detection
                outlines = None if self.boxes is None else self.boxes[:, None]
            if outlines is not None:
                if len(outlines) != len(drawn):
                    raise ValueError(f"boxes for {len(outlines)} images given for {len(drawn)} maps")
                size = self.inputs[self.sites[k].input_index].shape[1:3] if self.inputs else drawn.shape[1:3]
                scale = (drawn.shape[2] / size[1], drawn.shape[1] / size[0])
                drawn = np.stack([viz.draw_boxes(d, b, scale=scale) for d, b in zip(drawn, outlines)])
            result.append(drawn)
        return result[0] if len(result) == 1 else result

    def plot(self, index: int = 0, images: Any = None, cmap: str = "jet", alpha: float = 0.4) -> Any:
        """A matplotlib Figure for sample ``index``: one row per site with the image, the
        heatmap and the overlay (a siamese pair shows both images)."""
        rows, titles = [], []
        for k, s in enumerate(self.sites):
            img = viz.to_rgb_uint8(self._images_for(s, images)[index])
            rows.append([img, self.maps[k][index], viz.overlay(img, self.maps[k][index], cmap=cmap, alpha=alpha)])
            titles.append([f"input {s.input_index}", f"{self.method} @ {s.label}",
                           f"score {score_text(self.scores[index], self.score_space)}"])
        fig = viz.panel(rows, titles=titles)
        fig.suptitle(self._headline(index))
        return fig

    def _headline(self, index: int) -> str:
        """``"gradcam: score of the top class, class 281"``: what sample ``index`` explains."""
        text = f"{self.method}: {self.target}"
        if self.class_indices is not None:
            text += f", class {int(self.class_indices[index])}"
        return text

    def show(self, index: int = 0, **kwargs: Any) -> None:
        """Display :meth:`plot` in a notebook (or a matplotlib window)."""
        fig = self.plot(index, **kwargs)
        try:
            from IPython.display import display

            display(fig)
        except ImportError:
            import matplotlib.pyplot as plt

            # the figure is built without pyplot; give it a window of pyplot's to appear in
            manager = plt.figure().canvas.manager
            manager.canvas.figure = fig
            fig.set_canvas(manager.canvas)
            plt.show()

    def _repr_png_(self) -> bytes:
        return viz.figure_to_png_bytes(self.plot(0))

    def _repr_html_(self) -> str:
        """The notebook view of sample 0: per call site the image, the map and the overlay
        (inline PNGs, no matplotlib), the target, its score and the layer; text is escaped."""
        import html

        from .viz import data_uri

        def esc(text: object) -> str:
            return html.escape(str(text), quote=True)

        def img(arr: np.ndarray, alt: str) -> str:
            src, w, h = data_uri(arr, max_side=256, fmt="png")
            pixelated = "image-rendering:pixelated;" if max(w, h) < 96 else ""
            return (f'<img src="{src}" width="{w}" height="{h}" alt="{esc(alt)}" '
                    f'style="width:150px;height:auto;{pixelated}">')

        if len(self) == 0:
            return f"<p>camlens {esc(self.method)}: an empty explanation (no samples)</p>"
        more = f" &middot; sample 1 of {len(self)} (<code>.plot(i)</code> for the others)" if len(self) > 1 else ""
        head = (f"<b>{esc(self._headline(0))}</b> &middot; score "
                f"{esc(score_text(self.scores[0], self.score_space))}{more}")
        cols = ["input", "map", "overlay"] if self.inputs else ["map"]
        rows = []
        for k, s in enumerate(self.sites):
            heat = self.maps[k][0]
            cells = []
            if self.inputs:
                picture = viz.to_rgb_uint8(self.inputs[s.input_index][0])
                cells.append(img(picture, f"input {s.input_index}"))
            cells.append(img(viz.colorize(heat), f"map at {s.label}"))
            if self.inputs:
                cells.append(img(viz.overlay(picture, heat), f"overlay at {s.label}"))
            layer = f"{esc(s.label)}<br><small>input {s.input_index}</small>"
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{layer}</td></tr>")
        header = "".join(f"<th>{c}</th>" for c in [*cols, "layer"])
        return (
            f'<div class="camlens-explanation"><div>{head}</div>'
            f"<table><tr>{header}</tr>{''.join(rows)}</table>"
            f"<details><summary>why this layer</summary>{esc(self.reason)}</details></div>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "reason": self.reason,
            "sites": [
                {"layer": s.layer, "call": s.call, "input": s.input_index,
                 "shape": None if s.shape is None else list(s.shape)}
                for s in self.sites
            ],
            "scores": [float(v) for v in self.scores],
            "class_indices": None if self.class_indices is None else [int(v) for v in self.class_indices],
        }

    def save(
        self,
        directory: str | os.PathLike[str],
        images: Any = None,
        names: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.4,
        write_json: bool = True,
    ) -> list[Path]:
        """Write, per sample and site, the overlay and the heatmap as PNG, and (unless
        ``write_json=False``) ``explanation.json`` with layers, target and scores. Returns the
        written paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if names is None:
            names = [f"{i:04d}" for i in range(len(self))]
        if len(names) != len(self):
            raise ValueError(f"{len(names)} names given for {len(self)} samples")
        written = []
        for k, s in enumerate(self.sites):
            over = self.overlay(images, cmap=cmap, alpha=alpha, site=k)
            tag = safe_name(s.label)
            for i, name in enumerate(names):
                stem = f"{safe_name(name)}_{self.method}_{tag}"
                written.append(viz.save_png(over[i], out / f"{stem}_overlay.png"))
                written.append(viz.save_png(viz.colorize(self.maps[k][i], cmap), out / f"{stem}_heatmap.png"))
        if not write_json:
            return written
        meta = self.to_dict()
        meta["files"] = [p.name for p in written]
        meta["names"] = list(names)
        viz.write_atomic(out / "explanation.json", json.dumps(meta, indent=2))
        written.append(out / "explanation.json")
        return written


#: how :meth:`Explanation.fused` combines the maps of several call sites
FUSIONS = ("max", "mean")


def fuse_maps(raw_maps: Sequence[np.ndarray], how: str = "max") -> np.ndarray:
    """One ``(N, h, w)`` map from the ``(N, h_k, w_k)`` maps of several call sites: each scaled
    to ``[0, 1]`` per image (a constant map becomes 0), resized bilinearly to the largest
    ``h_k`` and the largest ``w_k``, combined element-wise by ``how`` (``"max"`` or
    ``"mean"``)."""
    if how not in FUSIONS:
        raise ValueError(f"how must be one of {', '.join(map(repr, FUSIONS))}; got {how!r}")
    if not raw_maps:
        raise ValueError("no maps to fuse")
    h = max(int(m.shape[1]) for m in raw_maps)
    w = max(int(m.shape[2]) for m in raw_maps)
    with warnings.catch_warnings():
        # a constant map was said when it was made
        warnings.simplefilter("ignore", RuntimeWarning)
        scaled = [viz.resize_bilinear(viz.normalize(np.asarray(m, dtype=np.float64)), (h, w)) for m in raw_maps]
    stack = np.stack(scaled)
    return (stack.max(axis=0) if how == "max" else stack.mean(axis=0)).astype(np.float32)


def finish_maps(
    raw: np.ndarray, size: tuple[int, int], mode: str, where: str
) -> np.ndarray:
    """Resize raw maps to the input size and normalise them to [0, 1]; a constant map becomes
    zeros with one warning that says where and why."""
    up = viz.resize_bilinear(raw, size)
    # normalize_flagged reports the constant maps from the one min/max pass it makes anyway,
    # and warns of nothing itself (this warning says where); a percentile map that is mostly
    # one value is zeros without a word, as ever
    maps, constant, _ = normalize_flagged(up, mode=mode)
    if constant.any():
        warn(
            f"the map at {where} is constant for sample(s) {np.flatnonzero(constant).tolist()}: "
            "nothing at this layer raises the score, or the gradient is zero (a saturated "
            "softmax: try camlens.targets.Logit); it is returned as zeros",
            RuntimeWarning
        )
    return maps
