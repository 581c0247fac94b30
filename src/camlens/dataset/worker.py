"""One batch of images in, the table's rows out: :class:`BatchExplainer`, the callable both
engines run (the local engine in a loop, Ray Data as the class of ``map_batches``)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .schema import columns, metric_column
from .spec import RunSpec
from .store import map_file, overlay_file

__all__ = ["BatchExplainer", "map_summary"]

_ALPHA, _CMAP = 0.4, "jet"


def map_summary(raw: np.ndarray) -> tuple[int, int, float | None]:
    """``(peak_y, peak_x, top10_mass)`` of a map: the cell of its maximum (the first in
    row-major order when several share it) and the share of its mass (its positive part) in
    its top 10% cells (``ceil(0.1 * cells)`` of them); None for a map with no mass."""
    m = np.asarray(raw, dtype=np.float64)
    flat = m.reshape(-1)
    peak = int(np.argmax(flat))
    pos = np.maximum(flat, 0.0)
    total = float(pos.sum())
    k = max(1, math.ceil(0.1 * flat.size))
    top = float(np.sort(pos)[::-1][:k].sum())
    return peak // m.shape[-1], peak % m.shape[-1], (top / total if total > 0 else None)


def _boxes_on_map(boxes: list[list[int]], photo_hw: tuple[int, int], map_hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Boxes in the image file's pixels, onto the model input the maps have (the photo was
    resized to it): every input pixel a box touches is in it. Raises ValueError for a box
    outside the photo."""
    H, W = photo_hw
    h, w = map_hw
    out = []
    for x0, y0, x1, y1 in boxes:
        if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
            raise ValueError(f"box {(x0, y0, x1, y1)} is outside the {W}x{H} image (x1, y1 "
                             "exclusive, in the image file's pixels)")
        sx, sy = w / W, h / H
        a, b = int(math.floor(x0 * sx)), int(math.floor(y0 * sy))
        out.append((a, b, max(a + 1, min(w, math.ceil(x1 * sx))), max(b + 1, min(h, math.ceil(y1 * sy)))))
    return out


