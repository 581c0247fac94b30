"""CAM, the original Class Activation Mapping."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, register


@register
class CAM(CAMMethod):
    """CAM: channels weighted by the Dense weights of the explained class.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

    Needs a head of GlobalAveragePooling then Dense; ``W[n, c]`` is the Dense weight from
    channel ``c`` to the class explained for sample ``n``.

    map ``= sum_c W[n, c] A[n, :, :, c]``, without relu, as in the paper: negative evidence
    stays visible. For a logit score ``S = (1/Z) sum_ijc W[c] A[i, j, c] + b`` the gradient
    is ``G = W / Z`` at every position, so Grad-CAM on such a head equals ``relu(CAM) / Z``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import CAM, SiteData
        >>> A = np.stack([np.eye(2), np.ones((2, 2))], axis=-1)[None]  # (1, 2, 2, 2)
        >>> CAM()(SiteData(A, head_weights=np.array([[2.0, -1.0]])))[0].tolist()
        [[1.0, -1.0], [-1.0, 1.0]]
    """

    name = "cam"
    needs_gradients = False
    needs_head_weights = True

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if data.head_weights is None:
            raise ValueError(
                "cam needs head_weights, the Dense weights after a GlobalAveragePooling layer; "
                "for a model without a GlobalAveragePooling + Dense head use method='gradcam'"
            )
        weights = np.asarray(data.head_weights, dtype=np.float32)
        expected = (acts.shape[0], acts.shape[3])
        if weights.shape != expected:
            raise ValueError(f"cam: head_weights must be (N, C) = {expected}; got {weights.shape}")
        return np.einsum("nhwc,nc->nhw", acts, weights).astype(np.float32)
