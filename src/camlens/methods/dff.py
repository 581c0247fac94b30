"""Deep Feature Factorization."""

from __future__ import annotations

import numpy as np

from .._args import positive_int
from .base import CAMMethod, SiteData, register

__all__ = ["DFF", "nmf"]

#: guards the multiplicative updates' denominators (a concept or position gone to zero)
_TINY = 1e-12


def nmf(v: np.ndarray, k: int, iterations: int = 500, tol: float = 1e-6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``v`` ``(Z, C)`` non-negative ~= ``s @ f``, ``s`` ``(Z, k)`` and ``f`` ``(k, C)``
    non-negative: Lee & Seung's multiplicative updates for the Frobenius error, from a seeded
    uniform start scaled to ``v``'s mean (scikit-learn's ``init="random"`` scale), so the result
    depends only on ``v``, ``k`` and ``seed``. Stops after ``iterations``, or when the error
    improved by less than ``tol`` (relative) over 10 iterations."""
    z, c = v.shape
    rng = np.random.default_rng(seed)
    scale = np.sqrt(max(float(v.mean()), 0.0) / k)
    s = rng.random((z, k)) * scale
    f = rng.random((k, c)) * scale
    last = np.inf
    for it in range(iterations):
        f *= (s.T @ v) / np.maximum(s.T @ s @ f, _TINY)
        s *= (v @ f.T) / np.maximum(s @ (f @ f.T), _TINY)
        if it % 10 == 9:
            err = float(np.linalg.norm(v - s @ f))
            if last - err <= tol * max(last if np.isfinite(last) else err, _TINY):
                break
            last = err
    return s, f


@register
class DFF(CAMMethod):
    """Deep Feature Factorization: the layer's activations split into ``k`` concepts by
    non-negative matrix factorization; the map shows the concept that supports the explained
    class most.

    Collins, Achanta & Süsstrunk, "Deep Feature Factorization For Concept Discovery", ECCV 2018;
    pytorch-grad-cam's ``DeepFeatureFactorization``.

    For each sample, ``V`` = ``A`` reshaped to ``(Z, C)`` (non-negative; see below) is factorized
    as ``V ~= S F`` with ``S`` ``(Z, k)`` the concepts' spatial maps and ``F`` ``(k, C)`` their
    channel vectors (:func:`nmf`), each ``F_j`` scaled to unit length and the concepts ordered
    by total presence ``sum_z S[z, j]``, largest first.

    Which concept is shown: where the layer feeds global average pooling and one Dense layer
    (CAM's head, kernel ``W`` ``(C, classes)``), concept ``j``'s share of class ``c``'s logit is
    ``mean_z S[z, j] * (F_j . W[:, c])`` (exact when ``V = S F``: the logit is the sum of the
    shares, plus the bias); the map is ``S[:, j]`` of the concept with the largest share of the
    explained class. Without such a head (or for a target that is not a class), the map is the
    first (largest) concept's and ``details["head"]`` says why.

    ``Explanation.details`` (per site): ``"concept_maps"`` ``(N, k, h, w)``, ``"concepts"``
    ``(N, k, C)``, ``"chosen"`` ``(N,)`` the concept shown, ``"reconstruction_error"`` ``(N,)``
    ``|V - S F| / |V|``, and with a head ``"class_shares"`` ``(N, k, classes)`` and
    ``"top_classes"`` ``(N, k, min(5, classes))`` (each concept's classes by share, largest
    first); without one ``"head"``, the reason.

    Deliberate differences from pytorch-grad-cam:

    * one factorization per image, not one over the whole batch: a batch gives what its images
      give one by one, as every camlens method (the paper also factorizes one image, or a set
      of images jointly for co-segmentation).
    * numpy multiplicative updates from a seeded start (``seed=0``), where pytorch-grad-cam
      calls scikit-learn's coordinate-descent NMF: no scikit-learn needed, and the same maps on
      every machine. NMF is not unique, so the two agree on concepts that are there to find
      (a planted factorization, tested), not to the digit on every layer.
    * negative activations (a layer before its ReLU): each channel's minimum over the image is
      subtracted first (pytorch-grad-cam's shift, and its bias term is left out of the shares);
      pytorch-grad-cam subtracts it also from non-negative activations, camlens does not,
      which is the paper's factorization of the ReLU output.
    * the classes a concept supports are ranked by its share of each logit (above), where
      pytorch-grad-cam runs the Dense layer on the concept vectors ``F_j + shift``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import DFF, SiteData
        >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, :, 0] = 1; A[0, 1, :, 1] = 3   # two planted concepts
        >>> W = np.array([[1.0, 0.0], [0.0, 1.0]])        # class c reads channel c
        >>> raw, info = DFF(k=2).map_and_details(SiteData(A, head_weights=W[:, [0]].T, head_kernel=W))
        >>> np.round(raw[0] / raw[0].max(), 3).tolist(), info["top_classes"][0].tolist()
        ([[1.0, 1.0], [0.0, 0.0]], [[1, 0], [0, 1]])
    """

    name = "dff"
    needs_gradients = False
    cost = "a non-negative matrix factorization per image"

    def __init__(self, k: int = 5, iterations: int = 500, seed: int = 0) -> None:
        self.k = positive_int(self.name, "k", k)
        self.iterations = positive_int(self.name, "iterations", iterations)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"dff: seed must be a whole number (the NMF's start); got {seed!r}")
        self.seed = int(seed)

    def __call__(self, data: SiteData) -> np.ndarray:
        return self.map_and_details(data)[0]

    def _head(self, data: SiteData) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        """``(explained class weights (N, C), kernel (C, classes), why not)``."""
        try:
            weights, kernel = data.head_weights, data.head_kernel
        except ValueError as err:  # the model has no GAP + Dense head, or the target is no class
            return None, None, f"no class ranking ({err}); the map is the largest concept's"
        if weights is None:
            return None, None, "no GlobalAveragePooling + Dense head was given; the map is the largest concept's"
        return np.asarray(weights, dtype=np.float64), None if kernel is None else np.asarray(kernel, np.float64), None

    def map_and_details(self, data: SiteData) -> tuple[np.ndarray, dict]:
        acts, _ = self._checked(data)
        if not np.isfinite(acts).all():
            raise ValueError(f"{self.name}: the activations contain NaN or inf")
        n, h, w, c = acts.shape
        k = self.k
        if k > min(h * w, c):
            raise ValueError(
                f"dff: k={k} concepts cannot be found in a {h}x{w} map of {c} channels (at most "
                f"{min(h * w, c)}); pass DFF(k=...) with fewer concepts or choose a larger layer"
            )
        weights, kernel, why = self._head(data)
        maps = np.zeros((n, k, h, w), np.float32)
        concepts = np.zeros((n, k, c), np.float32)
        chosen = np.zeros(n, np.int64)
        error = np.zeros(n, np.float64)
        shares = None if kernel is None else np.zeros((n, k, kernel.shape[1]))
        for i in range(n):
            v = acts[i].reshape(h * w, c).astype(np.float64)
            low = v.min(axis=0)
            if (low < 0).any():
                v = v - np.minimum(low, 0.0)  # only channels that go negative are shifted
            s, f = nmf(v, k, self.iterations, seed=self.seed)
            norms = np.linalg.norm(f, axis=1)
            f = np.divide(f, norms[:, None], out=np.zeros_like(f), where=norms[:, None] > 0)
            s = s * norms
            order = np.argsort(-s.sum(axis=0), kind="stable")
            s, f = s[:, order], f[order]
            total = float(np.linalg.norm(v))
            error[i] = float(np.linalg.norm(v - s @ f)) / total if total > 0 else 0.0
            maps[i] = s.T.reshape(k, h, w)
            concepts[i] = f
            presence = s.mean(axis=0)
            if weights is not None:
                chosen[i] = int(np.argmax(presence * (f @ weights[i])))
            if shares is not None and kernel is not None:
                shares[i] = presence[:, None] * (f @ kernel)
        details: dict = {"concept_maps": maps, "concepts": concepts, "chosen": chosen,
                         "reconstruction_error": error}
        if shares is not None:
            top = min(5, shares.shape[2])
            details["class_shares"] = shares.astype(np.float32)
            details["top_classes"] = np.argsort(-shares, axis=2, kind="stable")[:, :, :top]
        if why is not None:
            details["head"] = why
        return maps[np.arange(n), chosen], details