class BatchExplainer:
    """``BatchExplainer(spec)(batch)``: explains the images of a column batch with each of
    ``spec.methods`` and returns the table's rows as a column batch, one row per image x method
    (images in order, then methods in ``spec.methods`` order). The model is loaded once, on the
    first call (or :meth:`check`).

    The batch has ``path`` and optionally ``label`` (-1 or None: none), ``boxes_json`` (JSON
    boxes ``[[x0, y0, x1, y1], ...]`` in the image file's pixels, or ``""``) and ``index``
    (the item's place in the run, returned as an extra ``index`` column). An image that cannot
    be read, or whose boxes do not fit it, gives rows with ``error`` set and only ``path``,
    ``label`` and ``method`` besides. Each raw map (at the layer's resolution, float32) is
    written to ``<out>/maps/...npy`` and its overlay, when asked, to ``<out>/overlays/...png``,
    each atomically. Same input, same row, except ``seconds`` (the method's time on the batch,
    shared equally among its images).

    A model, method or layer that cannot be used raises (ValueError, TypeError,
    NotImplementedError): that is the run's error, not an image's.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self._loaded = False

    # -- loading ---------------------------------------------------------------------------

    def check(self) -> None:
        """Loads the model and checks that each method and the layer can be used on it."""
        from ..files import _check_model

        self._load()
        for method in self.spec.methods:
            _check_model(self._model, method, self.spec.layer, self.spec.size)

    def _load(self) -> None:
        if self._loaded:
            return
        spec = self.spec
        problems = spec.problems()
        if problems:
            raise ValueError("; ".join(problems))
        from ..io import as_preprocess, image_geometry, load_model, use_keras_backend

        use_keras_backend(spec.backend)
        from ..targets import parse_target

        self._target = parse_target(spec.target) if spec.target is not None else None
        self._display: Callable[[np.ndarray], np.ndarray] | None
        if spec.model == "bundled":
            from ..models import bundled

            lite = bundled()
            self._model = lite.model
            # it crops each photo itself: photos of any size share a batch
            self._one: Callable[[np.ndarray], np.ndarray] | None = lite.preprocess
            self._prep: Callable[[np.ndarray], np.ndarray] | None = None
            self._display, self._hw, self._channels = lite.display, (None, None), 3
        else:
            self._model = load_model(spec.model)
            size = None if spec.size is None else tuple(spec.size)
            self._hw, self._channels = image_geometry(
                self._model, size, drop=f"size={size}",  # type: ignore[arg-type]
                refusal="a data-set run takes models with one image input; this one takes {shapes}")
            # overlays are drawn on the photo as read, never on the preprocessed input
            self._one, self._prep, self._display = None, as_preprocess(spec.preprocess), None
        self._loaded = True

    # -- one batch -------------------------------------------------------------------------

    def _read(self, path: str, boxes_json: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """(picture the overlay is drawn on, model input before a batch preprocess, boxes on
        the map or None). Raises ImageError / ValueError for the image."""
        from ..files import _read_image, _read_photo

        boxes = json.loads(boxes_json) if boxes_json else None
        if self._one is not None:
            if boxes:
                raise ValueError("boxes cannot be used with the bundled model (it crops each "
                                 "photo, so the boxes would miss); use a model file")
            photo = _read_image(path, None, 3)
            x = np.asarray(self._one(photo), np.float32)
            return np.asarray(self._display(x[None]))[0], x, None  # type: ignore[misc]
        photo, x = _read_photo(path, self._hw, self._channels)
        on_map = _boxes_on_map(boxes, photo.shape[:2], x.shape[:2]) if boxes else None
        return photo, x, on_map

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.explain(batch, self.read(batch))

    def read(self, batch: dict[str, Any]) -> list[Any]:
        """The images of ``batch`` read from disk (per image its pictures, or the error): the
        first half of a call, which the local engine runs for the next batch on a second
        thread while this one is explained."""
        from ..io import ImageError

        self._load()
        boxes = [str(v) if v is not None else "" for v in batch["boxes_json"]] \
            if "boxes_json" in batch else [""] * len(batch["path"])
        out: list[Any] = []
        for path, box in zip(batch["path"], boxes):
            try:
                out.append(self._read(str(path), box))
            except (ImageError, ValueError) as exc:
                out.append(str(exc))
        return out

    def explain(self, batch: dict[str, Any], read: list[Any]) -> dict[str, np.ndarray]:
        """The rows of ``batch``, whose images :meth:`read` gave as ``read``."""
        self._load()
        spec = self.spec
        paths = [str(p) for p in batch["path"]]
        n = len(paths)
        labels = [_label(v) for v in batch["label"]] if "label" in batch else [None] * n
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        groups: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray, Any]]] = {}
        for i, got in enumerate(read):
            if isinstance(got, str):  # the image's error
                for m in spec.methods:
                    rows[i, m] = {"path": paths[i], "label": labels[i], "method": m, "error": got}
                continue
            photo, x, on_map = got
            groups.setdefault(x.shape, []).append((i, photo, x, on_map))
        for group in groups.values():  # a model without a fixed size: one call per size
            x = np.stack([g[2] for g in group])
            if self._prep is not None:
                x = np.asarray(self._prep(x), np.float32)
            for method in spec.methods:
                for (i, _, _, _), row in zip(group, self._explain(x, method, group, paths)):
                    row.update(path=paths[i], label=labels[i], method=method)
                    rows[i, method] = row
        out_rows = [rows[i, m] for i in range(n) for m in spec.methods]
        names = [c for c, _ in columns(spec.metrics)]
        result = {c: np.array([r.get(c) for r in out_rows], dtype=object) for c in names}
        if "index" in batch:
            idx = np.asarray(batch["index"], dtype=np.int64)
            result["index"] = np.repeat(idx, len(spec.methods))
        return result

    def _explain(self, x: np.ndarray, method: str, group: list[tuple[int, np.ndarray, np.ndarray, Any]],
                 paths: list[str]) -> list[dict[str, Any]]:
        from .._explain import explain
        from ..explanation import class_probabilities
        from ..files import save_npy
        from ..metrics import energy_pointing_game, evaluate, pointing_game

        spec = self.spec
        start = time.perf_counter()
        exp = explain(self._model, x, method=method, target=self._target, layer=spec.layer,
                      batch_size=spec.batch_size)
        if len(exp.sites) != 1:
            raise ValueError(f"{method} gave {len(exp.sites)} maps per image (the layer is "
                             f"called at {', '.join(s.label for s in exp.sites)}); a data-set run "
                             "takes one: give one call site with --layer (PATH#1 for the second)")
        numbers = evaluate(self._model, exp, list(spec.metrics), steps=spec.steps,
                           batch_size=spec.batch_size, target=self._target) if spec.metrics else {}
        seconds = (time.perf_counter() - start) / len(group)
        y = np.asarray(exp.outputs[0]) if exp.outputs else np.zeros((0,))
        classes = y.ndim == 2 and y.shape[1] > 1
        if classes:
            probs = class_probabilities(y)
        label = exp.sites[0].label
        rows = []
        for j, (i, photo, _, on_map) in enumerate(group):
            key = paths[i]
            raw = np.asarray(exp.raw_maps[0][j], dtype=np.float32)
            peak_y, peak_x, mass = map_summary(raw)
            rel = map_file(method, key)
            save_npy(Path(spec.out) / rel, raw)
            row: dict[str, Any] = {
                "predicted": int(np.argmax(y[j])) if classes else None,
                "predicted_score": float(probs[j].max()) if classes else None,
                "target": (str(int(exp.class_indices[j])) if exp.class_indices is not None
                           else exp.target),
                "target_score": float(exp.scores[j]), "layer": label,
                "peak_y": peak_y, "peak_x": peak_x, "top10_mass": mass,
                "seconds": seconds, "map_file": rel, "error": None,
            }
            for name, res in numbers.items():
                row[metric_column(name)] = float(res.per_image[j])
            if on_map is not None:
                m = exp.maps[0][j][None]
                row["pointing_hit"] = bool(pointing_game(m, [on_map]).per_image[0] > 0)
                row["energy_share"] = float(energy_pointing_game(m, [on_map]).per_image[0])
            if spec.save_overlays:
                from ..files import _photo_overlay
                from ..viz import save_png

                rel_png = overlay_file(method, key)
                save_png(_photo_overlay(photo, exp.maps[0][j], _CMAP, _ALPHA), Path(spec.out) / rel_png)
                row["overlay_file"] = rel_png
            rows.append(row)
        return rows


def _label(v: Any) -> int | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) or f < 0 else int(f)
