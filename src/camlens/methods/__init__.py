"""CAM methods: numpy functions of a layer's activations and gradients, registered by name."""

from .base import CAMMethod, PixelData, PixelMethod, SiteData, WeightedCAM, available_methods, get_method, register
from .cam import CAM
from .eigencam import EigenCAM, EigenGradCAM
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus
from .hirescam import HiResCAM
from .layercam import LayerCAM
from .scorecam import ScoreCAM
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
]
