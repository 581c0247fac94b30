"""Several metrics of one explanation in one call, and the registry of metric names.

A metric is one function ``compute(model, explanation, run) -> MetricResult`` registered with
:func:`register_metric`; ``evaluate``, ``camlens evaluate`` and the report take their lists
from the registry, so a new metric is one file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..explanation import Explanation, few_values
from .._restore import interruptible
from ..registry import Registry
from ._common import BATCH_SIZE, MetricResult, score_label, setup
from .confidence import _result, confidence_scores
from .curves import deletion, insertion
from .localization import energy_pointing_game, pointing_game
from .road import road

__all__ = ["Results", "METRICS", "DEFAULT_METRICS", "evaluate", "get_metric", "register_metric", "MetricRun",
           "model_metrics"]


@dataclass
class MetricRun:
    """What :func:`evaluate` hands every metric of one call: its settings, and ``shared``, a
    dict the metrics of the call may keep a common pass in (Average Drop and Increase in
    Confidence share one)."""

    objects: Any
    steps: int
    tolerance: float
    #: target, batch_size, score, output, site: what every model-running metric takes
    common: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)


class Results(dict[str, MetricResult]):
    """What :func:`evaluate` returns: ``{name: result}`` in the order asked, shown as a table of
    the means (each result's ``per_image`` and curves stay in the values)."""

    def __repr__(self) -> str:
        if not self:
            return "Results: no metrics"
        width = max(len("metric"), *(len(k) for k in self))
        lines = [f"{'metric':<{width}}  {'mean':>10}  better  per image"]
        for name, res in self.items():
            way = "higher" if res.higher_is_better else "lower"
            lines.append(f"{name:<{width}}  {res.value:>10.4g}  {way:<6}  {few_values(res.per_image)}")
        scores = list(dict.fromkeys(r.score for r in self.values() if r.score))
        lines += [f"score: {score_label(s)}" for s in scores]
        return "\n".join(lines)

    __str__ = __repr__


@dataclass(frozen=True)
class _Metric:
    compute: Callable[[Any, Explanation, MetricRun], MetricResult]
    higher_is_better: bool
    needs_objects: bool


_REGISTRY: Registry[_Metric] = Registry("metric")


def register_metric(
    name: str, *, higher_is_better: bool, needs_objects: bool = False
) -> Callable[[Callable[[Any, Explanation, MetricRun], MetricResult]], Callable[..., MetricResult]]:
    """Function decorator: make ``compute(model, explanation, run) -> MetricResult`` the metric
    ``name``. ``needs_objects``: it reads the objects' boxes or masks (``evaluate(objects=)``)."""

    def add(fn: Callable[[Any, Explanation, MetricRun], MetricResult]) -> Callable[..., MetricResult]:
        _REGISTRY.add(name, _Metric(fn, bool(higher_is_better), bool(needs_objects)))
        return fn

    return add


class _Directions(Mapping[str, bool]):
    """Every registered metric and whether higher is better, read from the registry."""

    def __getitem__(self, name: str) -> bool:
        found = _REGISTRY.find(name) if isinstance(name, str) else None
        if found is None or found[0] != name:
            raise KeyError(name)
        return found[1].higher_is_better

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


#: every name :func:`evaluate` knows, and whether higher is better
METRICS: Mapping[str, bool] = _Directions()
DEFAULT_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")


def model_metrics() -> list[str]:
    """The metrics that need nothing but the model and the explanation (no objects), in the
    order registered: what ``camlens evaluate`` and the report offer."""
    return [name for name, m in _REGISTRY.items() if not m.needs_objects]


@register_metric("deletion", higher_is_better=False)
def _deletion(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
    return deletion(model, exp, steps=run.steps, **run.common)


@register_metric("insertion", higher_is_better=True)
def _insertion(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
    return insertion(model, exp, steps=run.steps, **run.common)


def _confidence(name: str) -> Callable[[Any, Explanation, MetricRun], MetricResult]:
    def compute(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
        if "confidence" not in run.shared:  # one pass of the model for both
            prob = setup(model, exp, None, **run.common)
            run.shared["confidence"] = (*confidence_scores(prob, 0.0), prob.describe(), prob.space)
        return _result(name, *run.shared["confidence"])

    return compute


register_metric("average_drop", higher_is_better=False)(_confidence("average_drop"))
register_metric("increase_in_confidence", higher_is_better=True)(_confidence("increase_in_confidence"))


@register_metric("road", higher_is_better=True)
def _road(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
    return road(model, exp, **run.common)


@register_metric("pointing_game", higher_is_better=True, needs_objects=True)
def _pointing(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
    return pointing_game(exp, run.objects, tolerance=run.tolerance, site=run.common["site"])


@register_metric("energy_pointing_game", higher_is_better=True, needs_objects=True)
def _energy_pointing(model: Any, exp: Explanation, run: MetricRun) -> MetricResult:
    return energy_pointing_game(exp, run.objects, site=run.common["site"])


@interruptible
def evaluate(
    model: Any,
    explanation: Explanation,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    objects: Any = None,
    steps: int = 100,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    site: int = 0,
    tolerance: float = 15,
    target: Any = None,
    output: int | str | None = None,
) -> Results:
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
    if objects is None and any(_REGISTRY.get(m)[1].needs_objects for m in names):
        raise ValueError("the pointing games need the objects: evaluate(..., objects=boxes or masks)")
    run = MetricRun(objects, steps, tolerance,
                    dict(target=target, batch_size=batch_size, score=score, output=output, site=site))
    return Results((name, _REGISTRY.get(name)[1].compute(model, explanation, run)) for name in names)


def get_metric(name: str) -> Callable[[Any, Explanation], dict[str, np.ndarray]]:
    """``fn(model, explanation) -> {name: (N,) values}`` for a metric that needs nothing but
    the model and the explanation (what :func:`camlens.report.collect` takes), with
    :func:`evaluate`'s defaults."""
    usable = model_metrics()
    if name not in usable:
        why = " (it needs the objects' boxes: call evaluate(..., objects=))" if name in METRICS else ""
        raise ValueError(f"unknown metric {name!r}{why}; choose from {', '.join(usable)}")

    def metric(model: Any, explanation: Explanation) -> dict[str, np.ndarray]:
        return {name: evaluate(model, explanation, [name])[name].per_image}

    metric.__name__ = name
    return metric
