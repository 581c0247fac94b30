"""The output folder of a data-set run, shared by both engines:

- ``run.json``: the spec and a fingerprint of the items, written when a run starts; a run in
  a folder whose ``run.json`` says otherwise is refused (:func:`begin`);
- ``parts/part-<first>-<last>.parquet``: the rows of one batch (items ``first`` .. ``last`` of
  the run's item list), each written whole or not at all (:func:`write_part`);
- ``results.parquet``: every part's rows, one per (path, method), sorted by path then method
  (:func:`consolidate`), written atomically;
- ``maps/<method>/<sha1[:2]>/<sha1>.npy`` and, when asked, ``overlays/...png``: written by
  the worker (:func:`map_file`).

Resuming is :func:`begin` again: it returns only the items some of whose rows are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from .schema import schema
from .source import Item
from .spec import RunSpec

__all__ = ["begin", "write_part", "done_keys", "consolidate", "read_spec", "to_table",
           "map_file", "overlay_file", "part_name", "RESULTS", "RUN_JSON", "PARTS"]

RESULTS = "results.parquet"
RUN_JSON = "run.json"
PARTS = "parts"


def _digest(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def map_file(method: str, key: str) -> str:
    """Where the raw map of image ``key`` by ``method`` goes, relative to the output folder."""
    h = _digest(key)
    return f"maps/{method}/{h[:2]}/{h}.npy"


def overlay_file(method: str, key: str) -> str:
    """Where its overlay PNG goes, relative to the output folder."""
    h = _digest(key)
    return f"overlays/{method}/{h[:2]}/{h}.png"


def part_name(first: int, last: int) -> str:
    """The file name of the part holding items ``first`` .. ``last`` (inclusive)."""
    return f"part-{first:09d}-{last:09d}.parquet"


def _fingerprint(items: Sequence[Item]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(json.dumps([it.key, it.label, it.boxes]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def read_spec(out: str | os.PathLike[str]) -> RunSpec | None:
    """The spec ``run.json`` in ``out`` records, or None when there is none."""
    path = Path(out) / RUN_JSON
    if not path.is_file():
        return None
    return RunSpec.from_dict(json.loads(path.read_text(encoding="utf-8"))["spec"])


def begin(spec: RunSpec, items: Sequence[Item]) -> list[tuple[int, Item]]:
    """Start or resume the run of ``spec`` on ``items`` in ``spec.out``: writes ``run.json``
    (or checks that the one there is this run's: same spec, same items, else ValueError naming
    the difference and the fix) and returns ``(index, item)`` of every item with a row
    missing, in order."""
    from ..viz import write_atomic

    out = Path(spec.out)
    record = {"spec": spec.to_dict(), "items": len(items), "fingerprint": _fingerprint(items)}
    path = out / RUN_JSON
    old: dict[str, Any] = {}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        before = old.get("spec", {})
        # the folder itself may have moved since (a run copied to another disk goes on)
        diff = sorted(k for k in set(before) | set(record["spec"])
                      if k != "out" and before.get(k) != record["spec"].get(k))
        if diff:
            was = ", ".join(f"{k}={before.get(k)!r}" for k in diff)
            raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)} differ; "
                             f"{path} has {was}); give another output folder (-o), or the same "
                             "settings to resume it")
        if old.get("fingerprint") != record["fingerprint"]:
            raise ValueError(f"{out} holds a run on other images ({old.get('items')} items, now "
                             f"{len(items)}, or other paths, labels or boxes); give another output "
                             "folder (-o), or the same images to resume it")
    if not path.is_file() or old.get("spec", {}).get("out") != record["spec"]["out"]:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2))
    done = done_keys(out)
    if not done:
        return list(enumerate(items))
    return [(i, it) for i, it in enumerate(items)
            if any((it.key, m) not in done for m in spec.methods)]


def to_table(batch: dict[str, Any] | Any, metrics: Sequence[str] = ()) -> Any:
    """A ``pyarrow.Table`` of the run's :func:`~camlens.dataset.schema.schema` from a column
    batch (a dict of arrays or lists, as :class:`~camlens.dataset.worker.BatchExplainer`
    returns; columns not in the schema, such as ``index``, are dropped) or from a table."""
    import pyarrow as pa

    target = schema(metrics)
    if isinstance(batch, pa.Table):
        batch = {name: batch.column(name).to_pylist() for name in batch.column_names}
    cols = []
    for field in target:
        values = batch.get(field.name)
        n = len(batch["path"])
        values = [None] * n if values is None else [None if v is None else v for v in list(values)]
        cols.append(pa.array([_plain(v) for v in values], type=field.type))
    return pa.Table.from_arrays(cols, schema=target)


def _plain(v: Any) -> Any:
    """numpy scalars as Python ones; NaN of a float column stays NaN (a metric can be NaN)."""
    return v.item() if hasattr(v, "item") else v


def _write_atomic_parquet(table: Any, path: Path) -> Path:
    """``table`` as the Parquet file ``path``: written to a hidden file beside it, then
    renamed, so the file is whole or absent."""
    import pyarrow.parquet as pq

    temp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        pq.write_table(table, temp)
        os.replace(temp, path)
    except BaseException:  # KeyboardInterrupt too: no hidden file stays behind
        temp.unlink(missing_ok=True)
        raise
    return path


def write_part(out: str | os.PathLike[str], first: int, last: int, rows: Any,
               metrics: Sequence[str] = ()) -> Path:
    """Write the rows of items ``first`` .. ``last`` (a column batch or table, see
    :func:`to_table`) as ``parts/part-<first>-<last>.parquet``, whole or not at all."""
    folder = Path(out) / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    return _write_atomic_parquet(to_table(rows, metrics), folder / part_name(first, last))


def _parts(out: Path) -> list[Path]:
    folder = out / PARTS
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def done_keys(out: str | os.PathLike[str]) -> set[tuple[str, str]]:
    """The ``(path, method)`` of every row in the parts written so far."""
    import pyarrow.parquet as pq

    keys: set[tuple[str, str]] = set()
    for part in _parts(Path(out)):
        t = pq.read_table(part, columns=["path", "method"])
        keys.update(zip(t.column("path").to_pylist(), t.column("method").to_pylist()))
    return keys


def consolidate(out: str | os.PathLike[str]) -> Path:
    """Every part's rows as ``results.parquet``: one row per (path, method) (a row written
    twice, by a retried batch, is kept once: same input, same row), sorted by path then
    method; written whole or not at all. Returns its path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out)
    spec = read_spec(folder)
    target = schema(spec.metrics if spec is not None else ())
    tables = [pq.read_table(p).select(target.names).cast(target) for p in _parts(folder)]
    table = pa.concat_tables(tables) if tables else target.empty_table()
    if table.num_rows:
        table = table.sort_by([("path", "ascending"), ("method", "ascending")])
        paths = np.asarray(table.column("path").to_pylist(), dtype=object)
        methods = np.asarray(table.column("method").to_pylist(), dtype=object)
        keep = np.ones(len(paths), bool)
        keep[1:] = (paths[1:] != paths[:-1]) | (methods[1:] != methods[:-1])
        table = table.filter(pa.array(keep))
    return _write_atomic_parquet(table, folder / RESULTS)
