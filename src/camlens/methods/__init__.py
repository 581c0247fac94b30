"""CAM methods: numpy functions of a layer's activations and gradients, registered by name."""

from .base import CAMMethod, PixelData, PixelMethod, SiteData, WeightedCAM, available_methods, get_method, register
from .ablationcam import AblationCAM
from .cam import CAM
from .eigencam import EigenCAM, EigenGradCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus, SmoothGradCAMPlusPlus
from .hirescam import HiResCAM
from .layercam import LayerCAM
from .perturbation import RISE, Occlusion
from .pixel import GuidedBackprop, GuidedGradCAM, IntegratedGradients, Saliency, SmoothGrad, guided_gradcam
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
    "GradCAM",
    "CAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "HiResCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
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
]
