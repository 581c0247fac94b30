"""HiResCAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, channel_sum_or_principal, eigen_smooth_flag, register


@register
class HiResCAM(CAMMethod):
    """HiResCAM: gradients times activations, position by position, summed over channels.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020.

    map ``= relu(sum_c G[n, :, :, c] A[n, :, :, c])``. Unlike Grad-CAM the gradient is not
    averaged over positions first; with spatially constant gradients the two agree.

    ``eigen_smooth=True`` (pytorch-grad-cam's ``eigen_smooth``): the ``(h, w, C)`` products
    ``G A`` are projected onto their first principal component instead of summed over channels
    (centred per channel, relu). One deliberate difference: pytorch-grad-cam keeps the
    arbitrary sign of the SVD; camlens orients the projection to correlate positively with the
    channel sum, the unsmoothed map. The smoothed map is no longer the exact per-position
    decomposition that makes HiResCAM faithful (pytorch-grad-cam prints that warning too).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import HiResCAM, SiteData
        >>> A = np.ones((1, 2, 2, 1))
        >>> G = np.array([[1.0, -1.0], [2.0, 0.0]])[None, :, :, None]
        >>> HiResCAM()(SiteData(A, G))[0].tolist()             # Grad-CAM: 0.5 everywhere
        [[1.0, 0.0], [2.0, 0.0]]
    """

    name = "hirescam"

    def __init__(self, eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        assert grads is not None
        return channel_sum_or_principal(grads * acts, self.eigen_smooth, self.name)
