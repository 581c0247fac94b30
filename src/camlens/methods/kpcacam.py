"""KPCA-CAM."""

from __future__ import annotations

import numpy as np

from .base import CAMMethod, SiteData, register
from ._principal import orient

#: kernel name -> ``k(dot products, squared distances, gamma, coef0, degree)``
_KERNELS = {
    "sigmoid": lambda dot, sq, g, c0, d: np.tanh(g * dot + c0),
    "rbf": lambda dot, sq, g, c0, d: np.exp(-g * sq),
    "poly": lambda dot, sq, g, c0, d: (g * dot + c0) ** d,
    "linear": lambda dot, sq, g, c0, d: dot,
    "cosine": None,  # dot products of the unit-length rows; built in _kernel
}


def _kernel(x: np.ndarray, kernel: str, gamma: float, coef0: float, degree: int) -> np.ndarray:
    """``(Z, Z)`` kernel matrix of the rows of ``x`` ``(Z, C)``."""
    dot = x @ x.T
    if kernel == "cosine":
        norm = np.sqrt(np.diag(dot))
        norm[norm == 0] = 1.0
        return dot / norm[:, None] / norm[None, :]
    diag = np.diag(dot)
    sq = np.maximum(diag[:, None] + diag[None, :] - 2.0 * dot, 0.0)
    return _KERNELS[kernel](dot, sq, gamma, coef0, degree)


def kernel_projection(flat: np.ndarray, kernel: str, gamma: float | None, coef0: float, degree: int) -> np.ndarray:
    """``(Z,)``: the first kernel principal component of the rows of ``flat`` ``(Z, C)``
    (centred per column), as the positions' coordinates ``sqrt(lambda) v``; zeros where the
    centred kernel has no positive eigenvalue."""
    z, c = flat.shape
    x = flat - flat.mean(axis=0)
    k = _kernel(x, kernel, 1.0 / c if gamma is None else gamma, coef0, degree)
    # centring in feature space: K - 1K/Z - K1/Z + 1K1/Z^2
    k = k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()
    k = (k + k.T) / 2.0  # exactly symmetric for eigh
    vals, vecs = np.linalg.eigh(k)
    top = float(vals[-1])
    # nothing left after centring (a constant map): any eigenvector would be arbitrary
    if not np.isfinite(top) or top <= 1e-12 * max(1.0, float(np.abs(k).max()) * z):
        return np.zeros(z)
    return vecs[:, -1] * np.sqrt(top)


@register
class KPCACAM(CAMMethod):
    """KPCA-CAM: the first kernel principal component of the activations, no gradients.

    Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using
    Kernel PCA", IEEE MMSP 2024; pytorch-grad-cam's ``KPCA_CAM``.

    For each sample the ``Z = h * w`` positions ``x_z`` (rows of ``A`` reshaped to ``(Z, C)``,
    centred by each channel's mean) give the kernel matrix ``K[z, z'] = k(x_z, x_z')``, centred
    in feature space (``K - 1K/Z - K1/Z + 1K1/Z^2``); with ``v`` its top eigenvector and
    ``lambda`` its eigenvalue the map is ``relu(sqrt(lambda) v)`` reshaped to ``(h, w)``: each
    position's coordinate on the first kernel principal component, as scikit-learn's
    ``KernelPCA(n_components=1).fit_transform`` gives it.

    Kernels (as scikit-learn defines them): ``"sigmoid"`` (default, as pytorch-grad-cam)
    ``tanh(gamma <x, y> + coef0)``, ``"rbf"`` ``exp(-gamma |x - y|^2)``, ``"poly"``
    ``(gamma <x, y> + coef0)^degree``, ``"cosine"``, ``"linear"`` ``<x, y>`` (which is Eigen-CAM);
    ``gamma=None`` means ``1 / C``.

    Deliberate differences from pytorch-grad-cam:

    * sign: ``v`` and ``-v`` are equally valid. scikit-learn makes the largest-magnitude entry of
      ``v`` positive, which has nothing to do with where the layer responds; camlens orients the
      projection as Eigen-CAM does (positive correlation with the channel sum ``sum_c A``).
    * numpy only (``numpy.linalg.eigh`` of the ``Z x Z`` matrix), where scikit-learn switches to
      ARPACK with a random start above 200 positions: the same component, computed exactly.

    A constant ``A`` gives an all-zero map; NaN or inf raise ``ValueError``. The cost is one
    ``Z x Z`` eigendecomposition per image (56x56 positions: a few seconds).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import KPCACAM, SiteData
        >>> A = np.stack([[[3.0, 1.0], [1.0, 1.0]], np.full((2, 2), 5.0)], axis=-1)[None]
        >>> np.round(KPCACAM(kernel="linear")(SiteData(A))[0], 4).tolist()  # Eigen-CAM's map
        [[1.5, 0.0], [0.0, 0.0]]
    """

    name = "kpcacam"
    needs_gradients = False

    def __init__(self, kernel: str = "sigmoid", gamma: float | None = None, coef0: float = 1.0,
                 degree: int = 3) -> None:
        if kernel not in _KERNELS:
            raise ValueError(f"kpcacam: kernel must be one of {sorted(_KERNELS)}; got {kernel!r}")
        if gamma is not None and not (isinstance(gamma, (int, float, np.number)) and np.isfinite(gamma)
                                      and gamma > 0):
            raise ValueError(f"kpcacam: gamma must be a positive number or None (1 / channels); got {gamma!r}")
        if not (isinstance(coef0, (int, float, np.number)) and np.isfinite(coef0)):
            raise ValueError(f"kpcacam: coef0 must be a finite number; got {coef0!r}")
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"kpcacam: degree must be a whole number >= 1; got {degree!r}")
        self.kernel, self.gamma, self.coef0, self.degree = kernel, gamma, float(coef0), int(degree)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if not np.isfinite(acts).all():
            raise ValueError(f"{self.name}: the activations contain NaN or inf")
        n, h, w, c = acts.shape
        out = np.zeros((n, h, w), dtype=np.float32)
        for i in range(n):
            flat = acts[i].reshape(h * w, c).astype(np.float64)
            proj = kernel_projection(flat, self.kernel, self.gamma, self.coef0, self.degree)
            out[i] = np.maximum(orient(proj, flat), 0.0).reshape(h, w)
        return out
