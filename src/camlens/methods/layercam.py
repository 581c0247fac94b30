"""LayerCAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, channel_sum_or_principal, eigen_smooth_flag, register


@register
class LayerCAM(CAMMethod):
    """LayerCAM: activations weighted position by position by their positive gradients.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE Transactions on Image Processing (TIP), 2021.

    map ``= relu(sum_c relu(G[n, :, :, c]) A[n, :, :, c])``.

    ``eigen_smooth=True`` (pytorch-grad-cam's ``eigen_smooth``): the ``(h, w, C)`` products
    ``relu(G) A`` are projected onto their first principal component instead of summed over
    channels (centred per channel, relu). One deliberate difference: pytorch-grad-cam keeps the
    arbitrary sign of the SVD; camlens orients the projection to correlate positively with the
    channel sum, the unsmoothed map.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import LayerCAM, SiteData
        >>> A = np.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
        >>> G = np.array([[1.0, -1.0], [0.5, 2.0]])[None, :, :, None]
        >>> LayerCAM()(SiteData(A, G))[0].tolist()
        [[1.0, 0.0], [1.5, 8.0]]
    """

    name = "layercam"

    def __init__(self, eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        assert grads is not None
        return channel_sum_or_principal(np.maximum(grads, 0.0) * acts, self.eigen_smooth, self.name)
