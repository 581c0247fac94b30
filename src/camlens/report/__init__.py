"""A self-contained HTML report: per image the top predictions, the overlay and map of every
method, the layer used and why, and optionally faithfulness metrics with the best marked.

    >>> from camlens.report import write_report
    >>> write_report("report.html", model, ["cat.jpg", "dog.png"],        # doctest: +SKIP
    ...              methods=["gradcam", "scorecam"])

The page needs no other file and no network: images are ``data:`` URIs (JPEG at quality 85,
PNG when small), the CSS is inline, and one small inline script filters the contents; its
Content-Security-Policy forbids loading anything else. Large reports stay usable: images load
lazily, sections are rendered only when scrolled to, and the contents can be filtered.

``collect`` runs the model and keeps what the page shows; ``render_html`` turns that into the
page; ``write_report`` does both and writes the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ._collect import HIGHER_IS_BETTER, ImageResult, MetricFn, Panel, Report, best_methods, check_options, collect
from ._html import render_html

__all__ = [
    "write_report",
    "collect",
    "render_html",
    "Report",
    "ImageResult",
    "Panel",
    "MetricFn",
    "HIGHER_IS_BETTER",
    "best_methods",
    "check_options",
]


def write_report(
    path: str | os.PathLike[str],
    model: Any,
    images: Sequence[Any],
    names: Sequence[str] | None = None,
    **options: Any,
) -> Report:
    """Explain ``images`` and write the HTML page to ``path``; returns the collected
    :class:`Report` (its ``failed`` lists the images that could not be used).
    ``options`` are those of :func:`collect` (``methods``, ``metrics``, ``top``,
    ``class_names``, ``preprocess``, ...)."""
    report = collect(model, images, names, **options)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..viz import write_atomic

    write_atomic(out, render_html(report))  # whole or absent, also after SIGTERM
    return report
