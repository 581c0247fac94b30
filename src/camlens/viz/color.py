"""Turning images and heatmaps into displayable RGB ``uint8`` arrays."""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .._image import resize_bilinear

if TYPE_CHECKING:
    from matplotlib.colors import Colormap

__all__ = ["to_rgb_uint8", "colorize", "overlay", "draw_boxes"]

# Resizing and float arithmetic can push a [0, 1] heatmap a hair outside the range.
_RANGE_TOLERANCE = 1e-4


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An image as ``(H, W, 3)`` ``uint8`` RGB, for display.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` and ``(H, W, 4)`` (alpha is dropped).
    ``uint8`` is used as is, ``uint16`` is divided by 257, other integers are used as is
    when within ``[0, 255]`` and min-max scaled otherwise, ``bool`` becomes 0 / 255. Floats
    within ``[0, 1]`` are multiplied by 255, floats within ``[0, 255]`` are used as is and
    anything else (a preprocessed image such as ``(x - 127) / 128``) is min-max scaled.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            "image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); "
            f"got shape {np.shape(image)}"
        )
    arr = arr[:, :, :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)

    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype == np.uint16:
        # 65535 / 257 == 255, so the full 16-bit range maps onto the full 8-bit range.
        return _to_uint8(arr / 257.0)
    if np.issubdtype(arr.dtype, np.integer):
        values = arr.astype(np.float64)
        if arr.size == 0 or (values.min() >= 0 and values.max() <= 255):
            return values.astype(np.uint8)
        return _minmax_255(values)
    if np.issubdtype(arr.dtype, np.floating):
        values = arr.astype(np.float64)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(f"image contains {bad} non-finite value(s) (NaN or inf)")
        if arr.size == 0:
            return values.astype(np.uint8)
        lo, hi = values.min(), values.max()
        if lo >= 0 and hi <= 1:
            return _to_uint8(values * 255.0)
        if lo >= 0 and hi <= 255:
            return _to_uint8(values)
        return _minmax_255(values)
    raise ValueError(f"unsupported image dtype {arr.dtype}; expected an integer, float or bool")


def _minmax_255(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return _to_uint8((values - lo) * (255.0 / (hi - lo)))


def _get_cmap(cmap: str | Colormap) -> Colormap:
    import matplotlib

    if not isinstance(cmap, str):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        names = list(matplotlib.colormaps)
        close = difflib.get_close_matches(cmap, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown colormap {cmap!r}.{hint} See matplotlib.colormaps for all names."
        ) from None


def colorize(heatmap: np.ndarray, cmap: str | Colormap = "jet") -> np.ndarray:
    """A heatmap with values in ``[0, 1]`` through a matplotlib colormap, as ``(..., 3)`` uint8."""
    values = np.asarray(heatmap, dtype=np.float64)
    colormap = _get_cmap(cmap)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(f"heatmap contains {bad} non-finite value(s) (NaN or inf)")
    if values.size and (
        values.min() < -_RANGE_TOLERANCE or values.max() > 1 + _RANGE_TOLERANCE
    ):
        raise ValueError(
            f"heatmap values must be in [0, 1]; got [{values.min():g}, {values.max():g}]. "
            "Scale it first, e.g. with camlens.viz.normalize."
        )
    rgba = colormap(np.clip(values, 0.0, 1.0))
    return _to_uint8(np.asarray(rgba)[..., :3] * 255.0)


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    cmap: str | Colormap = "jet",
    alpha: float = 0.4,
) -> np.ndarray:
    """Blend a colorized heatmap over an image: ``round((1 - alpha) * image + alpha * color)``.

    ``image`` is anything :func:`to_rgb_uint8` takes, ``heatmap`` is ``(h, w)`` in ``[0, 1]``
    and is resized to the image when the sizes differ. For a batch, pass a ``(N, h, w)``
    heatmap with ``(N, H, W, C)`` or ``(N, H, W)`` images; the result is ``(N, H, W, 3)``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}")
    if math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    heat = np.asarray(heatmap, dtype=np.float64)
    images = np.asarray(image)

    if heat.ndim == 2:
        rgb = to_rgb_uint8(images)[None]
        heat = heat[None]
        single = True
    elif heat.ndim == 3:
        if len(heat) == 0 or images.ndim not in (3, 4) or len(images) != len(heat):
            raise ValueError(
                f"a batch of {len(heat)} heatmaps needs as many images, (N, H, W, C) or "
                f"(N, H, W), and N >= 1; got image shape {images.shape}"
            )
        rgb = np.stack([to_rgb_uint8(img) for img in images])
        single = False
    else:
        raise ValueError(f"heatmap must be (h, w) or (N, h, w); got shape {heat.shape}")

    if heat.shape[1:] != rgb.shape[1:3]:
        heat = resize_bilinear(heat, rgb.shape[1:3])
    colored = colorize(heat, cmap)
    blended = _to_uint8((1.0 - alpha) * rgb + alpha * colored.astype(np.float64))
    return blended[0] if single else blended


def draw_boxes(
    image: np.ndarray,
    boxes: Any,
    color: tuple[int, int, int] = (255, 255, 255),
    width: int = 2,
    scale: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """A copy of the uint8 RGB ``image`` ``(H, W, 3)`` with rectangle outlines: ``boxes``
    ``(K, 4)`` as ``(x1, y1, x2, y2)`` in pixels, multiplied by ``scale = (sx, sy)`` first (boxes
    given in the model's input pixels, drawn on a photo of another size). Boxes are clipped to
    the image; an empty list draws nothing."""
    out = np.array(to_rgb_uint8(image), copy=True)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ValueError("boxes must be finite (x1, y1, x2, y2) values")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive number of pixels; got {width!r}")
    h, w = out.shape[:2]
    for x1, y1, x2, y2 in b * np.array([scale[0], scale[1], scale[0], scale[1]]):
        c1, c2 = sorted((int(round(x1)), int(round(x2))))
        r1, r2 = sorted((int(round(y1)), int(round(y2))))
        c1, c2, r1, r2 = max(c1, 0), min(c2, w - 1), max(r1, 0), min(r2, h - 1)
        if c1 > c2 or r1 > r2:
            continue  # wholly outside the image
        out[r1 : min(r1 + width, r2 + 1), c1 : c2 + 1] = color
        out[max(r2 - width + 1, r1) : r2 + 1, c1 : c2 + 1] = color
        out[r1 : r2 + 1, c1 : min(c1 + width, c2 + 1)] = color
        out[r1 : r2 + 1, max(c2 - width + 1, c1) : c2 + 1] = color
    return out
