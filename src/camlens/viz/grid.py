"""Feature-map grids: the channels of one layer as a mosaic of small images, strongest first."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .color import _get_cmap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RANKS", "rank_channels", "feature_grid_array", "feature_grid", "feature_overview"]

#: how channels are ordered: by mean or peak activation (highest first), or by channel index
RANKS = ("mean", "max", "index")

_TILE_INCHES = 1.1
_HEADER_INCHES = 0.75


def _check_acts(activations: np.ndarray) -> np.ndarray:
    a = np.asarray(activations)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        hint = " (a batch: pick one sample, acts[i])" if a.ndim == 4 else ""
        raise ValueError(f"activations must be (h, w, channels); got shape {a.shape}{hint}")
    if 0 in a.shape:
        raise ValueError(f"activations must not be empty; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"activations must be real numbers; got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def rank_channels(activations: np.ndarray, rank: str = "mean") -> np.ndarray:
    """Channel indices of ``(h, w, C)`` activations in display order: highest mean (or max)
    activation first, ties in channel order; ``rank="index"`` keeps channel order."""
    a = _check_acts(activations)
    if rank not in RANKS:
        raise ValueError(f"unknown rank {rank!r}; use one of {', '.join(RANKS)}")
    if rank == "index":
        return np.arange(a.shape[-1])
    flat = a.reshape(-1, a.shape[-1])
    key = flat.mean(axis=0) if rank == "mean" else flat.max(axis=0)
    return np.argsort(-key, kind="stable")


def _tile(channel: np.ndarray) -> np.ndarray:
    """One channel scaled to [0, 1] on its own; a constant channel becomes flat zeros."""
    lo, hi = float(channel.min()), float(channel.max())
    if not hi > lo:
        return np.zeros(channel.shape, np.float32)
    return ((channel - lo) / (hi - lo)).astype(np.float32)


def feature_grid_array(
    activations: np.ndarray,
    *,
    max_channels: int = 64,
    cols: int | None = None,
    rank: str = "mean",
    pad: int = 0,
    fill: float = 0.0,
) -> tuple[np.ndarray, list[int]]:
    """The channels of ``(h, w, C)`` activations (or a batch of one) as one float32 mosaic, and
    the channel index of each tile in reading order (left to right, top to bottom).

    At most ``max_channels`` channels are shown, ranked by ``rank`` (see :func:`rank_channels`).
    ``cols`` defaults to ``ceil(sqrt(n))`` for ``n`` shown channels, ``rows = ceil(n / cols)``.
    Each tile is scaled to [0, 1] on its own (a constant channel is all 0). The mosaic is
    ``(rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad)``; gaps and unused tiles hold
    ``fill``.
    """
    a = _check_acts(activations)
    if isinstance(max_channels, bool) or not isinstance(max_channels, (int, np.integer)) or max_channels < 1:
        raise ValueError(f"max_channels must be a whole number of at least 1; got {max_channels!r}")
    if cols is not None and (isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1):
        raise ValueError(f"cols must be a whole number of at least 1, or None; got {cols!r}")
    if pad < 0:
        raise ValueError(f"pad must be 0 or more; got {pad}")
    order = [int(c) for c in rank_channels(a, rank)[: int(max_channels)]]
    n = len(order)
    ncol = min(int(cols), n) if cols is not None else math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    h, w = a.shape[:2]
    mosaic = np.full((nrow * h + (nrow - 1) * pad, ncol * w + (ncol - 1) * pad), fill, np.float32)
    for k, c in enumerate(order):
        r, q = divmod(k, ncol)
        y, x = r * (h + pad), q * (w + pad)
        mosaic[y : y + h, x : x + w] = _tile(a[:, :, c])
    return mosaic, order


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _note(shown: int, total: int, rank: str) -> str:
    how = "in channel order" if rank == "index" else f"highest {rank} first"
    more = f", +{total - shown} more" if shown < total else ""
    return f"{shown} of {total} channels, {how}{more}"


def feature_grid(
    activations: np.ndarray,
    *,
    layer: str = "",
    max_channels: int = 64,
    cols: int | None = None,
    cmap: str = "viridis",
    rank: str = "mean",
) -> Figure:
    """A figure of the channels of ``(h, w, C)`` activations, one tile per channel labelled
    ``ch 17``, titled with ``layer`` and the shape, with a "+N more" note when more than
    ``max_channels`` channels exist. Tiles are laid out as in :func:`feature_grid_array`.

    Example::

        fmaps = camlens.feature_maps(model, image)
        fig = camlens.viz.feature_grid(fmaps[0][0], layer=fmaps.layers[0])
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a = _check_acts(activations)
    h, w, total = a.shape
    pad = max(1, min(h, w) // 16)
    mosaic, order = feature_grid_array(
        a, max_channels=max_channels, cols=cols, rank=rank, pad=pad, fill=np.nan
    )
    nrow = (mosaic.shape[0] + pad) // (h + pad)
    ncol = (mosaic.shape[1] + pad) // (w + pad)
    tile_h = _TILE_INCHES * min(2.0, max(0.5, h / w))
    width = max(4.0, ncol * _TILE_INCHES)
    height = nrow * tile_h + _HEADER_INCHES
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global figure manager
    top = 1.0 - _HEADER_INCHES / height
    ax = fig.add_axes((0.01, 0.01, 0.98, top - 0.01))
    ax.imshow(mosaic, cmap=_get_cmap(cmap).with_extremes(bad="white"), vmin=0.0, vmax=1.0,
              interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for k, c in enumerate(order):
        r, q = divmod(k, ncol)
        ax.annotate(
            f"ch {c}", (q * (w + pad) - 0.5, r * (h + pad) - 0.5), xytext=(2, -2),
            textcoords="offset points", ha="left", va="top", fontsize=7, color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0},
        )
    title = f"{layer}  ({_shape_text((h, w, total))})" if layer else _shape_text((h, w, total))
    fig.suptitle(title, y=1.0 - 0.08 / height, va="top", fontsize=11)
    fig.text(0.5, 1.0 - 0.42 / height, _note(len(order), total, rank), ha="center", va="top", fontsize=8)
    return fig


def feature_overview(
    fmaps: Any,  # a camlens.FeatureMaps (viz sees arrays and their holders, never imports them)
    *,
    index: int = 0,
    channels: int = 8,
    cmap: str = "viridis",
    rank: str = "mean",
) -> Figure:
    """One page for all layers of ``fmaps``: one row per call site with its ``channels``
    strongest channels (sample ``index`` of the batch), labelled with the layer, its shape
    and the channel indices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not len(fmaps):
        raise ValueError("no layers to show: the FeatureMaps object is empty")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a whole number of at least 1; got {channels!r}")
    colormap = _get_cmap(cmap).with_extremes(bad="white")
    row_inches = 1.0
    label_inches = 0.3
    height = len(fmaps) * (row_inches + label_inches) + 0.2
    fig = Figure(figsize=(max(4.0, channels * row_inches), height))
    FigureCanvasAgg(fig)
    for k, label in enumerate(fmaps.layers):
        acts = fmaps.sample(k, index)
        h, w = acts.shape[:2]
        pad = max(1, min(h, w) // 16)
        mosaic, order = feature_grid_array(
            acts, max_channels=channels, cols=channels, rank=rank, pad=pad, fill=np.nan
        )
        top = 1.0 - (0.1 + k * (row_inches + label_inches) + label_inches) / height
        ax = fig.add_axes((0.01, top - row_inches / height, 0.98, row_inches / height))
        ax.imshow(mosaic, cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_anchor("W")
        chans = ", ".join(str(c) for c in order)
        more = f", +{acts.shape[-1] - len(order)} more" if len(order) < acts.shape[-1] else ""
        fig.text(
            0.01, top + 0.05 / height, f"{label}  ({_shape_text(acts.shape)})  ch {chans}{more}",
            ha="left", va="bottom", fontsize=8,
        )
    return fig
