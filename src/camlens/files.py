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
           "evaluate_problems", "check_output_folder", "read_pairs", "input_geometry", "HEATMAPS",
           "CSV_COLUMNS"]

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
    #: per explained sample, in order, as in ``results.json``: ``image`` (its path; for a
    #: model with several inputs the list of paths), ``score``, ``class`` (or None),
    #: ``target``, ``size`` (the photo's ``[H, W]``; a list of them for several inputs),
    #: ``files`` (the names of all its files in ``out``) and ``maps``: per call site ``layer``,
    #: ``input``, ``image``, ``size`` and the file names ``overlay``, ``heatmap``, ``map_npy``
    #: and ``raw_npy``
    images: list[dict[str, Any]] = field(default_factory=list)
    #: ``(path, why)`` per sample that could not be read (a pair: its paths joined by " + ")
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: ``out / "results.json"``; None when no image was explained (and nothing was written)
    results: Path | None = None
    #: ``out / "results.csv"``, a row per sample and call site; None as ``results``
    table: Path | None = None

    @property
    def written(self) -> list[Path]:
        """Every file written: the PNGs and ``.npy`` files, then ``results.json`` and
        ``results.csv``."""
        files = [self.out / name for row in self.images for name in row["files"]]
        return files + [p for p in (self.results, self.table) if p is not None]


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
    paths: Sequence[Any],
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
    heatmap: str = "color",
    progress: Progress | None = None,
    resize: bool = True,
    display: Callable[[np.ndarray], np.ndarray] | None = None,
    fuse: str | None = None,
    aug_smooth: bool = False,
) -> ExplainedFiles:
    """Explain image files and write into ``out``, per sample and call site, at the size and
    aspect of the photo as it is on disk (the map, computed at the model's input size, is
    resized back onto the photo):

    - ``<name>_<method>_<layer>_overlay.png``: the map blended onto the photo;
    - ``..._heatmap.png``: the map alone, coloured by ``cmap`` (``heatmap="color"``) or as 8-bit
      greyscale (``heatmap="gray"``, 0 for 0.0 and 255 for 1.0);
    - ``..._map.npy``: the map at the photo's size, float32 in [0, 1];
    - ``..._raw.npy``: the method's map at the layer's resolution (``Explanation.raw_maps``);

    - for Deep Feature Factorization (``dff``), every concept: ``..._concepts.npy`` the concept
      maps ``(k, h, w)`` at the layer's resolution (``Explanation.details["concept_maps"]``)
      and ``..._concept<j>_overlay.png`` each one (scaled by its maximum) blended onto the photo;
      ``results.json`` lists them under ``"concepts"`` with the concept shown and, where the
      model has a class head, each concept's top classes;

    and ``results.json`` (method, layer, per sample its score, class, target, photo size,
    ``files`` and ``maps``: per call site its files) and ``results.csv`` (a row per sample and
    call site: image, method, layer, input, target, score, class, height, width, overlay,
    heatmap, map_npy, raw_npy).

    Args:
        model: a Keras 3 model or torch module with image inputs.
        paths: for a model with one image input, image files or folders (their images, sorted:
            :func:`camlens.io.image_files`). For a model with several image inputs (a siamese
            pair), one sequence of files per sample, a file per input (:func:`read_pairs`
            reads them from a CSV file). Same stems get unique names (``cat``, ``cat-1``; a
            pair ``a``, ``b`` is named ``a__b``).
        out: the folder to write to (made if missing).
        method, target, layer, output: as for :func:`camlens.explain`.
        batch_size: samples per model call. Samples of one size are explained together; the
            files of a batch are written (on a second thread) while the next batch is explained.
        size: ``(H, W)`` to resize images to, for a model without a fixed input size (a torch
            module); default: each image's own size. A model with a size of its own must agree.
        preprocess: a name of :data:`camlens.io.PREPROCESSING` or a function of a batch of
            pixels ``(N, H, W, C)``, 0..255, to model input.
        alpha, cmap: overlay opacity and colormap.
        heatmap: ``"color"`` or ``"gray"``: how the heatmap PNG is drawn.
        progress: called as ``progress(n)`` when ``n`` more samples are done.
        resize: read the images at the model's size; turn it off when ``preprocess`` resizes
            (as the bundled model's ``preprocess_batch`` does): each photo is then preprocessed
            on its own, so photos of any size share a batch.
        display: model inputs -> the uint8 RGB images the maps are drawn on, for a
            ``preprocess`` that crops (the bundled model's ``display``: its centre crop, which
            a map cannot be stretched back onto the whole photo from); the files are then at
            that picture's size. Default: the photo as read.
        fuse: ``None``, or ``"max"`` / ``"mean"``: the maps of every call site of each input
            (several layers) fused into one per image, :meth:`Explanation.fused`.
        aug_smooth: average each map over a left-right flip and input scaling by 0.9 and 1.1,
            :func:`camlens.tta` ``(flips=True, multiply=(0.9, 1.0, 1.1))`` (pytorch-grad-cam's
            ``aug_smooth``); the file names say ``<method>+tta``. Fused after smoothing.

    Returns the :class:`ExplainedFiles`; a sample with an image that cannot be read is in its
    ``failed``.

    Every file is written whole or not at all (:func:`camlens.viz.write_atomic`), and a
    sample's files are listed only once all of them are written. Only the photos of the batch
    being explained and the one being written are held, at their own size. Interrupted
    (Ctrl-C) or stopped by an error, it finishes the files being written, writes
    ``results.json`` and ``results.csv`` for the samples done, then raises:
    :class:`Interrupted` (a ``KeyboardInterrupt`` with ``done``) for an interrupt, the error
    itself otherwise.
    """
    from concurrent.futures import ThreadPoolExecutor

    from ._args import batches
    from ._explain import explain
    from .io import ImageError, as_preprocess, unique_names
    from .methods import get_method
    from .smooth import tta

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha}")
    if heatmap not in HEATMAPS:
        raise ValueError(f"heatmap must be one of {', '.join(HEATMAPS)}; got {heatmap!r}")
    from .explanation import FUSIONS

    if fuse is not None and fuse not in FUSIONS:
        raise ValueError(f"fuse must be None or one of {', '.join(FUSIONS)}; got {fuse!r}")
    prep = as_preprocess(preprocess)
    geometry = _check_model(model, method, layer, size)
    samples = _samples(paths, len(geometry))
    check_output_folder(out)
    name = method if isinstance(method, str) else get_method(method).name
    done = ExplainedFiles(out=Path(out), method=name)
    order = list(zip(samples, _sample_names(samples)))
    step = progress if progress is not None else (lambda n: None)
    # (explanation, the rows of its samples) per batch whose files are all written, appended
    # by the writer thread itself once they are: an interrupt in this thread cannot come
    # between writing the files and recording them
    saved: list[tuple[Any, list[dict[str, Any]]]] = []
    pending: tuple[Any, int] | None = None  # (the save of the last batch, its size)
    look = {"cmap": cmap, "alpha": alpha, "heatmap": heatmap}
    # each photo preprocessed as it is read: a preprocess that resizes, or a display of its input
    own = not resize or display is not None

    def save(exp: Any, group: list[tuple[tuple[str, ...], str, list[np.ndarray]]]) -> None:
        saved.append((exp, _save_group(done.out, exp, group, look)))

    writer = ThreadPoolExecutor(max_workers=1)  # PNG encoding releases the GIL
    try:
        for part in batches(len(order), batch_size):
            # samples of one size are explained together (a model without a fixed size may get
            # several sizes in one batch)
            groups: dict[tuple[Any, ...], list[tuple[tuple[str, ...], str, list[np.ndarray]]]] = {}
            inputs: dict[tuple[Any, ...], list[list[np.ndarray]]] = {}
            for sample, stem in order[part]:
                try:
                    photos, xs = [], []
                    for path, ((h, w), c) in zip(sample, geometry):
                        photo, x = _read_photo(path, (h, w) if resize else (None, None), c)
                        if own:
                            x = np.asarray(prep(x[None]))[0]
                            if display is not None:
                                photo = np.asarray(display(x[None]))[0]
                        photos.append(photo)
                        xs.append(x)
                except ImageError as exc:
                    done.failed.append((_shown(sample), str(exc)))
                    step(1)
                    continue
                key = tuple(x.shape for x in xs)
                groups.setdefault(key, []).append((sample, stem, photos))
                inputs.setdefault(key, []).append(xs)
            for key, group in groups.items():
                xs = [np.stack([s[k] for s in inputs[key]]) for k in range(len(geometry))]
                if not own:
                    xs = [prep(x) for x in xs]
                del inputs[key]
                run = dict(target=target, layer=layer, output=output, batch_size=batch_size)
                if aug_smooth:
                    exp = tta(model, xs[0] if len(xs) == 1 else xs, method, flips=True,
                              multiply=AUG_SMOOTH, **run)
                else:
                    exp = explain(model, xs[0] if len(xs) == 1 else xs, method=method, **run)
                if fuse is not None:
                    exp = exp.fused(fuse)
                # the files of this batch are written while the next batch is explained
                if pending is not None:
                    pending[0].result()  # a failed save raises here
                    step(pending[1])
                pending = (writer.submit(save, exp, group), len(group))
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
            raise Interrupted(done, len(samples)) from exc
        raise
    _record(done, saved)
    if done.images:
        _write_results(done)
    return done


