"""Grad-CAM element-wise."""

from __future__ import annotations

import numpy as np

from ._principal import principal_maps
from .base import CAMMethod, SiteData, register


@register
class GradCAMElementWise(CAMMethod):
    """Grad-CAM element-wise: each position's gradient-times-activation products, negative ones
    dropped before the channels are summed.

    The element-wise variant of Grad-CAM in pytorch-grad-cam (Gildenblat et al., 2021;
    ``GradCAMElementWise``), after Selvaraju et al., "Grad-CAM", ICCV 2017.

    map ``= relu(sum_c relu(G[n, :, :, c] A[n, :, :, c]))``. Unlike HiResCAM, which sums the
    signed products, a channel that argues against the score at a position cannot cancel one
    that argues for it there. The outer relu only matters for ``eigen_smooth=True``.

    ``eigen_smooth=True``: the ``(h, w, C)`` products ``relu(G A)`` projected onto their first
    principal component instead of summed over channels, as pytorch-grad-cam's
    ``eigen_smooth``; the projection's sign is camlens' Eigen-CAM rule (it correlates positively
    with the channel sum), where pytorch-grad-cam keeps the arbitrary sign of the SVD.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GradCAMElementWise, SiteData
        >>> A = np.stack([np.ones((2, 2)), np.full((2, 2), 2.0)], axis=-1)[None]
        >>> G = np.stack([[[1.0, -1.0], [0.0, 2.0]], np.full((2, 2), -0.25)], axis=-1)[None]
        >>> GradCAMElementWise()(SiteData(A, G))[0].tolist()  # HiResCAM: [[0.5, 0], [0, 1.5]]
        [[1.0, 0.0], [0.0, 2.0]]
    """

    name = "gradcamelementwise"

    def __init__(self, eigen_smooth: bool = False) -> None:
        if not isinstance(eigen_smooth, (bool, np.bool_)):
            raise TypeError(f"{self.name}: eigen_smooth must be True or False; got {eigen_smooth!r}")
        self.eigen_smooth = bool(eigen_smooth)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        assert grads is not None
        products = np.maximum(grads * acts, 0.0)
        if self.eigen_smooth:
            return principal_maps(products, self.name)
        return np.maximum(products.sum(axis=3), 0.0).astype(np.float32)
