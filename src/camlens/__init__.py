"""camlens: see what a vision model looks at.

    >>> import camlens
    >>> exp = camlens.explain(model, images, method="gradcam")   # doctest: +SKIP
    >>> exp.overlay(images)                                       # doctest: +SKIP
    >>> camlens.feature_maps(model, image).save("features/")      # doctest: +SKIP

Deep-learning frameworks are imported only when a model of theirs is explained.
"""


from . import methods, metrics, report, targets, tokens, viz
from ._explain import explain, layers
from .explanation import Explanation, Site
from .features import FeatureMaps, feature_maps
from .graph import LayerReport
from .methods import available_methods
from .smooth import tta

__version__ = "0.1.0"

__all__ = [
    "explain",
    "layers",
    "Explanation",
    "Site",
    "feature_maps",
    "FeatureMaps",
    "tta",
    "LayerReport",
    "available_methods",
    "methods",
    "metrics",
    "report",
    "targets",
    "tokens",
    "viz",
    "__version__",
]