#: the input factors of ``explain_files(aug_smooth=True)``, with a flip: pytorch-grad-cam's ``aug_smooth``
AUG_SMOOTH = (0.9, 1.0, 1.1)

#: how :func:`explain_files` draws the heatmap PNG: through the colormap, or 8-bit greyscale
HEATMAPS = ("color", "gray")

#: the columns of ``results.csv``, a row per sample and call site
CSV_COLUMNS = ("image", "method", "layer", "input", "target", "score", "class", "height", "width",
               "overlay", "heatmap", "map_npy", "raw_npy")


def read_pairs(csv_file: str | Path, inputs: int) -> list[tuple[str, ...]]:
    """The samples of a model with ``inputs`` image inputs, from a CSV file with one row per
    sample and one column per input, in the model's input order. A first row none of whose
    cells is a file is a header and skipped; blank rows are skipped. Relative paths are read
    from the CSV file's folder. Raises ValueError naming the row for a row with another number
    of cells, and for a file that does not exist."""
    import csv

    base = Path(csv_file).parent
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as fh:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(fh), 1)]
    except UnicodeDecodeError:
        raise ValueError(f"{csv_file}: not a text CSV file; give one row per sample, one image "
                         "path per model input") from None
    rows = [(n, cells) for n, cells in rows if any(cells)]

    def where(cell: str) -> Path:
        p = Path(cell).expanduser()
        return p if p.is_absolute() else base / p

    if rows and not any(c and where(c).is_file() for c in rows[0][1]):
        rows = rows[1:]  # a header: "left,right"
    if not rows:
        raise ValueError(f"{csv_file}: no samples; give one row per sample with {inputs} image "
                         f"path(s), one per model input")
    samples = []
    for n, cells in rows:
        if len(cells) != inputs or not all(cells):
            raise ValueError(f"{csv_file} row {n}: {len(cells)} cell(s) ({','.join(cells)}); the "
                             f"model takes {inputs} image input(s): give {inputs} image path(s) "
                             "per row, in the model's input order")
        missing = [c for c in cells if not where(c).is_file()]
        if missing:
            raise ValueError(f"{csv_file} row {n}: no such file {missing[0]} (relative paths are "
                             f"read from {base if str(base) else '.'}/)")
        samples.append(tuple(str(where(c)) for c in cells))
    return samples


