"""XGrad-CAM."""

from __future__ import annotations

import numpy as np

from .base import SiteData, WeightedCAM, register


@register
class XGradCAM(WeightedCAM):
    """XGrad-CAM: gradients averaged with the channel's normalised activations as weights.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020.

    ``w[n, c] = sum_ij (A[n, i, j, c] / sum_ab A[n, a, b, c]) G[n, i, j, c]``, and 0 for a
    channel whose activations sum to 0;  map ``= relu(sum_c w[n, c] A[n, :, :, c])``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import XGradCAM, SiteData
        >>> A = np.eye(2)[None, :, :, None]
        >>> G = np.array([[4.0, 2.0], [0.0, 2.0]])[None, :, :, None]
        >>> XGradCAM()(SiteData(A, G))[0].tolist()             # w = (1*4 + 1*2) / 2 = 3
        [[3.0, 0.0], [0.0, 3.0]]
    """

    name = "xgradcam"

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        assert grads is not None
        total = acts.sum(axis=(1, 2))
        weighted = (acts * grads).sum(axis=(1, 2))
        # A channel summing to 0 (usually a dead ReLU channel) has no defined weight; 0 keeps
        # it out of the map.
        return np.divide(weighted, total, out=np.zeros_like(weighted), where=total != 0)
