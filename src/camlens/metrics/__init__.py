"""Faithfulness and localization metrics: is a heatmap right about the model?

    >>> exp = camlens.explain(model, images, "gradcam")                    # doctest: +SKIP
    >>> camlens.metrics.deletion(model, exp).value       # mean AUC, lower is better  # doctest: +SKIP
    >>> camlens.metrics.evaluate(model, exp)              # several at once       # doctest: +SKIP

Each metric takes the model, then either an :class:`~camlens.explanation.Explanation` or the
images and ``(N, H, W)`` maps, and returns a result with ``.per_image`` ``(N,)``, ``.value``
(the mean) and ``.higher_is_better``. The user's model is never changed.

==========================  =====================================================  ==========
metric                      definition followed                                    better
==========================  =====================================================  ==========
``deletion``                RISE (Petsiuk et al. 2018): trapezoid AUC, x in [0,1]  lower
``insertion``               RISE, from a Gaussian-blurred image                    higher
``average_drop``            Grad-CAM++ (Chattopadhay et al. 2018), in %            lower
``increase_in_confidence``  Grad-CAM++, in %                                       higher
``road``                    ROAD (Rong et al. 2022), noisy linear imputation       see doc
``pointing_game``           Zhang et al. 2018, with a pixel tolerance              higher
``energy_pointing_game``    Score-CAM (Wang et al. 2020)                           higher
``randomization_check``     Adebayo et al. 2018, cascading, Spearman's rho         falls to 0
==========================  =====================================================  ==========

Metrics that rerun the model read a score, stated in each result's ``.score`` (``score=``):

- ``"probability"`` (default, as RISE and Grad-CAM++ do): the explained class's probability.
  Whether the output already is one is read from the first batch of outputs: rows of two or
  more non-negative values summing to 1 (within 1e-3) are used as they are; otherwise a softmax
  is applied. A one-unit output is used as it is if it lies in [0, 1], else through a sigmoid.
  For multi-label sigmoid outputs use ``"raw"``.
- ``"logit"``: the class's score with the output's final softmax/sigmoid skipped.
- ``"raw"``: the target's own value (any :mod:`camlens.targets` target).

Each image's class is pinned for all its modified copies: the class an Explanation explained,
the given ``target``, else the top class of the unmodified image. Modified images are scored
``batch_size`` per model call.
"""

from ._common import SCORE_SPACES, MetricResult
from .confidence import ConfidenceResult, average_drop, increase_in_confidence
from .curves import CurveResult, auc, deletion, gaussian_blur, insertion
from .evaluate import DEFAULT_METRICS, METRICS, MetricRun, Results, evaluate, get_metric, model_metrics, register_metric
from .localization import PointingResult, energy_pointing_game, pointing_game
from .randomization import RandomizationResult, randomization_check, spearman
from .road import RoadResult, noisy_linear_imputation, road

__all__ = [
    "deletion",
    "insertion",
    "auc",
    "gaussian_blur",
    "average_drop",
    "increase_in_confidence",
    "road",
    "noisy_linear_imputation",
    "pointing_game",
    "energy_pointing_game",
    "randomization_check",
    "spearman",
    "evaluate",
    "get_metric",
    "METRICS",
    "MetricRun",
    "model_metrics",
    "register_metric",
    "DEFAULT_METRICS",
    "SCORE_SPACES",
    "MetricResult",
    "Results",
    "CurveResult",
    "ConfidenceResult",
    "RoadResult",
    "PointingResult",
    "RandomizationResult",
]
