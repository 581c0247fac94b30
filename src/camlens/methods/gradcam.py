"""Grad-CAM."""

from __future__ import annotations

import numpy as np

from .base import SiteData, WeightedCAM, register


@register
class GradCAM(WeightedCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.

    ``w[n, c] = (1/Z) sum_ij G[n, i, j, c]``;  map ``= relu(sum_c w[n, c] A[n, :, :, c])``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GradCAM, SiteData
        >>> A = np.ones((1, 2, 2, 1)); G = np.full((1, 2, 2, 1), 0.5)
        >>> GradCAM()(SiteData(A, G))[0].tolist()
        [[0.5, 0.5], [0.5, 0.5]]
    """

    name = "gradcam"

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        assert grads is not None
        return grads.mean(axis=(1, 2))
