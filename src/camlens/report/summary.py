"""The summary page of a data-set run (``camlens run``): one self-contained HTML file made from
the run's Parquet table and its ``.npy`` maps, never from the model.

    >>> from camlens.report.summary import write_summary
    >>> write_summary("runs/val")                     # doctest: +SKIP
    PosixPath('runs/val/summary.html')

Per method and class (the label or the predicted class): the number of images, the mean map
(every map scaled to [0, 1] on its own, resized to one size, then averaged, so a class's
typical focus shows whatever the layer's resolution or the maps' scale) and the means of the
numeric columns (scores, ``top10_mass``, every ``metric_*``, pointing hit rate, energy share).
Then the worst images by a chosen column, with their maps. Failed rows are counted, never
averaged. Maps are read one at a time, so memory does not grow with the number of rows.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._collect import HIGHER_IS_BETTER, _package_directions
from ._html import _CSS, _e, _fmt, _gradient, _img

__all__ = ["write_summary", "render_summary", "summarize", "Summary"]

#: the side of the mean maps on the page (the maps are resized to this before averaging)
MAP_SIDE = 64
_GROUPS = ("predicted", "label")
#: columns that are not metrics of a map even when numeric
_NOT_MEANS = {"label", "predicted", "peak_y", "peak_x"}


@dataclass
class _Group:
    count: int = 0
    map_sum: np.ndarray | None = None
    maps: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class Summary:
    """What the page shows: per (method, class) the count, mean map and column means; the worst
    rows; the failed count."""

    title: str
    by: str
    columns: list[str]
    groups: dict[tuple[str, int | None], _Group]
    worst_by: str | None
    worst: list[dict[str, Any]]
    failed: int
    rows: int


def _read_table(out: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - the extra names it
        raise ImportError('the summary reads a Parquet table: pip install "camlens[data]"') from exc
    table_path = out / "results.parquet"
    if not table_path.is_file():
        raise FileNotFoundError(f"no table {table_path}: run `camlens run ... -o {out}` first")
    return pq.read_table(table_path)


def _load_map(out: Path, rel: str | None) -> np.ndarray | None:
    if not rel:
        return None
    try:
        arr = np.load(out / rel, allow_pickle=False)
    except (OSError, ValueError):
        return None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        return None
    return arr


def _unit(arr: np.ndarray, side: int) -> np.ndarray:
    from .._image import resize_bilinear

    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return resize_bilinear(scaled, (side, side))


def _direction(column: str) -> bool:
    """True when a higher value of ``column`` is better."""
    name = column[len("metric_"):] if column.startswith("metric_") else column
    directions = {**HIGHER_IS_BETTER, **_package_directions(), "top10_mass": True,
                  "predicted_score": True, "target_score": True, "energy_share": True,
                  "pointing_hit": True}  # fmt: skip
    if name not in directions:
        raise ValueError(f"no known direction for {column!r}; choose one of the metric_* columns or "
                         "top10_mass, target_score, energy_share")  # fmt: skip
    return directions[name]


def summarize(out: str | os.PathLike[str], by: str = "predicted", worst_by: str | None = None,
              worst: int = 12, side: int = MAP_SIDE) -> Summary:  # fmt: skip
    """Read ``<out>/results.parquet`` and its maps into a :class:`Summary`. ``worst_by``: a
    numeric column (default: the first ``metric_*`` column, else ``top10_mass``)."""
    if by not in _GROUPS:
        raise ValueError(f"by must be one of {', '.join(_GROUPS)}; got {by!r}")
    if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
        raise ValueError(f"worst must be a whole number >= 0; got {worst!r}")
    folder = Path(out)
    table = _read_table(folder)
    names = table.column_names
    numeric = [c for c in names if c not in _NOT_MEANS and _is_numeric(table.schema.field(c).type)]
    if worst_by is None:
        metrics = [c for c in numeric if c.startswith("metric_")]
        worst_by = metrics[0] if metrics else ("top10_mass" if "top10_mass" in names else None)
    elif worst_by not in numeric:
        raise ValueError(f"worst_by {worst_by!r} is not a numeric column of the table; it has {', '.join(numeric)}")
    higher = _direction(worst_by) if worst_by is not None else True

    rows = table.to_pylist()
    groups: dict[tuple[str, int | None], _Group] = {}
    failed = 0
    ranked = []
    for row in rows:
        if row.get("error"):
            failed += 1
            continue
        key = (row["method"], row.get(by))
        g = groups.setdefault(key, _Group())
        g.count += 1
        for c in numeric:
            v = row.get(c)
            if v is not None and (isinstance(v, bool) or math.isfinite(v)):
                g.sums[c] += float(v)
                g.counts[c] += 1
        m = _load_map(folder, row.get("map_file"))
        if m is not None:
            u = _unit(m, side)
            g.map_sum = u if g.map_sum is None else g.map_sum + u
            g.maps += 1
        if worst_by is not None and row.get(worst_by) is not None and math.isfinite(row[worst_by]):
            ranked.append(row)
    ranked.sort(key=lambda r: (r[worst_by] if higher else -r[worst_by], r["path"], r["method"]))
    return Summary(title=folder.resolve().name, by=by, columns=numeric, groups=groups,
                   worst_by=worst_by, worst=ranked[:worst], failed=failed, rows=len(rows))  # fmt: skip


def _is_numeric(dtype: Any) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(dtype) or pt.is_floating(dtype) or pt.is_boolean(dtype)


def _map_uri(m: np.ndarray, cmap: str, side: int = 96) -> tuple[str, int, int]:
    from .._image import resize_bilinear
    from ..viz import colorize
    from ..viz.encode import data_uri

    return data_uri(colorize(resize_bilinear(np.clip(m, 0, 1), (side, side)), cmap), fmt="png")


def render_summary(summary: Summary, out: str | os.PathLike[str] | None = None, cmap: str = "jet") -> str:
    """The summary as one self-contained HTML page (a ``str``). ``out``: the run's folder, to
    show the worst rows' maps (and overlays when the run wrote them)."""
    from .. import __version__

    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cols = summary.columns
    head_cells = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for (method, cls), g in sorted(summary.groups.items(), key=lambda kv: (kv[0][0], -kv[1].count, str(kv[0][1]))):
        mean_map = (
            _img(_map_uri(g.map_sum / g.maps, cmap), f"mean map of {method} for class {cls}") if g.maps else "-"
        )
        cells = "".join(
            f'<td class="num">{_fmt(g.sums[c] / g.counts[c]) if g.counts.get(c) else "-"}</td>' for c in cols
        )
        body.append(f"<tr><td>{_e(method)}</td><td>{_e('-' if cls is None else cls)}</td>"
                    f'<td class="num">{g.count}</td><td>{mean_map}</td>{cells}</tr>')  # fmt: skip
    classes = (
        f'<section class="block"><h2>Per class ({_e(summary.by)})</h2>'
        f"<table><tr><th>method</th><th>{_e(summary.by)}</th><th>images</th><th>mean map</th>{head_cells}</tr>"
        f"{''.join(body)}</table></section>"
    )
    worst = ""
    if summary.worst_by is not None:
        items = []
        folder = Path(out) if out is not None else None
        for r in summary.worst:
            pics = []
            if folder is not None:
                m = _load_map(folder, r.get("map_file"))
                if m is not None:
                    lo, hi = float(m.min()), float(m.max())
                    pics.append(_img(_map_uri((m - lo) / (hi - lo) if hi > lo else m * 0, cmap), "map"))
                if r.get("overlay_file"):
                    pics.append(_overlay(folder / r["overlay_file"]))
            caption = (f"{_e(r['path'])}<br>{_e(r['method'])} &middot; {_e(summary.worst_by)} "
                       f"{_fmt(float(r[summary.worst_by]))} &middot; label {_e(r.get('label'))} "
                       f"&middot; predicted {_e(r.get('predicted'))}")  # fmt: skip
            items.append(f'<figure><div class="pair">{"".join(p for p in pics if p)}</div><figcaption>{caption}</figcaption></figure>')
        better = "higher" if _direction(summary.worst_by) else "lower"
        worst = (f'<section class="block"><h2>The {len(summary.worst)} worst by {_e(summary.worst_by)}</h2>'
                 f'<p class="muted">{better} is better</p><div class="grid">{"".join(items)}</div></section>')  # fmt: skip
    ok = summary.rows - summary.failed
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>camlens summary: {_e(summary.title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>camlens summary: {_e(summary.title)}</h1>"
        f'<p class="muted">{ok} row(s) (image x method)'
        + (f' &middot; <span class="error">{summary.failed} failed</span>' if summary.failed else "")
        + f" &middot; {_e(stamp)} &middot; camlens {_e(__version__)}</p>"
        f'<p class="muted">mean maps: each map scaled to [0, 1], averaged; {_e(cmap)} '
        f'<span class="legend" style="background:{_gradient(cmap)}"></span> low &rarr; high</p></header>'
        f"{classes}{worst}</body></html>\n"
    )


def _overlay(path: Path) -> str:
    from PIL import Image

    from ..viz.encode import data_uri

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError:
        return ""
    return _img(data_uri(arr, max_side=160), "overlay")


def write_summary(out: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *,
                  by: str = "predicted", worst_by: str | None = None, worst: int = 12,
                  cmap: str = "jet") -> Path:  # fmt: skip
    """Write the summary page of the run in folder ``out`` to ``path`` (default
    ``<out>/summary.html``), atomically; returns the path."""
    from ..viz import write_atomic

    summary = summarize(out, by=by, worst_by=worst_by, worst=worst)
    target = Path(path) if path is not None else Path(out) / "summary.html"
    return write_atomic(target, render_summary(summary, out, cmap=cmap))