def _samples(paths: Sequence[Any], inputs: int) -> list[tuple[str, ...]]:
    """The samples ``paths`` give for a model with ``inputs`` image inputs: one-file tuples of
    the images of files and folders, or the given tuples of files."""
    from .io import image_files

    if inputs == 1:
        if any(isinstance(p, (list, tuple)) for p in paths):
            bad = next(p for p in paths if isinstance(p, (list, tuple)))
            if len(bad) != 1:
                raise ValueError(f"the model takes one image input; got a sample of {len(bad)} "
                                 f"files ({bad!r}): give image files or folders")
            paths = [p[0] if isinstance(p, (list, tuple)) else p for p in paths]
        return [(p,) for p in image_files([str(p) for p in paths])]
    samples = []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) or len(p) != inputs:
            raise ValueError(f"the model takes {inputs} image inputs; got {p!r}: give one "
                             f"sequence of {inputs} image files per sample (camlens.files.read_pairs "
                             "reads them from a CSV file)")
        samples.append(tuple(str(f) for f in p))
    return samples


def _sample_names(samples: list[tuple[str, ...]]) -> list[str]:
    from .io import unique_names

    # unique_names takes the stem of a path: a joined name with any suffix keeps its dots
    return unique_names(["__".join(Path(f).stem for f in s) + ".x" for s in samples])


def _shown(sample: tuple[str, ...]) -> str:
    return sample[0] if len(sample) == 1 else " + ".join(sample)


