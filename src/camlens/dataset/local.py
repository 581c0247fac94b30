"""The local engine: one process, the items a batch at a time through one
:class:`~camlens.dataset.worker.BatchExplainer`, each batch's rows written as a part."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .source import Item
from .spec import RunSpec
from .store import begin, consolidate, write_part
from .worker import BatchExplainer

__all__ = ["run_local", "progress_bar", "batch_of"]

#: what ``progress`` may be: None (nothing), True (a tqdm bar on stderr when it is a terminal)
#: or a callable ``progress(n)``, told that ``n`` more images are done
Progress = Any


@contextmanager
def progress_bar(progress: Any, total: int, done: int) -> Iterator[Callable[[int], Any]]:
    """``step(n)`` for ``progress`` (see :data:`Progress`): with True a tqdm bar of ``total``
    images, ``done`` of them already done, showing images/s and the time left."""
    if progress is True:
        from tqdm import tqdm

        with tqdm(total=total, initial=done, desc="explaining", unit="img", disable=None,
                  file=sys.stderr, smoothing=0.1) as bar:
            yield bar.update
    elif callable(progress):
        yield progress
    else:
        yield lambda n: None


def batch_of(todo: Sequence[tuple[int, Item]]) -> dict[str, list[Any]]:
    """The worker's input columns of ``(index, item)`` pairs."""
    rows = [it.row(i) for i, it in todo]
    return {k: [r[k] for r in rows] for k in ("index", "path", "label", "boxes_json")}


def run_local(spec: RunSpec, items: Sequence[Item], progress: Any = None) -> Path:
    """Explain ``items`` as ``spec`` says in this process; returns ``results.parquet``'s path.

    Batches are fixed slices of the item list (``spec.batch_size`` each), so a resumed run
    explains exactly the batches a first run would have: the same numbers, bit for bit. A
    batch whose rows are all written is skipped; interrupted, every part written is whole and
    the next run goes on from there."""
    todo = begin(spec, items)
    worker = BatchExplainer(spec)
    worker.check()  # a bad model, method or layer fails before any image
    by_batch: dict[int, list[tuple[int, Item]]] = {}
    for i, it in todo:
        by_batch.setdefault(i // spec.batch_size, []).append((i, it))
    batches = [part for _, part in sorted(by_batch.items())]
    # the next batch's images are read on a second thread while this one is explained
    reader = ThreadPoolExecutor(max_workers=1)
    try:
        with progress_bar(progress, len(items), len(items) - len(todo)) as step:
            ahead = reader.submit(worker.read, batch_of(batches[0])) if batches else None
            for k, part in enumerate(batches):
                batch = batch_of(part)
                read = ahead.result()  # type: ignore[union-attr]
                if k + 1 < len(batches):
                    ahead = reader.submit(worker.read, batch_of(batches[k + 1]))
                rows = worker.explain(batch, read)
                write_part(spec.out, part[0][0], part[-1][0], rows, spec.metrics)
                step(len(part))
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
    return consolidate(spec.out)
