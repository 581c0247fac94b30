"""Image files in, files and numbers out: what ``camlens explain`` and ``camlens evaluate`` do
with a list of images, as library functions (the command line is a shell over them; a batch job
calls the same ones).

    >>> from camlens.files import explain_files          # doctest: +SKIP
    >>> done = explain_files(model, ["photos/"], "out", method="gradcam++", preprocess="unit")
    >>> done.written, done.failed

Nothing here prints. An image that cannot be read is a failure of the result (its path and why),
not an exception; the others are still done. A bad option, or a model or method that cannot be
used, raises ``ValueError`` / ``TypeError`` (``NotImplementedError`` for a method a model does not
support) before or while the images are explained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ExplainedFiles", "EvaluatedFiles", "Interrupted", "explain_files", "evaluate_files",
           "evaluate_problems", "check_output_folder"]

#: ``progress(n)``: ``n`` more images are done (explained, or failed to read)
Progress = Callable[[int], None]

_REFUSAL = "{what} takes one-image models; this one takes {{shapes}}. Use {api}."


@dataclass
class ExplainedFiles:
    """What :func:`explain_files` wrote, and the images it could not read."""

    out: Path
    method: str
    #: why each layer was used (one text per distinct reason, joined by "; ")
    layer: str = ""
    #: per explained image, in order: ``image`` (its path), ``score``, ``class`` (or None) and
    #: ``files`` (the names of its overlays and heatmaps in ``out``), as in ``results.json``
    images: list[dict[str, Any]] = field(default_factory=list)
    #: ``(path, why)`` per image that could not be read
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: ``out / "results.json"``; None when no image was explained (and nothing was written)
    results: Path | None = None

    @property
    def written(self) -> list[Path]:
        """Every file written: the PNGs, then ``results.json``."""
        files = [self.out / name for row in self.images for name in row["files"]]
        return files + ([self.results] if self.results is not None else [])


class Interrupted(KeyboardInterrupt):
    """:func:`explain_files` was interrupted (Ctrl-C, or what a caller turns SIGTERM into) after
    writing ``done.images`` (every file of those is whole; ``done.results`` lists exactly them)
    out of ``total`` images. A ``KeyboardInterrupt``, so that code which stops on one still
    does; raised from the original interrupt."""

    def __init__(self, done: ExplainedFiles, total: int) -> None:
        super().__init__(f"interrupted: {len(done.images)} of {total} images done")
        self.done = done
        self.total = total


def check_output_folder(out: str | Path, flag: str = "out") -> Path:
    """Fails now, with a message naming ``out`` and the fix, where writing into the folder
    ``out`` would fail later (after the model has run): ``out`` is a file, or it (or, when it
    does not exist yet, the nearest folder above it, where it would be made) cannot be written
    to. Makes nothing: a missing folder is made when the first file is written. ``flag``: how
    the caller names the option (``-o``)."""
    import errno

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder}: is a file, not a folder; give a folder name (it is "
                         "made if missing), or move the file away")
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise ValueError(f"{flag} {folder}: {probe_in} is a file, so the folder cannot be made "
                         "there; give another folder name")
    probe = probe_in / f".camlens-write-test-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        where = "the folder" if probe_in == folder else f"{probe_in} (where it would be made)"
        why = "it is read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else exc.strerror
        raise ValueError(f"{flag} {folder}: cannot write in {where}: {why}; give a folder you "
                         "can write to") from None
    return folder


def _read_image(path: str, size: Any, channels: int) -> np.ndarray:
    """:func:`camlens.io.load_image` (which refuses what is not a regular, readable file
    before reading it: a named pipe would block forever), with any other ``OSError`` as the
    image's :class:`ImageError`: a folder loop goes on with the next image."""
    from .io import ImageError, load_image

    try:
        return load_image(path, size, channels=channels)
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def explain_files(
    model: Any,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    method: Any = "gradcam",
    target: Any = None,
    layer: Any = "auto",
    output: int | str | None = None,
    batch_size: int = 8,
    size: tuple[int, int] | None = None,
    preprocess: str | Callable[[np.ndarray], np.ndarray] | None = "none",
    alpha: float = 0.4,
    cmap: str = "jet",
    progress: Progress | None = None,
    resize: bool = True,
    display: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ExplainedFiles:
    """Explain image files and write, into ``out``, an overlay and a heatmap PNG per image and
    call site (``<name>_<method>_<layer>_overlay.png``, ``..._heatmap.png``) and
    ``results.json`` (method, layer, per image its score, class and files; the failures).

    Args:
        model: a Keras 3 model or torch module with one image input.
        paths: image files, or folders (their images, sorted: :func:`camlens.io.image_files`).
            Same stems get unique names (``cat``, ``cat_2``).
        out: the folder to write to (made if missing).
        method, target, layer, output: as for :func:`camlens.explain`.
        batch_size: images per model call. Images of one size are explained together; the PNGs
            of a batch are encoded (on a second thread) while the next batch is explained.
        size: ``(H, W)`` to resize images to, for a model without a fixed input size (a torch
            module); default: each image's own size. A model with a size of its own must agree.
        preprocess: a name of :data:`camlens.io.PREPROCESSING` or a function of a batch of
            pixels ``(N, H, W, C)``, 0..255, to model input.
        alpha, cmap: overlay opacity and colormap.
        progress: called as ``progress(n)`` when ``n`` more images are done.
        resize: read the images at the model's size; turn it off when ``preprocess`` resizes
            (as the bundled model's ``preprocess_batch`` does).
        display: a batch of model inputs -> the uint8 RGB images the maps are drawn on, for a
            ``preprocess`` that changes the size (the bundled model's ``display``: its centre
            crop); default: the pixels as read.

    Returns the :class:`ExplainedFiles`; an image that cannot be read is in its ``failed``.

    Every file is written whole or not at all (:func:`camlens.viz.write_atomic`), and an
    image's files are listed only once all of them are written. Interrupted (Ctrl-C) or
    stopped by an error, it finishes the PNGs being encoded, writes ``results.json`` for the
    images done, then raises: :class:`Interrupted` (a ``KeyboardInterrupt`` with ``done``) for
    an interrupt, the error itself otherwise.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ._args import batches
    from ._explain import explain
    from .io import ImageError, as_preprocess, image_files, unique_names
    from .methods import get_method

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha}")
    prep = as_preprocess(preprocess)
    images = image_files([str(p) for p in paths])
    (h, w), c = _check_model(model, method, layer, size)
    check_output_folder(out)
    name = method if isinstance(method, str) else get_method(method).name
    done = ExplainedFiles(out=Path(out), method=name)
    order = list(zip(images, unique_names(images)))
    step = progress if progress is not None else (lambda n: None)
    # (group, explanation, files) per batch whose files are all written, appended by the writer
    # thread itself once exp.save returns: an interrupt in this thread cannot come between
    # writing the files and recording them
    saved: list[tuple[list[tuple[str, str, Any]], Any, list[Path]]] = []
    pending: tuple[Any, int] | None = None  # (the save of the last batch, its size)

    def save(exp: Any, group: list[tuple[str, str, Any]], x: np.ndarray) -> None:
        files = exp.save(done.out, images=x.astype(np.uint8) if c != 1 else x,
                         names=[n for _, n, _ in group], cmap=cmap, alpha=alpha, write_json=False)
        saved.append((group, exp, files))

    writer = ThreadPoolExecutor(max_workers=1)  # PNG encoding releases the GIL
    try:
        for part in batches(len(order), batch_size):
            # images of one size are explained together (a model without a fixed size may get
            # several sizes in one batch)
            groups: dict[tuple[int, ...], list[tuple[str, str, np.ndarray]]] = {}
            for path, name in order[part]:
                try:
                    img = _read_image(path, (h, w) if resize else None, c)
                except ImageError as exc:
                    done.failed.append((path, str(exc)))
                    step(1)
                    continue
                groups.setdefault(img.shape, []).append((path, name, img))
            for group in groups.values():
                x = np.stack([img for _, _, img in group])
                inputs = prep(x)
                exp = explain(model, inputs, method=method, target=target, layer=layer,
                              output=output, batch_size=batch_size)
                if display is not None:
                    x = np.asarray(display(inputs))
                # the PNGs of this batch are written while the next batch is explained
                if pending is not None:
                    pending[0].result()  # a failed save raises here
                    step(pending[1])
                pending = (writer.submit(save, exp, group, x), len(group))
        writer.shutdown(wait=True)
        if pending is not None:
            pending[0].result()
            step(pending[1])
    except BaseException as exc:
        writer.shutdown(wait=True)  # the batch being written is finished: its files are whole
        _record(done, saved)
        if done.images:
            try:
                _write_results(done)
            except OSError:
                pass  # the first error is the one to report
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
            raise Interrupted(done, len(images)) from exc
        raise
    _record(done, saved)
    if done.images:
        _write_results(done)
    return done


def _record(done: ExplainedFiles, saved: list[tuple[list[tuple[str, str, Any]], Any, list[Path]]]) -> None:
    """``done.images`` and ``done.layer`` from the batches whose files are written."""
    from .io import safe_name

    reasons: list[str] = []
    done.images = []
    for group, exp, files in saved:
        for i, (path, name, _) in enumerate(group):
            done.images.append({
                "image": path,
                "score": float(exp.scores[i]),
                "class": None if exp.class_indices is None else int(exp.class_indices[i]),
                # save() names files "<safe name>_<method>_<layer>_..."; match all of that
                # prefix so that "cat" does not also claim the files of "cat_2"
                "files": [f.name for f in files if f.name.startswith(f"{safe_name(name)}_{exp.method}_")],
            })
        if exp.reason not in reasons:
            reasons.append(exp.reason)
    done.layer = "; ".join(reasons)


def _write_results(done: ExplainedFiles) -> None:
    from .viz import write_atomic

    done.results = done.out / "results.json"
    write_atomic(done.results, json.dumps(
        {"method": done.method, "layer": done.layer, "images": done.images,
         "failed": [{"image": p, "error": e} for p, e in done.failed]}, indent=2))


def _check_model(model: Any, method: Any, layer: Any, size: tuple[int, int] | None) -> tuple[tuple[Any, Any], int]:
    """``((H, W), channels)`` images are read at; fails on a model with other inputs, an
    unknown method, or a layer the model does not have, before any image is read."""
    from .adapters import adapt
    from .graph import find_nodes
    from .methods import get_method

    (h, w), c = _geometry(model, size, "explain_files", "camlens.explain(model, [a, b])")
    get_method(method)
    adapter = adapt(model)
    known = not adapter.needs_input_size or (h is not None and w is not None)
    if isinstance(layer, str) and layer != "auto" and known:  # else: checked on the first batch
        if adapter.needs_input_size:
            adapter.prepare(np.zeros((1, h, w, c), np.float32))  # its layers need a shape
        find_nodes(adapter.graph(), layer)
    return (h, w), c


def _geometry(model: Any, size: tuple[int, int] | None, what: str, api: str) -> tuple[tuple[Any, Any], int]:
    from .io import image_geometry

    return image_geometry(model, size, drop=f"size={size}", refusal=_REFUSAL.format(what=what, api=api))


# -- evaluate ---------------------------------------------------------------------------------


@dataclass
class EvaluatedFiles:
    """What :func:`evaluate_files` measured: per method the numbers of every image and their
    mean, and the images it could not read."""

    metrics: list[str]
    #: per metric: whether a higher value is better
    higher_is_better: dict[str, bool]
    steps: int
    score: str
    #: per method: ``layer`` (the call sites), ``score`` (what the metrics read), ``images``
    #: (per image: ``image``, ``class`` when there is one, a value per metric) and ``mean``
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``(path, why)`` per image that could not be read
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as JSON-ready data (what ``camlens evaluate --json`` writes)."""
        return {"steps": self.steps, "score": self.score, "metrics": self.metrics,
                "higher_is_better": self.higher_is_better, "methods": self.methods,
                "failed": [{"image": p, "error": e} for p, e in self.failed]}


def evaluate_problems(
    methods: Sequence[Any], metrics: Sequence[str], steps: int, batch_size: int,
    flag: Callable[[str], str] = str,
) -> list[str]:
    """What is wrong with the options of :func:`evaluate_files`, one text each (empty: nothing);
    cheap, no model needed. ``flag`` names an option as the caller spells it (``--steps``)."""
    from .methods import get_method
    from .metrics import model_metrics

    known = model_metrics()
    problems = []
    if not methods:
        problems.append(f"{flag('methods')} is empty; give e.g. gradcam,scorecam")
    if not metrics:
        problems.append(f"{flag('metrics')} is empty; choose from {', '.join(known)}")
    bad = [m for m in metrics if m not in known]
    if bad:
        problems.append(f"unknown metric(s) {', '.join(bad)}: choose from {', '.join(known)} "
                        "(the pointing games need boxes: use camlens.metrics in Python)")
    if steps < 1:
        problems.append(f"{flag('steps')} must be at least 1; got {steps}")
    if batch_size < 1:
        problems.append(f"{flag('batch_size')} must be at least 1; got {batch_size}")
    for m in methods:
        try:
            get_method(m)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def evaluate_files(
    model: Any,
    paths: Sequence[str | Path],
    *,
    methods: Sequence[str] = ("gradcam", "gradcam++", "scorecam"),
    metrics: Sequence[str] | None = None,
    steps: int = 100,
    score: str = "probability",
    target: Any = None,
    layer: Any = "auto",
    batch_size: int = 16,  # metrics.BATCH_SIZE, not imported here to keep this module light
    size: tuple[int, int] | None = None,
    resize: bool = True,
    preprocess: str | Callable[[np.ndarray], np.ndarray] | None = "none",
    on_method: Callable[[str, dict[str, Any]], None] | None = None,
) -> EvaluatedFiles:
    """The faithfulness metrics of each method's maps on image files (:func:`camlens.metrics.evaluate`).

    Args:
        model: a Keras 3 model or torch module with one image input.
        paths: image files or folders (:func:`camlens.io.image_files`).
        methods: method names, each explained and measured on every image.
        metrics: names from :func:`camlens.metrics.model_metrics` (default: ``DEFAULT_METRICS``).
        steps, score: as for :func:`camlens.metrics.evaluate`.
        target, layer, batch_size: as for :func:`camlens.explain` (``batch_size`` also for the
            metrics' model calls).
        size: ``(H, W)`` to resize images to, for a model without a fixed input size.
        resize: read the images at the model's size; turn it off when ``preprocess`` resizes
            (as the bundled model's ``preprocess_batch`` does).
        preprocess: a name of :data:`camlens.io.PREPROCESSING` or a function of a batch of
            pixels ``(N, H, W, C)``, 0..255, to model input.
        on_method: called as ``on_method(name, numbers)`` as soon as a method's numbers are ready.

    A method that cannot be explained or measured raises ValueError naming the method (the
    methods before it have been reported to ``on_method``).
    """
    from ._explain import explain
    from .io import ImageError, as_preprocess, image_files
    from .metrics import DEFAULT_METRICS, METRICS, evaluate

    names = list(DEFAULT_METRICS if metrics is None else metrics)
    methods = list(methods)
    problems = evaluate_problems(methods, names, steps, batch_size)
    if problems:
        raise ValueError("; ".join(problems))
    prep = as_preprocess(preprocess)
    images = image_files([str(p) for p in paths])
    hw, channels = _geometry(model, size, "evaluate_files", "camlens.metrics")
    done = EvaluatedFiles(metrics=names, higher_is_better={n: METRICS[n] for n in names},
                          steps=steps, score=score)
    groups: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for path in images:
        try:
            img = _read_image(path, hw if resize else None, channels)
        except ImageError as exc:
            done.failed.append((path, str(exc)))
            continue
        x = np.asarray(prep(img[None]), dtype=np.float32)[0]
        groups.setdefault(x.shape, []).append((path, x))  # models without a fixed size: by size
    for method in methods:
        rows: list[dict[str, Any]] = []
        sites, described = "", ""
        for group in groups.values():
            x = np.stack([g[1] for g in group])
            try:
                exp = explain(model, x, method=method, target=target, layer=layer,
                              batch_size=batch_size)
                results = evaluate(model, exp, names, steps=steps, batch_size=batch_size,
                                   score=score)
            except (ValueError, TypeError, NotImplementedError) as exc:
                raise ValueError(f"{method}: {exc}") from exc
            sites = ", ".join(s.label for s in exp.sites)
            described = next(iter(results.values())).score
            for i, (path, _) in enumerate(group):
                row: dict[str, Any] = {"image": path}
                if exp.class_indices is not None:
                    row["class"] = int(exp.class_indices[i])
                row.update({n: float(results[n].per_image[i]) for n in names})
                rows.append(row)
        if rows:
            mean = {n: float(np.nanmean([r[n] for r in rows])) for n in names}
            done.methods[method] = {"layer": sites, "score": described, "images": rows, "mean": mean}
            if on_method is not None:
                on_method(method, done.methods[method])
    return done
