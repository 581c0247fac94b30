"""Feature-map grids: the channels of one layer as a mosaic of small images, strongest first."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .color import _get_cmap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RANKS", "STYLES", "rank_channels", "dead_channels", "standardize", "feature_grid_array",
           "feature_grid", "feature_overview", "image_grid"]

#: how channels are ordered: by mean or peak activation (highest first), or by channel index
RANKS = ("mean", "max", "index")

#: how a channel becomes a tile: ``"minmax"`` (its own range to [0, 1]) or ``"standardized"``
#: (:func:`standardize`: mean at grey 128, one standard deviation 64 grey levels away)
STYLES = ("minmax", "standardized")

#: the grey a dead channel's tile is drawn in, on the [0, 1] scale of the tiles
DEAD_GREY = 0.5

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


def dead_channels(activations: np.ndarray) -> list[int]:
    """The channels of ``(h, w, C)`` activations that are constant over the map (all zero, as
    a ReLU that never fires, or any one value): their standard deviation is 0, so they carry no
    spatial information and :func:`standardize` has nothing to divide by."""
    a = _check_acts(activations)
    flat = a.reshape(-1, a.shape[-1])
    return np.flatnonzero(flat.max(axis=0) == flat.min(axis=0)).tolist()


def standardize(channel: np.ndarray) -> np.ndarray | None:
    """One ``(h, w)`` channel as uint8 grey levels the way feature-map "belts" are usually
    drawn: ``(x - mean) / std * 64 + 128``, clipped to 0..255 and truncated to uint8 (as
    ``astype('uint8')`` does), with the population standard deviation (``np.std``). So the
    mean is 128 and values two standard deviations off reach 0 or 255; unlike min-max scaling
    one outlier does not flatten the rest. ``None`` for a dead channel (``std == 0``): there is
    nothing to scale.

    Example::

        >>> standardize(np.array([[0.0, 1.0], [2.0, 3.0]])).tolist()   # mean 1.5, std 1.118
        [[42, 99], [156, 213]]
    """
    c = np.asarray(channel, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"standardize takes one (h, w) channel; got shape {c.shape}")
    if c.max() == c.min():
        return None
    z = (c - c.mean()) / c.std() * 64.0 + 128.0
    return np.clip(z, 0, 255).astype(np.uint8)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")


def _tile(channel: np.ndarray, style: str = "minmax") -> np.ndarray:
    """One channel on [0, 1]: scaled to its own range (``"minmax"``) or :func:`standardize`'s
    grey levels / 255; a dead (constant) channel is a flat :data:`DEAD_GREY`."""
    lo, hi = float(channel.min()), float(channel.max())
    if not hi > lo:
        return np.full(channel.shape, DEAD_GREY, np.float32)
    if style == "standardized":
        return (standardize(channel) / np.float32(255.0)).astype(np.float32)
    return ((channel - lo) / (hi - lo)).astype(np.float32)


def feature_grid_array(
    activations: np.ndarray,
    *,
    max_channels: int = 64,
    cols: int | None = None,
    rank: str = "mean",
    pad: int = 0,
    fill: float = 0.0,
    style: str = "minmax",
) -> tuple[np.ndarray, list[int]]:
    """The channels of ``(h, w, C)`` activations (or a batch of one) as one float32 mosaic, and
    the channel index of each tile in reading order (left to right, top to bottom).

    At most ``max_channels`` channels are shown, ranked by ``rank`` (see :func:`rank_channels`).
    ``cols`` defaults to ``ceil(sqrt(n))`` for ``n`` shown channels, ``rows = ceil(n / cols)``.
    Each tile is on [0, 1]: with ``style="minmax"`` the channel's own range, with
    ``style="standardized"`` :func:`standardize`'s grey levels divided by 255 (mean at 128/255).
    A dead (constant) channel, see :func:`dead_channels`, is a flat :data:`DEAD_GREY`. The mosaic is
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
    _check_style(style)
    order = [int(c) for c in rank_channels(a, rank)[: int(max_channels)]]
    n = len(order)
    ncol = min(int(cols), n) if cols is not None else math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    h, w = a.shape[:2]
    mosaic = np.full((nrow * h + (nrow - 1) * pad, ncol * w + (ncol - 1) * pad), fill, np.float32)
    for k, c in enumerate(order):
        r, q = divmod(k, ncol)
        y, x = r * (h + pad), q * (w + pad)
        mosaic[y : y + h, x : x + w] = _tile(a[:, :, c], style)
    return mosaic, order


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _note(shown: int, total: int, rank: str, style: str = "minmax", dead: int = 0) -> str:
    how = "in channel order" if rank == "index" else f"highest {rank} first"
    more = f", +{total - shown} more" if shown < total else ""
    scale = ", standardized" if style == "standardized" else ""
    off = f"; {dead} dead" if dead else ""
    return f"{shown} of {total} channels, {how}{more}{scale}{off}"


