"""Figures of images and heatmaps side by side, and PNG output."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .color import to_rgb_uint8

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["panel", "figure_to_png_bytes", "save_png", "write_atomic"]

_CELL_INCHES = 3.0


def panel(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str | None]] | None = None,
) -> Figure:
    """A grid figure with one subplot per entry of ``rows``, axes hidden.

    Each entry is an image (anything :func:`~camlens.viz.to_rgb_uint8` takes) or a 2-D float
    heatmap in ``[0, 1]``, drawn with the ``"jet"`` colormap and no colorbar. ``titles``,
    when given, has the same shape as ``rows``; ``None`` or ``""`` leaves a cell untitled.
    Typical uses: one row of (image, heatmap, overlay), or two rows to compare a pair.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [list(row) for row in rows]
    if not rows or not all(rows):
        raise ValueError("rows must be a non-empty list of non-empty lists of images")
    if titles is not None:
        titles = [list(t) for t in titles]
        if [len(t) for t in titles] != [len(r) for r in rows]:
            raise ValueError(
                "titles must have the same shape as rows: row lengths "
                f"{[len(r) for r in rows]}, title lengths {[len(t) for t in titles]}"
            )

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(_CELL_INCHES * n_cols, _CELL_INCHES * n_rows), layout="constrained")
    # Rendering through Agg keeps pyplot's global figure manager out of the picture.
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        for c, entry in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            arr = np.asarray(entry)
            if arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
                ax.imshow(arr, cmap="jet", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(to_rgb_uint8(arr), interpolation="nearest")
            ax.set_axis_off()
            if titles is not None and titles[r][c]:
                ax.set_title(titles[r][c])
    return fig


def figure_to_png_bytes(fig: Figure, dpi: float = 100) -> bytes:
    """The figure rendered as PNG file contents."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(array_uint8: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` ``uint8`` array as a PNG file,
    creating missing parent folders. Returns the path written.

    zlib level 1: a 224x224 overlay took 4.6 ms to encode instead of 18 ms at PIL's default
    level 6, for a file 12% larger; on a folder of photos the PNGs were half of the work."""
    from PIL import Image

    arr = np.asarray(array_uint8)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"save_png needs a uint8 array; got {arr.dtype} "
            "(convert with to_rgb_uint8 or colorize)"
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"save_png needs (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return write_atomic(out, buf.getvalue())


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (``str``: as UTF-8) to ``path`` so that ``path`` is only ever absent, the
    old file, or the whole new one: the bytes go to a hidden file beside it, which
    ``os.replace`` then renames over ``path`` (atomic on one file system). A process stopped
    half-way (SIGTERM, Ctrl-C, a full disk) leaves no truncated file under the real name, and
    the hidden one is removed when Python gets to run its clean-up.

    No ``fsync``: this guards against the process stopping, not against power loss, and a sync
    per PNG would cost more than encoding it. The file gets the usual permissions (0666 less
    the umask), not the 0600 of :mod:`tempfile`. Returns ``path`` as a ``Path``."""
    out = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    temp = out.with_name(f".{out.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(temp, out)
    except BaseException:  # KeyboardInterrupt too: no half-written hidden file stays behind
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return out
