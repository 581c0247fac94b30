"""Eigen-CAM and its gradient-weighted variant."""

from __future__ import annotations

import numpy as np

from ._principal import orient, principal_maps
from .base import CAMMethod, SiteData, register

__all__ = ["EigenCAM", "EigenGradCAM", "orient", "principal_maps"]


class _PrincipalComponentCAM(CAMMethod):
    """Shared computation; subclasses choose the matrix ``M`` that is decomposed."""

    def _matrix(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        for label, arr in (("activations", acts), ("gradients", grads)):
            if arr is not None and not np.isfinite(arr).all():
                raise ValueError(f"{self.name}: the {label} contain NaN or inf")
        # float64 before the product: float32 products are then exact
        grads64 = None if grads is None else grads.astype(np.float64)
        return principal_maps(self._matrix(acts.astype(np.float64), grads64), self.name)


_SHARED_DOC = """
    For each sample, ``M`` reshaped to ``(Z, C)`` is centred by subtracting each channel's mean
    over positions, and the map is ``relu(M_centred v)`` reshaped to ``(h, w)``, with ``v`` the
    first right singular vector of ``M_centred``.

    Deliberate choices, not fixed by the paper:

    * sign: ``v`` and ``-v`` are equally valid, so the projection is oriented to correlate
      positively with the channel sum ``sum_c M`` (uncentred), i.e. to point where the layer
      responds strongly. If that correlation is 0, its largest-magnitude value is made
      positive (the projection of centred data always sums to 0, so its sum cannot decide).
    * relu: the centred projection is signed around 0; only the positive side is kept, like
      the other methods.

    A constant ``M`` (nothing left after centring) gives an all-zero map. NaN or inf in the
    inputs raise ``ValueError``.
"""


@register
class EigenCAM(_PrincipalComponentCAM):
    __doc__ = """Eigen-CAM: the first principal component of the activations, no gradients.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
    IJCNN 2020.

    ``M = A``.
    """ + _SHARED_DOC + """
    Example::

        >>> import numpy as np
        >>> from camlens.methods import EigenCAM, SiteData
        >>> A = np.stack([[[3.0, 1.0], [1.0, 1.0]], np.full((2, 2), 5.0)], axis=-1)[None]
        >>> np.round(EigenCAM()(SiteData(A))[0], 4).tolist()   # centred: [1.5, -.5, -.5, -.5]
        [[1.5, 0.0], [0.0, 0.0]]
    """

    name = "eigencam"
    needs_gradients = False

    def _matrix(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        return acts


@register
class EigenGradCAM(_PrincipalComponentCAM):
    __doc__ = """Eigen-Grad-CAM: Eigen-CAM of the gradient-weighted activations.

    A gradient-weighted variant of Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using
    Principal Components", IJCNN 2020, which makes the map depend on the explained score.

    ``M = G * A`` (elementwise).
    """ + _SHARED_DOC + """
    Example::

        >>> import numpy as np
        >>> from camlens.methods import EigenGradCAM, SiteData
        >>> A = np.stack([[[3.0, 1.0], [1.0, 1.0]], [[0.0, 9.0], [9.0, 9.0]]], axis=-1)[None]
        >>> G = np.stack([np.ones((2, 2)), np.zeros((2, 2))], axis=-1)[None]  # drops channel 1
        >>> np.round(EigenGradCAM()(SiteData(A, G))[0], 4).tolist()
        [[1.5, 0.0], [0.0, 0.0]]
    """

    name = "eigengradcam"

    def _matrix(self, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        assert grads is not None
        return grads * acts
