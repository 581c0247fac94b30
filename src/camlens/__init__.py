"""camlens: see what a vision model looks at.

    >>> import camlens
    >>> exp = camlens.explain(model, images, method="gradcam")   # doctest: +SKIP
    >>> exp.overlay(images)                                       # doctest: +SKIP

Deep-learning frameworks are imported only when a model of theirs is explained.
"""


from . import methods, targets, viz
from .explain import explain, layers
from .explanation import Explanation, Site
from .layers import LayerReport
from .methods import available_methods

__version__ = "0.1.0"

__all__ = [
    "explain",
    "layers",
    "Explanation",
    "Site",
    "LayerReport",
    "available_methods",
    "methods",
    "targets",
    "viz",
    "__version__",
]
