"""Data-set runs: explain every image of a folder, list or CSV file with one or more methods,
into one Parquet table (a row per image x method), raw maps as ``.npy`` files and, when asked,
overlays; resumable after a kill, locally or on a Ray cluster.

    >>> from camlens.dataset import run                             # doctest: +SKIP
    >>> done = run("model.keras", ["photos/"], "out", methods=["gradcam", "layercam"])
    >>> import pandas as pd; pd.read_parquet(done.results)

Needs ``pip install camlens[data]`` (pyarrow); the Ray engine ``camlens[ray]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["run", "DatasetRun", "ENGINES"]

#: where a run's batches are explained
ENGINES = ("local", "ray")


@dataclass
class DatasetRun:
    """What :func:`run` wrote."""

    out: Path
    #: ``out / "results.parquet"``
    results: Path
    #: rows in the table (images x methods)
    rows: int
    images: int
    #: ``(path, error)`` per image that could not be explained
    failed: list[tuple[str, str]] = field(default_factory=list)


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("data-set runs write Parquet tables with pyarrow: pip install "
                          "'camlens[data]'") from None


def _portable_model(model: str) -> str:
    """A model file (or the file of ``FILE.py:NAME``) as an absolute path: workers may run
    in another folder."""
    if model == "bundled":
        return model
    head, sep, name = model.rpartition(":")
    if sep and head.endswith(".py") and os.path.isfile(head):
        return f"{os.path.abspath(head)}:{name}"
    if os.path.isfile(model):
        return os.path.abspath(model)
    return model


def run(
    model: str,
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    methods: Sequence[str] = ("gradcam",),
    metrics: Sequence[str] = (),
    boxes: str | os.PathLike[str] | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    layer: str = "auto",
    target: str | None = None,
    size: tuple[int, int] | None = None,
    preprocess: str | None = None,
    batch_size: int = 16,
    overlays: bool = False,
    backend: str | None = None,
    steps: int = 100,
    progress: Any = None,
) -> DatasetRun:
    """Explain every image of ``sources`` with each of ``methods`` into the folder ``out``.

    Args:
        model: a ``.keras``/``.h5`` file, ``FILE.py:NAME``, ``package.module:NAME`` or
            ``"bundled"``: a name, not a model object, since every worker loads it itself.
        sources: image files, folders, glob patterns, ``.txt`` lists of paths or ``.csv``
            files (``path``, optional ``label``, boxes ``x0,y0,x1,y1`` or ``boxes``):
            :func:`camlens.dataset.source.read_source`.
        boxes: a CSV file of labels and boxes (same columns) for images of ``sources``: the
            table gets ``pointing_hit`` (pointing game, 15-pixel tolerance) and
            ``energy_share`` (energy-based pointing game) for images with boxes.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data: ``address`` of a running
            cluster, else a local one with ``workers`` actors).
        metrics: names of :func:`camlens.metrics.model_metrics`, a ``metric_<name>`` column
            each (``steps``: deletion/insertion steps).
        layer, target, size, preprocess, batch_size, backend: as for ``camlens explain``
            (``target`` as text: ``top``, a class index, ``NAME:ARG``).
        overlays: also write the overlays as PNG files.
        progress: True for a progress bar (images/s, time left) when stderr is a terminal,
            or a callable ``progress(n)`` told that ``n`` more images are done.

    Written in ``out``: ``results.parquet`` (a row per image x method, sorted by path then
    method), ``parts/`` (the rows of each batch), ``maps/<method>/../<sha1 of path>.npy``
    (raw maps at the layer's resolution), ``overlays/`` when asked, and ``run.json``. Every
    file is written whole or not at all; run again after a kill, it does only what is missing
    and ends with the same table. A folder holding another run (other settings or images) is
    refused. An image that cannot be read is a row with ``error``, not an exception.
    """
    from ..methods import get_method
    from .source import read_boxes, read_source
    from .spec import RunSpec

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a file name, FILE.py:NAME or 'bundled' (each worker "
                        f"loads it); got a {type(model).__name__}. Save it first: "
                        "model.save('model.keras')")
    _need_pyarrow()
    names = [get_method(m).name for m in methods]
    spec = RunSpec(model=_portable_model(str(model)), out=os.path.abspath(out),
                   methods=tuple(dict.fromkeys(names)), metrics=tuple(metrics), size=size,
                   preprocess=preprocess, layer=layer, target=target, batch_size=batch_size,
                   save_overlays=bool(overlays), backend=backend, steps=steps)
    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(problems))
    from ..files import check_output_folder

    check_output_folder(out)
    items = read_source([str(s) for s in sources])
    if boxes is not None:
        items = read_boxes(boxes, items)
    if engine == "ray":
        from .ray_engine import run_ray

        results = run_ray(spec, items, address=address, workers=workers, progress=progress)
    else:
        from .local import run_local

        results = run_local(spec, items, progress=progress)
    return _summary(spec, results, len(items))


def _summary(spec: Any, results: Path, images: int) -> DatasetRun:
    import pyarrow.parquet as pq

    table = pq.read_table(results, columns=["path", "error"])
    failed = dict.fromkeys((p, e) for p, e in zip(table.column("path").to_pylist(),
                                                   table.column("error").to_pylist()) if e)
    return DatasetRun(out=Path(spec.out), results=results, rows=table.num_rows, images=images,
                      failed=list(failed))