def _mark_dead(ax: Any, x: float, y: float, w: int, h: int) -> None:
    """A cross over a dead channel's grey tile, corner to corner."""
    kw = {"color": "black", "linewidth": 0.8, "alpha": 0.6}
    ax.plot([x, x + w], [y, y + h], **kw)
    ax.plot([x, x + w], [y + h, y], **kw)


def feature_grid(
    activations: np.ndarray,
    *,
    layer: str = "",
    max_channels: int = 64,
    cols: int | None = None,
    cmap: str = "viridis",
    rank: str = "mean",
    style: str = "minmax",
) -> Figure:
    """A figure of the channels of ``(h, w, C)`` activations, one tile per channel labelled
    ``ch 17``, titled with ``layer`` and the shape, with a "+N more" note when more than
    ``max_channels`` channels exist. Tiles are laid out and scaled as in
    :func:`feature_grid_array` (``style="standardized"`` for the mean-at-grey-128 view).
    A dead channel (constant over the map) is drawn grey, crossed out and labelled
    ``ch 17 dead``; the note under the title counts the dead channels of the whole layer.

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
        a, max_channels=max_channels, cols=cols, rank=rank, pad=pad, fill=np.nan, style=style
    )
    dead = set(dead_channels(a))
    nrow = (mosaic.shape[0] + pad) // (h + pad)
    ncol = (mosaic.shape[1] + pad) // (w + pad)
    tile_h = _TILE_INCHES * min(2.0, max(0.5, h / w))
    width = max(4.0, ncol * _TILE_INCHES)
    height = nrow * tile_h + _HEADER_INCHES
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global figure manager
    top = 1.0 - _HEADER_INCHES / height
    ax = fig.add_axes((0.01, 0.01, 0.98, top - 0.01))
    shown = mosaic.copy()
    for k, c in enumerate(order):
        if c in dead:  # a grey of its own, not the colormap's middle colour
            r, q = divmod(k, ncol)
            shown[r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = np.nan
    ax.imshow(shown, cmap=_get_cmap(cmap).with_extremes(bad="white"), vmin=0.0, vmax=1.0,
              interpolation="nearest", aspect="auto")
    _grey_tiles(ax, order, dead, ncol, h, w, pad)
    ax.set_axis_off()
    for k, c in enumerate(order):
        r, q = divmod(k, ncol)
        ax.annotate(
            f"ch {c} dead" if c in dead else f"ch {c}", (q * (w + pad) - 0.5, r * (h + pad) - 0.5), xytext=(2, -2),
            textcoords="offset points", ha="left", va="top", fontsize=7, color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0},
        )
    title = f"{layer}  ({_shape_text((h, w, total))})" if layer else _shape_text((h, w, total))
    fig.suptitle(title, y=1.0 - 0.08 / height, va="top", fontsize=11)
    fig.text(0.5, 1.0 - 0.42 / height, _note(len(order), total, rank, style, len(dead)),
             ha="center", va="top", fontsize=8)
    return fig


def _grey_tiles(ax: Any, order: list[int], dead: set[int], ncol: int, h: int, w: int, pad: int) -> None:
    from matplotlib.patches import Rectangle

    for k, c in enumerate(order):
        if c in dead:
            r, q = divmod(k, ncol)
            x, y = q * (w + pad) - 0.5, r * (h + pad) - 0.5
            ax.add_patch(Rectangle((x, y), w, h, facecolor=str(DEAD_GREY), edgecolor="none"))
            _mark_dead(ax, x, y, w, h)


def feature_overview(
    fmaps: Any,  # a camlens.FeatureMaps (viz sees arrays and their holders, never imports them)
    *,
    index: int = 0,
    channels: int = 8,
    cmap: str = "viridis",
    rank: str = "mean",
    style: str = "minmax",
) -> Figure:
    """One page for all layers of ``fmaps``: one row per call site with its ``channels``
    strongest channels (sample ``index`` of the batch), labelled with the layer, its shape
    and the channel indices, and the number of dead channels of the layer where it has any
    (shown ones grey and crossed out). ``style`` as in :func:`feature_grid_array`;
    ``"standardized"`` gives the "belts" of the usual feature-map tutorials."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not len(fmaps):
        raise ValueError("no layers to show: the FeatureMaps object is empty")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a whole number of at least 1; got {channels!r}")
    _check_style(style)
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
            acts, max_channels=channels, cols=channels, rank=rank, pad=pad, fill=np.nan, style=style
        )
        dead = set(dead_channels(acts))
        for k2, c in enumerate(order):
            if c in dead:
                mosaic[:h, k2 * (w + pad) : k2 * (w + pad) + w] = np.nan
        top = 1.0 - (0.1 + k * (row_inches + label_inches) + label_inches) / height
        ax = fig.add_axes((0.01, top - row_inches / height, 0.98, row_inches / height))
        ax.imshow(mosaic, cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
        _grey_tiles(ax, order, dead, channels, h, w, pad)
        ax.set_axis_off()
        ax.set_anchor("W")
        chans = ", ".join(str(c) for c in order)
        more = f", +{acts.shape[-1] - len(order)} more" if len(order) < acts.shape[-1] else ""
        off = f"  ({len(dead)} dead)" if dead else ""
        fig.text(
            0.01, top + 0.05 / height, f"{label}  ({_shape_text(acts.shape)})  ch {chans}{more}{off}",
            ha="left", va="bottom", fontsize=8,
        )
    return fig


def image_grid(
    images: np.ndarray,
    labels: list[str] | None = None,
    *,
    title: str = "",
    columns: int | None = None,
) -> Figure:
    """A figure of ``(N, H, W, 3)`` uint8 RGB images as one mosaic, laid out and labelled as
    :func:`feature_grid` lays out channels (``labels[k]`` in the corner of tile ``k``): the
    images of :func:`camlens.visualize`, one per unit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8 or 0 in imgs.shape:
        raise ValueError(f"images must be a non-empty (N, H, W, 3) uint8 array; got {imgs.dtype} {imgs.shape}")
    n, h, w, _ = imgs.shape
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    ncol = columns if columns is not None else max(1, math.ceil(math.sqrt(n)))
    if isinstance(ncol, bool) or not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"columns must be a whole number of at least 1; got {columns!r}")
    nrow = math.ceil(n / ncol)
    pad = max(1, min(h, w) // 16)
    mosaic = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        mosaic[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = imgs[k]
    tile = 2.0 * _TILE_INCHES
    header = 0.4 if title else 0.1  # one line of title, no note under it as on feature grids
    height = nrow * tile * min(2.0, max(0.5, h / w)) + header
    fig = Figure(figsize=(max(3.0, ncol * tile), height))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global figure manager
    top = 1.0 - header / height
    ax = fig.add_axes((0.01, 0.01, 0.98, top - 0.01))
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for k in range(n if labels is not None else 0):
        r, q = divmod(k, ncol)
        ax.annotate(
            labels[k], (q * (w + pad) - 0.5, r * (h + pad) - 0.5), xytext=(2, -2),  # type: ignore[index]
            textcoords="offset points", ha="left", va="top", fontsize=7, color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0},
        )
    if title:
        fig.suptitle(title, y=1.0 - 0.08 / height, va="top", fontsize=11)
    return fig
