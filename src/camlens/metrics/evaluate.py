"""Several metrics of one explanation in one call."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..explanation import Explanation
from ._common import MetricResult, setup
from .confidence import _result, confidence_scores
from .curves import deletion, insertion
from .localization import energy_pointing_game, pointing_game
from .road import road

__all__ = ["METRICS", "DEFAULT_METRICS", "evaluate", "get_metric"]

#: every name :func:`evaluate` knows, and whether higher is better
METRICS = {
    "deletion": False,
    "insertion": True,
    "average_drop": False,
    "increase_in_confidence": True,
    "road": True,
    "pointing_game": True,
    "energy_pointing_game": True,
}
DEFAULT_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")


def evaluate(
    model: Any,
    explanation: Explanation,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    objects: Any = None,
    steps: int = 100,
    batch_size: int = 32,
    score: str = "probability",
    site: int = 0,
    tolerance: float = 15,
    target: Any = None,
    output: int | str | None = None,
) -> dict[str, MetricResult]:
    """Compute ``metrics`` for an :class:`~camlens.explanation.Explanation` of ``model``.

    Args:
        metrics: names from :data:`METRICS`: ``"deletion"``, ``"insertion"``, ``"average_drop"``,
            ``"increase_in_confidence"``, ``"road"``, and with ``objects`` (boxes or masks, see
            :mod:`camlens.metrics.localization`) ``"pointing_game"`` and
            ``"energy_pointing_game"``.
        steps: deletion/insertion steps. ``batch_size``, ``score``, ``site``, ``target``,
            ``output``: as for :func:`camlens.metrics.deletion`; ``tolerance`` as for
            :func:`camlens.metrics.pointing_game`. Other settings take their defaults; call
            the metric functions for more control.

    Returns:
        ``{name: result}`` in the order asked; each result has ``.per_image`` ``(N,)``,
        ``.value`` (the mean) and ``.higher_is_better``. Average Drop and Increase in
        Confidence share one pass of the model.

    Example::

        exp = camlens.explain(model, images, "gradcam++")
        for name, res in camlens.metrics.evaluate(model, exp).items():
            print(res)
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"evaluate takes an Explanation (camlens.explain(...)); got {type(explanation).__name__}. "
            "For images and maps call the metric functions, e.g. camlens.metrics.deletion(model, x, maps)"
        )
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if objects is None and {"pointing_game", "energy_pointing_game"} & set(names):
        raise ValueError("the pointing games need the objects: evaluate(..., objects=boxes or masks)")
    common = dict(target=target, batch_size=batch_size, score=score, output=output, site=site)
    out: dict[str, MetricResult] = {}
    confidence = None
    for name in names:
        if name == "deletion":
            out[name] = deletion(model, explanation, steps=steps, **common)
        elif name == "insertion":
            out[name] = insertion(model, explanation, steps=steps, **common)
        elif name in ("average_drop", "increase_in_confidence"):
            if confidence is None:
                prob = setup(model, explanation, None, **common)
                confidence = (*confidence_scores(prob, 0.0), prob.describe(), prob.space)
            out[name] = _result(name, *confidence)
        elif name == "road":
            out[name] = road(model, explanation, **common)
        elif name == "pointing_game":
            out[name] = pointing_game(explanation, objects, tolerance=tolerance, site=site)
        else:
            out[name] = energy_pointing_game(explanation, objects, site=site)
    return out


def get_metric(name: str) -> Callable[[Any, Explanation], dict[str, np.ndarray]]:
    """``fn(model, explanation) -> {name: (N,) values}`` for a metric that needs nothing but
    the model and the explanation (what :func:`camlens.report.collect` takes), with
    :func:`evaluate`'s defaults."""
    usable = [m for m in METRICS if m not in ("pointing_game", "energy_pointing_game")]
    if name not in usable:
        why = " (it needs the objects' boxes: call evaluate(..., objects=))" if name in METRICS else ""
        raise ValueError(f"unknown metric {name!r}{why}; choose from {', '.join(usable)}")

    def metric(model: Any, explanation: Explanation) -> dict[str, np.ndarray]:
        return {name: evaluate(model, explanation, [name])[name].per_image}

    metric.__name__ = name
    return metric
