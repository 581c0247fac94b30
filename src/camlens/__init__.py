"""camlens: see what a vision model looks at.

    >>> import camlens
    >>> exp = camlens.explain(model, images, method="gradcam")   # doctest: +SKIP
    >>> exp.overlay(images)                                       # doctest: +SKIP
    >>> camlens.feature_maps(model, image).save("features/")      # doctest: +SKIP

Deep-learning frameworks are imported only when a model of theirs is explained.
"""


from . import methods, metrics, report, targets, tokens, viz
from ._explain import explain, layers
from .adapters.compile_cache import enable_compile_cache
from .explanation import Explanation, Site
from .features import FeatureMaps, feature_maps
from .graph import LayerReport
from .methods import available_methods
from .smooth import tta
from ._visualize import Visualization, visualize

__version__ = "0.1.0"

#: subpackages reached as attributes (``camlens.models.efficientnet_lite0()``) but imported only
#: when first used: they load a framework (models), a web server (app) or image decoders (io),
#: and ``import camlens`` stays light. Python binds a submodule on its package once imported, so
#: this is the package's own attribute, not a dependency of the facade on those layers.
_LAZY = ("app", "files", "io", "models", "samples")


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "explain",
    "layers",
    "Explanation",
    "Site",
    "feature_maps",
    "FeatureMaps",
    "visualize",
    "Visualization",
    "tta",
    "LayerReport",
    "available_methods",
    "enable_compile_cache",
    "methods",
    "metrics",
    "report",
    "targets",
    "tokens",
    "viz",
    "__version__",
]
