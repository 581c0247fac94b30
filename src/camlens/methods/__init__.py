"""CAM methods: numpy functions of a layer's activations and gradients, registered by name.

Every module in this package is imported here, so a method added as one new file (a class
with ``@register``) is known to ``explain``, the CLI, the app and the report at once.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import CAMMethod, PixelData, PixelMethod, SiteData, WeightedCAM, available_methods, get_method, register, slow_methods
from .ablationcam import AblationCAM
from .attention import LeGrad, Rollout
from .cam import CAM
from .dff import DFF
from .eigencam import EigenCAM, EigenGradCAM
from .finercam import FinerCAM
from .elementwise import GradCAMElementWise
from .fullgrad import FullGrad
from .gradientx import GradientShap, InputXGradient
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus, SmoothGradCAMPlusPlus
from .hirescam import HiResCAM
from .kpcacam import KPCACAM
from .layercam import LayerCAM
from .perturbation import RISE, Occlusion
from .pixel import GuidedBackprop, GuidedGradCAM, IntegratedGradients, Saliency, SmoothGrad, guided_gradcam
from .surrogate import KernelShap, Lime
from .scorecam import ISCAM, SSCAM, FastScoreCAM, ScoreCAM
from .xgradcam import XGradCAM

__all__ = [
    "CAMMethod",
    "SiteData",
    "PixelData",
    "PixelMethod",
    "WeightedCAM",
    "available_methods",
    "get_method",
    "register",
    "slow_methods",
    "GradCAM",
    "CAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAMElementWise",
    "KPCACAM",
    "DFF",
    "ScoreCAM",
    "FastScoreCAM",
    "SSCAM",
    "ISCAM",
    "AblationCAM",
    "SmoothGradCAMPlusPlus",
    "Saliency",
    "SmoothGrad",
    "IntegratedGradients",
    "GuidedBackprop",
    "GuidedGradCAM",
    "guided_gradcam",
    "Occlusion",
    "RISE",
    "Rollout",
    "LeGrad",
    "FinerCAM",
    "InputXGradient",
    "GradientShap",
    "Lime",
    "KernelShap",
    "FullGrad",
]

for _info in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_info.name}")