def _read_photo(path: str, size: tuple[Any, Any], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(the photo as read from disk, uint8 at its own size; the model input, float32 0..255).
    The model input is exactly what ``load_image(path, size)`` gives."""
    from .io import _resize

    pixels = _read_image(path, None, channels)
    h, w = size
    x = pixels
    if h is not None and w is not None and (h, w) != pixels.shape[:2]:
        x = _resize(pixels, (h, w))
    photo = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return photo, x


def save_npy(path: str | Path, data: np.ndarray) -> Path:
    """``data`` as the ``.npy`` file ``path`` (no pickles), whole or not at all
    (:func:`camlens.viz.write_atomic`); missing folders are made."""
    import io

    from .viz import write_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, data, allow_pickle=False)
    return write_atomic(path, buf.getvalue())


def _on_photo(small: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """A map at the model input's size back onto the photo: a map of a squashed input is
    stretched back with it. float32 in [0, 1]."""
    from . import viz

    small = np.asarray(small, dtype=np.float32)
    full = small if small.shape == hw else np.clip(viz.resize_bilinear(small, hw), 0.0, 1.0)
    return full.astype(np.float32)


def _photo_overlay(photo: np.ndarray, small: np.ndarray, cmap: str, alpha: float) -> np.ndarray:
    """The map ``small`` (at the model input's size) blended onto ``photo`` at its own size."""
    from . import viz

    return viz.overlay(photo, _on_photo(small, tuple(photo.shape[:2])), cmap=cmap, alpha=alpha)


def _save_group(out: Path, exp: Any, group: list[tuple[tuple[str, ...], str, list[np.ndarray]]],
                look: dict[str, Any]) -> list[dict[str, Any]]:
    """Writes the files of one explained batch; returns a row per sample (``results.json``)."""
    from . import viz
    from .io import safe_name

    rows = []
    for i, (sample, stem, photos) in enumerate(group):
        files: list[str] = []
        maps: list[dict[str, Any]] = []
        for k, site in enumerate(exp.sites):
            j = site.input_index
            photo = photos[j]
            hw = photo.shape[:2]
            small = np.asarray(exp.maps[k][i], dtype=np.float32)
            full = _on_photo(small, hw)
            over = viz.overlay(photo, full, cmap=look["cmap"], alpha=look["alpha"])
            if exp.boxes is not None:
                h_in, w_in = small.shape
                over = viz.draw_boxes(over, exp.boxes[i], scale=(hw[1] / w_in, hw[0] / h_in))
            heat = (viz.colorize(full, look["cmap"]) if look["heatmap"] == "color"
                    else np.rint(full * 255.0).astype(np.uint8))
            base = f"{safe_name(stem)}_{exp.method}_{safe_name(site.label)}"
            entry: dict[str, Any] = {"layer": site.label, "input": j, "image": sample[j],
                                     "size": [int(hw[0]), int(hw[1])]}
            for key, suffix, data in (("overlay", "overlay.png", over), ("heatmap", "heatmap.png", heat),
                                      ("map_npy", "map.npy", full),
                                      ("raw_npy", "raw.npy", np.asarray(exp.raw_maps[k][i]))):
                path = out / f"{base}_{suffix}"
                if suffix.endswith(".png"):
                    viz.save_png(data, path)
                else:
                    save_npy(path, data)
                entry[key] = path.name
                files.append(path.name)
            detail = exp.details[k] if k < len(exp.details) else {}
            if "concept_maps" in detail:
                entry["concepts"] = _save_concepts(out, base, detail, i, small.shape, photo, look)
                files.extend([entry["concepts"]["npy"], *entry["concepts"]["overlays"]])
            maps.append(entry)
        rows.append({
            "image": sample[0] if len(sample) == 1 else list(sample),
            "score": float(exp.scores[i]),
            "class": None if exp.class_indices is None else int(exp.class_indices[i]),
            "files": files,
            "target": exp.target,
            "size": maps[0]["size"] if len(sample) == 1 else [m["size"] for m in maps],
            "maps": maps,
        })
    return rows


def _save_concepts(out: Path, base: str, detail: dict[str, Any], i: int, size: tuple[int, ...],
                   photo: np.ndarray, look: dict[str, Any]) -> dict[str, Any]:
    """Writes sample ``i``'s concept maps (Deep Feature Factorization's ``details``): the raw
    ``(k, h, w)`` array and one overlay per concept; returns their ``results.json`` entry."""
    from . import viz

    raw = np.asarray(detail["concept_maps"][i], dtype=np.float32)
    npy = save_npy(out / f"{base}_concepts.npy", raw).name
    overlays = []
    for j, m in enumerate(raw):
        top = float(m.max())
        # concepts are non-negative (NMF): scaled by their own maximum, so each shows its shape
        unit = m / top if top > 0 else np.zeros_like(m)
        small = np.clip(viz.resize_bilinear(unit, (int(size[0]), int(size[1]))), 0.0, 1.0)
        path = out / f"{base}_concept{j}_overlay.png"
        viz.save_png(_photo_overlay(photo, small, look["cmap"], look["alpha"]), path)
        overlays.append(path.name)
    entry: dict[str, Any] = {"npy": npy, "overlays": overlays, "shown": int(detail["chosen"][i])}
    if "top_classes" in detail:
        entry["top_classes"] = np.asarray(detail["top_classes"][i]).astype(int).tolist()
    return entry


def _record(done: ExplainedFiles, saved: list[tuple[Any, list[dict[str, Any]]]]) -> None:
    """``done.images`` and ``done.layer`` from the batches whose files are written."""
    reasons: list[str] = []
    done.images = []
    for exp, rows in saved:
        done.images.extend(rows)
        if exp.reason not in reasons:
            reasons.append(exp.reason)
    done.layer = "; ".join(reasons)


def _write_results(done: ExplainedFiles) -> None:
    import csv
    import io

    from .viz import write_atomic

    done.results = done.out / "results.json"
    write_atomic(done.results, json.dumps(
        {"method": done.method, "layer": done.layer, "images": done.images,
         "failed": [{"image": p, "error": e} for p, e in done.failed]}, indent=2))
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(CSV_COLUMNS)
    for row in done.images:
        for m in row["maps"]:
            table.writerow([m["image"], done.method, m["layer"], m["input"], row["target"],
                            repr(row["score"]), "" if row["class"] is None else row["class"],
                            m["size"][0], m["size"][1], m["overlay"], m["heatmap"],
                            m["map_npy"], m["raw_npy"]])
    done.table = done.out / "results.csv"
    write_atomic(done.table, text.getvalue())


def input_geometry(model: Any, size: tuple[int, int] | None = None, *,
                   drop: str | None = None, what: str = "explain_files") -> list[tuple[tuple[Any, Any], int]]:
    """Per image input of the model, ``((H, W), channels)`` its images are read at (``None``
    sides: each image's own size; ``size`` sets the size of a model that has none and must
    agree with one that has; ``drop``: how the caller names ``size``). Raises ValueError for a
    model with an input that is not a batch of images (``what``: the caller, as it says)."""
    from .adapters import adapt
    from .io import agreed_size

    specs = adapt(model).input_specs()
    if not specs or any(len(s.shape) != 4 for s in specs):
        raise ValueError(f"{what} takes models whose inputs are all images (N, H, W, C); "
                         f"this one takes {[s.shape for s in specs]}. Use camlens.explain.")
    drop = f"size={size}" if drop is None else drop
    return [(agreed_size((s.shape[1], s.shape[2]), size, drop), int(s.shape[3] or 3)) for s in specs]


def _check_model(model: Any, method: Any, layer: Any, size: tuple[int, int] | None) -> list[tuple[tuple[Any, Any], int]]:
    """Per model input ``((H, W), channels)`` images are read at; fails on a model with other
    inputs, an unknown method, or a layer the model does not have, before any image is read."""
    from .adapters import adapt
    from .graph import find_nodes
    from .methods import get_method

    geometry = input_geometry(model, size)
    get_method(method)
    adapter = adapt(model)
    known = not adapter.needs_input_size or all(None not in hw for hw, _ in geometry)
    if isinstance(layer, str) and layer != "auto" and known:  # else: checked on the first batch
        if adapter.needs_input_size:  # its layers need a shape
            zeros = [np.zeros((1, *hw, c), np.float32) for hw, c in geometry]
            adapter.prepare(zeros[0] if len(zeros) == 1 else zeros)
        find_nodes(adapter.graph(), layer)
    return geometry


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
    progress: Progress | None = None,
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
        progress: called as ``progress(n)`` when ``n`` more (method, image) pairs are done, of
            ``len(methods) * len(images)``: an image that cannot be read counts as done for
            every method.

    A method that cannot be explained or measured raises ValueError naming the method (the
    methods before it have been reported to ``on_method``).
    """
    from ._args import batches
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
    step = progress if progress is not None else (lambda n: None)
    groups: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for path in images:
        try:
            img = _read_image(path, hw if resize else None, channels)
        except ImageError as exc:
            done.failed.append((path, str(exc)))
            step(len(methods))
            continue
        x = np.asarray(prep(img[None]), dtype=np.float32)[0]
        groups.setdefault(x.shape, []).append((path, x))  # models without a fixed size: by size
    for method in methods:
        rows: list[dict[str, Any]] = []
        sites, described = "", ""
        # a batch at a time, so that progress moves: the numbers of an image do not depend on
        # the images beside it
        parts = [group[part] for group in groups.values() for part in batches(len(group), batch_size)]
        for group in parts:
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
            step(len(group))
        if rows:
            mean = {n: float(np.nanmean([r[n] for r in rows])) for n in names}
            done.methods[method] = {"layer": sites, "score": described, "images": rows, "mean": mean}
            if on_method is not None:
                on_method(method, done.methods[method])
    return done
