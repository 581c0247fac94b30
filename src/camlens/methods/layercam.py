"""LayerCAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, register


@register
class LayerCAM(CAMMethod):
    """LayerCAM: activations weighted position by position by their positive gradients.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE Transactions on Image Processing (TIP), 2021.

    map ``= relu(sum_c relu(G[n, :, :, c]) A[n, :, :, c])``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import LayerCAM, SiteData
        >>> A = np.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
        >>> G = np.array([[1.0, -1.0], [0.5, 2.0]])[None, :, :, None]
        >>> LayerCAM()(SiteData(A, G))[0].tolist()
        [[1.0, 0.0], [1.5, 8.0]]
    """

    name = "layercam"

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        assert grads is not None
        return np.maximum((np.maximum(grads, 0.0) * acts).sum(axis=3), 0.0).astype(np.float32)
