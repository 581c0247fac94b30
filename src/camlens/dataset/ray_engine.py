"""The Ray engine of a data-set run: the same rows, parts, maps and table as the local engine,
with the images explained by a pool of Ray actors (Ray Data), on this machine or a cluster.

Ray Data does the scheduling: one block per batch of the items still missing (the local
engine's batches: fixed slices of ``spec.batch_size`` items of the item list), ``map_batches``
with :class:`~camlens.dataset.worker.BatchExplainer` as a callable class (each actor loads the
model once, on its first batch), ``workers`` actors at most. Each batch's rows come back to
this process and are written as the part the local engine would write, by
:func:`~camlens.dataset.store.write_part` (whole or absent), so a run killed at any moment is
resumed by running it again, by either engine. An actor that dies (a worker process killed, a
node lost) is restarted by Ray and its batch retried (``max_restarts``, ``max_task_retries``):
a batch's rows are the same whoever computes them, and a batch that was already written once
is kept once by :func:`~camlens.dataset.store.consolidate`.

On a cluster every worker loads the model itself: ``spec.model`` must be loadable there (a
``.keras`` file or ``FILE.py:NAME`` on a disk every node sees, or an installed package), and
the images' paths and the output folder must be the same on every node (a shared disk).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

from . import store
from .source import Item
from .spec import RunSpec

__all__ = ["run_ray", "RAY_MISSING", "ACTOR_RESTARTS"]

RAY_MISSING = 'the Ray engine needs Ray Data: pip install "camlens[ray]"'
#: how often a dead actor is restarted and its batch retried before the run fails: enough for
#: a lost node or a killed process, bounded so that an image that crashes its worker every
#: time (a decoder's segmentation fault) ends the run with Ray's error instead of looping
ACTOR_RESTARTS = 4


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def _start(ray: Any, address: str | None, workers: int | None) -> bool:
    """Connect to ``address`` or start a local Ray in this process, unless Ray is already
    initialised (a test's, a notebook's); True when this call started it."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **options)
    else:
        import os

        ray.init(num_cpus=max(workers or 1, os.cpu_count() or 1), **options)
    return True


def run_ray(
    spec: RunSpec,
    items: Sequence[Item],
    address: str | None = None,
    workers: int | None = None,
    progress: bool | Callable[[int], Any] | None = None,
    *,
    _explainer: Any = None,
) -> Any:
    """Run ``spec`` on ``items`` with Ray Data and write ``spec.out`` (parts, maps,
    ``results.parquet``); returns the path of the table. ``address``: a Ray cluster
    (``"auto"``, ``"ray://head:10001"``); None starts Ray on this machine (when this process
    has not initialised Ray already). ``workers``: how many actors explain at once, each with
    its own copy of the model (None: one per CPU of the cluster). ``progress``: as the local
    engine's, True for a bar with images/s and the ETA on stderr, or a callable told ``n``
    more images are done. ``_explainer``: tests only, a stand-in for
    :class:`~camlens.dataset.worker.BatchExplainer` (same signature).

    The workers write the maps (and overlays) under ``spec.out`` themselves and this process
    writes the parts and the table: on a cluster of several machines ``spec.out`` must be a
    folder every node sees at the same path (a shared disk)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number >= 1; got {workers!r}")
    ray = _import_ray()
    missing = store.begin(spec, items)
    if missing:
        started = _start(ray, address, workers)
        try:
            if workers is None:  # one actor per CPU of the cluster
                workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            _explain(ray, spec, missing, workers, len(items), progress, _explainer)
        finally:
            if started:
                ray.shutdown()
    return store.consolidate(spec.out)


def _explain(ray: Any, spec: RunSpec, missing: list[tuple[int, Item]], workers: int, total: int,
             progress: Any, explainer: Any) -> None:  # fmt: skip
    import pyarrow as pa

    from .local import batch_of, progress_bar

    if explainer is None:
        from .worker import BatchExplainer as explainer

    # The batches are the local engine's: fixed slices of the item list (its part names too),
    # so that both engines explain the same images together and give the same numbers, bit
    # for bit. Each slice is one block, and a block is one batch (batch_size=None below).
    size = spec.batch_size
    slices: dict[int, list[tuple[int, Item]]] = {}
    for i, it in missing:
        slices.setdefault(i // size, []).append((i, it))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts images, with their rate and the ETA
    ds = ray.data.from_arrow([pa.table(batch_of(part)) for part in slices.values()])
    with warnings.catch_warnings():
        # Ray >= 2.51 prefers named remote arguments to **ray_remote_args; >= 2.9 takes both
        warnings.filterwarnings("ignore", message=".*(deprecated|ray_remote_args).*")
        ds = ds.map_batches(
            _Guarded,
            fn_constructor_args=(explainer, spec),
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_size=None,  # one slice: at most spec.batch_size images
            batch_format="numpy",
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )
    waiting = {k: len(v) for k, v in slices.items()}
    pending: dict[int, list[Any]] = {}
    with progress_bar(progress, total, total - len(missing)) as step:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if _ERROR_COLUMN in batch.column_names:
                import pickle

                raise pickle.loads(batch.column(_ERROR_COLUMN)[0].as_py())
            _collect(spec, batch, size, len(spec.methods), waiting, pending, step)
    if pending or any(waiting.values()):  # pragma: no cover - Ray handed back fewer rows
        raise RuntimeError(f"Ray returned no rows for {sum(waiting.values())} image(s); run again to resume")


def _collect(spec: RunSpec, batch: Any, size: int, methods: int, waiting: dict[int, int],
             pending: dict[int, list[Any]], step: Any) -> None:  # fmt: skip
    """Write the parts a batch of rows completes: a slice's part is written once all its
    rows are here, whatever blocks Ray cut them into."""
    import numpy as np
    import pyarrow as pa

    # pyarrow, not numpy, batches: a null of a float column stays null (numpy would make it NaN)
    slice_of = np.asarray(batch.column("index").to_pylist(), dtype=np.int64) // size
    for k in sorted(set(slice_of.tolist())):
        pending.setdefault(k, []).append(batch.filter(pa.array(slice_of == k)))
        if sum(t.num_rows for t in pending[k]) == waiting[k] * methods:
            rows = [store.to_table(t, spec.metrics).append_column("index", t.column("index"))
                    for t in pending.pop(k)]  # one schema, whatever types Ray gave each block
            part = pa.concat_tables(rows)
            idx = part.column("index").to_pylist()
            store.write_part(spec.out, min(idx), max(idx), part.drop(["index"]), spec.metrics)
            step(waiting[k])
            waiting[k] = 0


_USER_ERRORS = (ValueError, TypeError, NotImplementedError, OSError, ImportError)
#: the column a guarded actor hands an error back in
_ERROR_COLUMN = "__camlens_error__"


class _Guarded:
    """The explainer in an actor, with the run's own errors (a model file missing on a worker,
    a package it lacks, a method or layer that cannot be used) handed back as data: Ray Data
    wraps an exception raised in an actor in its own, keeping only its text, and the caller
    should see the same error as with the local engine (the CLI its ``camlens: ...`` line)."""

    def __init__(self, explainer: Any, spec: RunSpec) -> None:
        self._inner = explainer(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pickle

        import numpy as np

        try:
            return self._inner(batch)
        except _USER_ERRORS as exc:
            try:
                data = pickle.dumps(exc)
                pickle.loads(data)
            except Exception:  # an exception that does not survive pickling: its type and text
                data = pickle.dumps(ValueError(f"{type(exc).__name__}: {exc}"))
            return {_ERROR_COLUMN: np.array([data], dtype=object)}
