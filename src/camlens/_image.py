"""Array operations every layer may use: per-map normalisation and bilinear resizing (numpy only)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import numpy as np
from ._args import warn

__all__ = ["normalize", "resize_bilinear", "NORMALIZE_MODES"]

NORMALIZE_MODES = ("minmax", "percentile")


def _as_stack(maps: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """``maps`` as a float64 ``(N, h, w)`` stack, and whether the input was a single map."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: maps must be (h, w) or (N, h, w); got shape {arr.shape}")
    if arr.shape[-1] == 0 or arr.shape[-2] == 0:
        raise ValueError(f"{name}: maps must not be empty; got shape {arr.shape}")
    return (arr[None] if arr.ndim == 2 else arr), arr.ndim == 2


def normalize(
    maps: np.ndarray,
    mode: str = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """Scale each map of ``maps`` (``(h, w)`` or ``(N, h, w)``) to ``[0, 1]``, on its own.

    ``"minmax"`` maps the minimum to 0 and the maximum to 1. ``"percentile"`` first clips
    to the ``percentiles`` (low, high) of the map, so a few extreme pixels don't wash out
    the rest. A map with nothing to scale becomes all zeros, with a ``RuntimeWarning``.
    """
    out, constant, clipped = normalize_flagged(maps, mode, percentiles)
    n_const, n_clipped = int(constant.sum()), int(clipped.sum())
    if n_const or n_clipped:
        single, n = np.ndim(out) == 2, len(constant)
        p_lo, p_hi = (float(p) for p in percentiles)
        what = []
        if n_const:
            what.append(
                ("the map is" if single else f"{n_const} of {n} maps are")
                + " constant (e.g. the gradient was zero at this layer)"
            )
        if n_clipped:
            what.append(
                ("the map has" if single else f"{n_clipped} of {n} maps have")
                + f" equal percentiles {p_lo:g} and {p_hi:g} (mostly one value, e.g. a sparse"
                " map; mode='minmax' keeps such maps)"
            )
        warn("; ".join(what) + "; set to zero", RuntimeWarning)
    return out


def normalize_flagged(
    maps: np.ndarray,
    mode: str = "minmax",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`normalize` without its warning: ``(maps scaled, constant, clipped)``, the last two
    ``(N,)`` booleans that say which maps were constant and which (percentile mode) had equal
    percentiles though not constant, all of them set to zero. A caller that warns in its own
    words (``finish_maps``) reads them here, from the one min/max reduction ``normalize`` needs."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(NORMALIZE_MODES)}")
    p_lo, p_hi = (float(p) for p in percentiles)
    if mode == "percentile" and not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100; got {percentiles}")
    given = np.asarray(maps)
    if mode == "minmax" and given.dtype in (np.float32, np.float64) and given.ndim in (2, 3) and given.size:
        stack, single = (given[None] if given.ndim == 2 else given), given.ndim == 2
    else:
        stack, single = _as_stack(maps, "normalize")
    # NaN spreads to the minimum and an infinity reaches one end: the ends tell whether every
    # value is finite without a pass over the whole stack (1-2 ms for 8 maps of 224x224)
    lo = stack.min(axis=(1, 2), keepdims=True)
    hi = stack.max(axis=(1, 2), keepdims=True)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        bad = int(np.count_nonzero(~np.isfinite(stack)))
        raise ValueError(
            f"normalize: maps contain {bad} non-finite value(s) (NaN or inf); "
            "a map with them has no meaningful range"
        )
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    constant = (hi == lo).reshape(-1)
    if mode == "percentile":
        lo, hi = np.percentile(stack, [p_lo, p_hi], axis=(1, 2), keepdims=True)
        stack = np.clip(stack, lo, hi)
    flat = hi == lo
    # in percentile mode a non-constant map can still have equal low and high percentiles
    clipped = flat.reshape(-1) & ~constant

    if mode == "percentile":
        out = np.where(flat, 0.0, (stack - lo) / np.where(flat, 1.0, hi - lo))
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        return (out[0] if single else out), constant, clipped
    # minmax: (x - lo) / (hi - lo) in float64, one map at a time so that the float64 buffer
    # stays in the cache (8 maps of 224x224 took 10 ms as whole-stack temporaries, 1 ms so).
    # x lies in [lo, hi], so the quotient lies in [0, 1] and needs no clip.
    out = np.zeros(stack.shape, np.float32)
    buf = np.empty(stack.shape[1:], np.float64)
    for i in range(len(stack)):
        if flat[i, 0, 0]:
            continue
        buf[...] = stack[i]
        np.subtract(buf, lo[i, 0, 0], out=buf)
        np.divide(buf, hi[i, 0, 0] - lo[i, 0, 0], out=buf)
        out[i] = buf
    return (out[0] if single else out), constant, clipped


#: up to this many source columns :func:`resize_bilinear` multiplies by a matrix; wider maps
#: (pixel attributions at the input's size) take the two gathers, whose cost does not grow
#: with the source width
_MATRIX_COLUMNS = 64


@functools.lru_cache(maxsize=32)
def _column_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_in, n_out)``: column ``d`` holds the two source weights of output column ``d``."""
    i0, i1, w = _source_taps(n_in, n_out)
    m = np.zeros((n_in, n_out))
    cols = np.arange(n_out)
    m[i0, cols] += 1.0 - w
    m[i1, cols] += w
    m.flags.writeable = False
    return m


def _source_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: the two source indices and the second one's weight."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize ``(h, w)`` or ``(N, h, w)`` maps to ``size = (H, W)`` by bilinear interpolation.

    Pixel centres are aligned the way OpenCV ``INTER_LINEAR``, PIL upsampling and torch
    ``align_corners=False`` align them: output pixel ``d`` samples the source at
    ``(d + 0.5) * in / out - 0.5``, clamped to the edge pixels.
    """
    stack, single = _as_stack(maps, "resize_bilinear")
    if isinstance(size, (str, bytes)) or len(size) != 2:
        raise ValueError(f"size must be (H, W); got {size!r}")
    try:
        out_h, out_w = (operator.index(s) for s in size)
    except TypeError:
        raise TypeError(f"size must be two integers (H, W); got {size!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive; got {(out_h, out_w)}")

    # Bilinear is separable: interpolate along rows, then along columns.
    y0, y1, wy = _source_taps(stack.shape[1], out_h)
    x0, x1, wx = _source_taps(stack.shape[2], out_w)
    wy = wy[:, None]
    rows = stack[:, y0, :] * (1.0 - wy) + stack[:, y1, :] * wy
    out = np.empty((len(stack), out_h, out_w), np.float32)
    if stack.shape[2] <= _MATRIX_COLUMNS:
        # a layer's small map: the columns as one product with the interpolation matrix (two
        # weights per column, the rest exact zeros), one map at a time: 3-4x faster than the
        # gathers below for 7 -> 224 columns, the same float32 maps
        cols, buf = _column_matrix(stack.shape[2], out_w), np.empty((out_h, out_w))
        for i, r in enumerate(rows):
            np.matmul(r, cols, out=buf)
            out[i] = buf
        return out[0] if single else out
    # the columns one map at a time, in place: the same float64 arithmetic as whole-stack
    # temporaries, whose memory traffic made 8 maps of 224x224 take 4x as long
    vx = 1.0 - wx
    for i, r in enumerate(rows):
        a = r[:, x0]
        a *= vx
        b = r[:, x1]
        b *= wx
        a += b
        out[i] = a
    return out[0] if single else out
