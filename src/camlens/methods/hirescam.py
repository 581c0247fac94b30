"""HiResCAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, register


@register
class HiResCAM(CAMMethod):
    """HiResCAM: gradients times activations, position by position, summed over channels.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020.

    map ``= relu(sum_c G[n, :, :, c] A[n, :, :, c])``. Unlike Grad-CAM the gradient is not
    averaged over positions first; with spatially constant gradients the two agree.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import HiResCAM, SiteData
        >>> A = np.ones((1, 2, 2, 1))
        >>> G = np.array([[1.0, -1.0], [2.0, 0.0]])[None, :, :, None]
        >>> HiResCAM()(SiteData(A, G))[0].tolist()             # Grad-CAM: 0.5 everywhere
        [[1.0, 0.0], [2.0, 0.0]]
    """

    name = "hirescam"

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        assert grads is not None
        return np.maximum((grads * acts).sum(axis=3), 0.0).astype(np.float32)
