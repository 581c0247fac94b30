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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ExplainedFiles", "explain_files"]

#: ``progress(n)``: ``n`` more images are done (explained, or failed to read)
Progress = Callable[[int], None]

_REFUSAL = "{what} takes one-image models; this one takes {{shapes}}. Use camlens.explain(model, [a, b])."


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

    Returns the :class:`ExplainedFiles`; an image that cannot be read is in its ``failed``.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .explain import explain
    from .io import ImageError, as_preprocess, image_files, load_image, safe_name, unique_names
    from .methods import get_method

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha}")
    prep = as_preprocess(preprocess)
    images = image_files([str(p) for p in paths])
    (h, w), c = _check_model(model, method, layer, size)
    name = method if isinstance(method, str) else get_method(method).name
    done = ExplainedFiles(out=Path(out), method=name)
    reasons: list[str] = []
    order = list(zip(images, unique_names(images)))
    step = progress if progress is not None else (lambda n: None)
    pending: tuple[Any, Any, Any] | None = None

    def finish(save: Any, group: list[tuple[str, str, Any]], exp: Any) -> None:
        files = save.result()
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
        step(len(group))

    with ThreadPoolExecutor(max_workers=1) as writer:  # PNG encoding releases the GIL
        for start in range(0, len(order), batch_size):
            # images of one size are explained together (a model without a fixed size may get
            # several sizes in one batch)
            groups: dict[tuple[int, ...], list[tuple[str, str, np.ndarray]]] = {}
            for path, name in order[start : start + batch_size]:
                try:
                    img = load_image(path, (h, w), channels=c)
                except ImageError as exc:
                    done.failed.append((path, str(exc)))
                    step(1)
                    continue
                groups.setdefault(img.shape, []).append((path, name, img))
            for group in groups.values():
                x = np.stack([img for _, _, img in group])
                exp = explain(model, prep(x), method=method, target=target, layer=layer,
                              output=output, batch_size=batch_size)
                # the PNGs of this batch are written while the next batch is explained
                if pending is not None:
                    finish(*pending)
                save = writer.submit(exp.save, done.out, images=x.astype(np.uint8) if c != 1 else x,
                                     names=[n for _, n, _ in group], cmap=cmap, alpha=alpha,
                                     write_json=False)
                pending = (save, group, exp)
        if pending is not None:
            finish(*pending)
    if done.images:
        done.layer = "; ".join(reasons)
        done.results = done.out / "results.json"
        done.results.write_text(json.dumps(
            {"method": done.method, "layer": done.layer, "images": done.images,
             "failed": [{"image": p, "error": e} for p, e in done.failed]}, indent=2))
    return done


def _check_model(model: Any, method: Any, layer: Any, size: tuple[int, int] | None) -> tuple[tuple[Any, Any], int]:
    """``((H, W), channels)`` images are read at; fails on a model with other inputs, an
    unknown method, or a layer the model does not have, before any image is read."""
    from .adapters import adapt
    from .io import image_geometry
    from .layers import find_nodes
    from .methods import get_method

    (h, w), c = image_geometry(model, size, drop=f"size={size}", refusal=_REFUSAL.format(what="explain_files"))
    get_method(method)
    adapter = adapt(model)
    known = not adapter.needs_input_size or (h is not None and w is not None)
    if isinstance(layer, str) and layer != "auto" and known:  # else: checked on the first batch
        if adapter.needs_input_size:
            adapter.prepare(np.zeros((1, h, w, c), np.float32))  # its layers need a shape
        find_nodes(adapter.graph(), layer)
    return (h, w), c
