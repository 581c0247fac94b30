"""The columns of a data-set run's table (``results.parquet`` and its parts): one row per
image x method. pyarrow is imported inside the functions (``camlens[data]``)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["COLUMNS", "columns", "schema", "metric_column"]

#: (name, pyarrow type name) before and after the metric columns
_HEAD = (("path", "string"), ("label", "int64"), ("predicted", "int64"),
         ("predicted_score", "float64"), ("target", "string"), ("target_score", "float64"),
         ("layer", "string"), ("method", "string"), ("peak_y", "int32"), ("peak_x", "int32"),
         ("top10_mass", "float64"))
_TAIL = (("pointing_hit", "bool_"), ("energy_share", "float64"), ("seconds", "float64"),
         ("map_file", "string"), ("overlay_file", "string"), ("error", "string"))

#: the columns of a run without metrics, in order
COLUMNS = tuple(name for name, _ in _HEAD + _TAIL)


def metric_column(name: str) -> str:
    """The column of metric ``name``: ``metric_<name>``."""
    return f"metric_{name}"


def columns(metrics: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(column, pyarrow type function name)`` in order, with a float64 column per metric."""
    return [*_HEAD, *((metric_column(m), "float64") for m in metrics), *_TAIL]


def schema(metrics: Sequence[str] = ()) -> Any:
    """The table's ``pyarrow.Schema``; every column but ``path`` and ``method`` may be null
    (an image that failed has only those and ``error``)."""
    import pyarrow as pa

    return pa.schema([pa.field(name, getattr(pa, kind)(), nullable=name not in ("path", "method"))
                      for name, kind in columns(metrics)])
