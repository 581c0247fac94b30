"""Test-time augmentation: average a method's maps over flipped, zoomed and brightness-scaled
copies of the input.

Each copy is explained with :func:`camlens.explain`, its maps are brought back to the
original geometry, and the maps are averaged pixel by pixel over the copies that saw that
pixel. Flips and centred zooms keep the input size, so any model that takes the original
input takes the copies. ``flips=True, multiply=(0.9, 1.0, 1.1)`` is pytorch-grad-cam's
``aug_smooth`` (ttach's horizontal flip times ``Multiply([0.9, 1, 1.1])``: six copies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._image import resize_bilinear

if TYPE_CHECKING:
    from .explanation import Explanation

__all__ = ["tta", "transform", "untransform"]


def _box(size: tuple[int, int], scale: float) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: for ``scale > 1`` the centre crop that fills the zoomed image,
    for ``scale < 1`` where the shrunk image sits on the canvas."""
    H, W = size
    f = 1.0 / scale if scale > 1 else scale
    h, w = max(1, round(H * f)), max(1, round(W * f))
    return (H - h) // 2, (W - w) // 2, h, w


def _resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    N, h, w, C = images.shape
    planes = np.moveaxis(images, -1, 1).reshape(N * C, h, w)
    out = resize_bilinear(planes, size).reshape(N, C, *size)
    return np.moveaxis(out, 1, -1)


def _check_scale(scale: float) -> float:
    if not (isinstance(scale, (int, float, np.floating, np.integer)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scales must be positive numbers (2.0 zooms in 2x, 0.5 zooms out); got {scale!r}")
    return float(scale)


def _check_factor(factor: float) -> float:
    if isinstance(factor, bool) or not (isinstance(factor, (int, float, np.floating, np.integer))
                                        and np.isfinite(factor) and factor > 0):
        raise ValueError(f"multiply must hold positive numbers (0.9 darkens the input by 10%); got {factor!r}")
    return float(factor)


def transform(images: np.ndarray, flip: bool = False, scale: float = 1.0) -> np.ndarray:
    """Images ``(N, H, W, C)`` flipped left-right (``flip``), then zoomed about the centre by
    ``scale`` at the same size: ``scale > 1`` resizes the central ``H/scale x W/scale`` crop up
    to ``H x W``; ``scale < 1`` shrinks the image to ``H*scale x W*scale`` and pads it with
    each image's channel means."""
    images = np.asarray(images, dtype=np.float32)
    scale = _check_scale(scale)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
    out = images[:, :, ::-1] if flip else images
    size = (out.shape[1], out.shape[2])
    if scale == 1.0:
        return np.ascontiguousarray(out)
    t, l, h, w = _box(size, scale)
    if scale > 1:
        return _resize_images(out[:, t : t + h, l : l + w], size)
    canvas = np.broadcast_to(out.mean(axis=(1, 2), keepdims=True), out.shape).copy()
    canvas[:, t : t + h, l : l + w] = _resize_images(out, (h, w))
    return canvas


def untransform(maps: np.ndarray, flip: bool = False, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(N, H, W)`` of images made by :func:`transform` brought back onto the original
    images, and the ``(H, W)`` weight of each pixel: 1 where the transformed image showed it,
    0 where it did not (outside the crop of a zoom in)."""
    maps = np.asarray(maps, dtype=np.float32)
    scale = _check_scale(scale)
    size = (maps.shape[1], maps.shape[2])
    weight = np.ones(size, dtype=np.float32)
    back = maps
    if scale != 1.0:
        t, l, h, w = _box(size, scale)
        if scale > 1:
            back = np.zeros_like(maps)
            back[:, t : t + h, l : l + w] = resize_bilinear(maps, (h, w))
            weight = np.zeros(size, dtype=np.float32)
            weight[t : t + h, l : l + w] = 1.0
        else:
            back = resize_bilinear(maps[:, t : t + h, l : l + w], size)
    if flip:
        back, weight = back[:, :, ::-1], weight[:, ::-1]
    return np.ascontiguousarray(back), np.ascontiguousarray(weight)


def tta(
    model: Any,
    inputs: Any,
    method: Any = "gradcam",
    *,
    flips: bool = True,
    scales: Sequence[float] = (1.0,),
    multiply: Sequence[float] = (1.0,),
    **explain_kwargs: Any,
) -> Explanation:
    """``method``'s maps averaged over test-time augmentations of ``inputs``.

    Every combination of ``scales`` (see :func:`transform`; 1.0, the untransformed input, is
    always included), ``multiply`` (the input as the model takes it, preprocessed, times each
    factor; 1.0 always included) and, with ``flips``, a left-right flip is explained with
    :func:`camlens.explain` (``explain_kwargs``: ``target``, ``layer``, ``output``...). Each
    map is brought back to the original geometry (:func:`untransform`) and pixel ``p`` gets
    ``sum_t w_t(p) m_t(p) / sum_t w_t(p)`` over the copies ``t`` that showed it. With
    ``target=None`` every copy explains the class found on the original input, so a flip
    cannot switch the class.

    ``flips=True, multiply=(0.9, 1.0, 1.1)`` (scales 1.0) is pytorch-grad-cam's
    ``aug_smooth=True``: the mean of the six copies' min-max normalised maps, flipped back.
    One deliberate difference: with no target pytorch-grad-cam explains each copy's own top
    class, camlens the original's (above).

    Returns the untransformed run's :class:`~camlens.explanation.Explanation` with the
    averaged maps as ``maps`` and ``raw_maps`` (``(N, H, W)`` in [0, 1], at the input size)
    and ``method`` ``"<method>+tta"``.

    Example::

        exp = camlens.smooth.tta(model, images, "gradcam", flips=True, scales=(1.0, 1.25))
        exp = camlens.tta(model, images, "gradcam", multiply=(0.9, 1.0, 1.1))  # aug_smooth
    """
    from .adapters import adapt
    from ._explain import explain

    todo = [1.0] + [s for s in dict.fromkeys(_check_scale(s) for s in scales) if s != 1.0]
    factors = [1.0] + [f for f in dict.fromkeys(_check_factor(f) for f in multiply) if f != 1.0]
    base = explain(model, inputs, method, **explain_kwargs)
    kwargs = dict(explain_kwargs)
    if kwargs.get("target") is None and base.class_indices is not None:
        kwargs["target"] = [int(c) for c in base.class_indices]
    arrays = base.inputs  # channels-last, as the adapter prepared them
    adapter = adapt(model)
    total = [m.astype(np.float64) for m in base.maps]
    weight = [np.ones(m.shape[1:]) for m in base.maps]
    for scale in todo:
        for flip in (False, True) if flips else (False,):
            for factor in factors:
                if scale == 1.0 and not flip and factor == 1.0:
                    continue  # the base run
                copies = adapter.native_inputs([transform(a, flip, scale) * np.float32(factor) for a in arrays])
                exp = explain(model, copies[0] if len(copies) == 1 else copies, method, **kwargs)
                for k, m in enumerate(exp.maps):
                    back, w = untransform(m, flip, scale)
                    total[k] += back * w
                    weight[k] += w
    maps = [(t / w).astype(np.float32) for t, w in zip(total, weight)]
    return dataclasses.replace(base, maps=maps, raw_maps=[m.copy() for m in maps], method=f"{base.method}+tta")
