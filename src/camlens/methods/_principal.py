"""The first principal component of a layer's positions, oriented: Eigen-CAM's map and the
``eigen_smooth`` of the other CAMs. numpy only, below :mod:`.base` (which uses it)."""

from __future__ import annotations

import numpy as np


def _principal_projection(m: np.ndarray) -> np.ndarray:
    """``(h, w, C)`` -> ``(h, w)``: the positions projected on the first principal direction."""
    h, w, c = m.shape
    flat = m.reshape(h * w, c)
    centered = flat - flat.mean(axis=0)
    # Exactly zero for constant inputs (see principal_maps), where any
    # singular vector would be arbitrary.
    if not centered.any():
        return np.zeros((h, w))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return orient(centered @ vt[0], flat).reshape(h, w)


def orient(proj: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """The projection ``(Z,)`` of the positions ``flat`` ``(Z, C)`` or its negative: the one that
    correlates positively with the channel sum (the sign rule of Eigen-CAM's docstring)."""
    ref = flat.sum(axis=1)
    ref = ref - ref.mean()
    corr = float(proj @ ref)
    # The tolerance keeps rounding noise from choosing the sign when the correlation is 0.
    if abs(corr) > 1e-9 * np.linalg.norm(proj) * np.linalg.norm(ref):
        sign = np.sign(corr)
    else:
        sign = np.sign(proj[np.argmax(np.abs(proj))])
    return sign * proj


def principal_maps(m: np.ndarray, method: str) -> np.ndarray:
    """``(N, h, w, C)`` -> ``(N, h, w)`` float32: each sample's positions projected on its first
    principal direction (oriented by :func:`orient`), relu. Eigen-CAM's map, and
    the ``eigen_smooth`` of the other CAMs. NaN or inf raise ``ValueError`` naming ``method``."""
    if not np.isfinite(m).all():
        raise ValueError(f"{method}: the matrix to decompose contains NaN or inf")
    # float64 makes float32 products exact and the mean of a constant channel exactly that
    # constant, so a constant input centres to exact zeros.
    m = np.asarray(m, dtype=np.float64)
    out = np.zeros(m.shape[:3], dtype=np.float32)
    for n in range(m.shape[0]):
        out[n] = np.maximum(_principal_projection(m[n]), 0.0)
    return out
