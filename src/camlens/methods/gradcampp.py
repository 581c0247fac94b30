"""Grad-CAM++."""

from __future__ import annotations

import numpy as np

from .base import SiteData, WeightedCAM, register


@register
class GradCAMPlusPlus(WeightedCAM):
    """Grad-CAM++: positive gradients weighted per position by ``alpha``.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks", WACV 2018.

    With the paper's exponential score ``exp(S)``, its second and third derivatives are powers
    of ``G``, which gives the closed form (``sum_ab A`` is the spatial sum of channel ``c``)::

        alpha[n, i, j, c] = G^2 / (2 G^2 + (sum_ab A[n, a, b, c]) G^3)
        w[n, c]           = sum_ij alpha[n, i, j, c] relu(G[n, i, j, c])

    where ``G`` stands for ``G[n, i, j, c]``, and ``alpha = 0`` where the denominator is 0.

    map ``= relu(sum_c w[n, c] A[n, :, :, c])``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GradCAMPlusPlus, SiteData
        >>> A = np.eye(2)[None, :, :, None]                    # channel sum 2
        >>> G = np.array([[1.0, 1.0], [0.0, 0.0]])[None, :, :, None]
        >>> GradCAMPlusPlus()(SiteData(A, G))[0].tolist()       # alpha = 1/(2+2), w = 2 * 1/4
        [[0.5, 0.0], [0.0, 0.5]]
    """

    name = "gradcam++"

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        assert grads is not None
        g2 = grads**2
        denom = 2.0 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g2 * grads
        # A zero denominator only comes with G = 0 or a cancelling activation sum; no epsilon,
        # which would bias every other alpha.
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
        return (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2))
