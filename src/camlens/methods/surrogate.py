"""Local surrogate models over superpixels: LIME and KernelSHAP.

Notation: ``x`` sample ``n``'s image ``(H, W, c)``, ``S`` its target score
(:attr:`PixelData.score`). The image is cut into ``M`` features (superpixels, or the cells of a
grid); a coalition ``z`` in ``{0, 1}^M`` keeps the features where ``z = 1`` and sets the others to
``fill``, giving the image ``h(z)``. Both methods score ``h(z)`` for many ``z`` (built and scored
``batch_size`` at a time, never all at once) and fit a linear model ``S(h(z)) ~ b + sum_i phi_i
z_i``; every pixel of feature ``i`` gets ``phi_i``: attributions ``(N, H, W, 1)``, signed.

Features (``segments``):

- ``"slic"`` (the default): scikit-image's SLIC superpixels (Achanta et al., TPAMI 2012) of the
  image scaled to [0, 1] (CIELAB for 3 channels, scikit-image's default), about ``n_segments``
  (50) of them at ``compactness`` (10); needs ``pip install scikit-image`` (imported only when
  used). An image SLIC leaves in one piece (noise-like images can be) is refused with the fix.
- ``"grid"``: a regular ``grid`` x ``grid`` (8 x 8; or ``(rows, cols)``) of cells; needs
  nothing, and the features are the same for every image.
- an integer array ``(H, W)`` (the same for every image) or ``(N, H, W)``: your own mask.

``details``: ``segments`` ``(N, H, W)`` (features numbered from 0), ``weights`` (one array of the
``M`` coefficients per image), ``n_runs`` (model runs per image).
"""

from __future__ import annotations

from math import comb
from typing import Any, Callable

import numpy as np

from .._args import non_negative, positive_int, seed_or_none
from .base import PixelData, PixelMethod, noise_key, register

__all__ = ["Lime", "KernelShap", "segment"]

#: ``coalitions(n, image, n_features, n_samples) -> (n_samples, n_features)`` of 0 / 1
Coalitions = Callable[[int, np.ndarray, int, int], np.ndarray]


def _grid_labels(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    H, W = size
    gh, gw = min(grid[0], H), min(grid[1], W)
    rows = np.arange(H) * gh // H
    cols = np.arange(W) * gw // W
    return rows[:, None] * gw + cols[None, :]


def _slic(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise ImportError(
            "segments='slic' needs scikit-image: pip install scikit-image, or use "
            "segments='grid' (a regular grid of cells, no extra package)"
        ) from None
    lo, hi = float(image.min()), float(image.max())
    # SLIC's compactness is relative to the colour range: model inputs are often normalised
    # to any range, so the image is scaled to [0, 1] first
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    labels = np.asarray(slic(scaled.astype(np.float64), n_segments=n_segments, compactness=compactness,
                             start_label=0, channel_axis=-1))
    if labels.max() == labels.min():
        # one feature explains nothing: every pixel would get the same value
        raise ValueError(
            f"SLIC found a single superpixel in an image (a noise-like one, often) at compactness "
            f"{compactness}; use segments='grid' or a higher compactness (e.g. compactness=100)"
        )
    return labels


def segment(images: np.ndarray, segments: Any = "slic", grid: int | tuple[int, int] = 8,
            n_segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """``(N, H, W)`` int feature labels, numbered ``0..M-1`` per image, of ``images``
    ``(N, H, W, c)`` by ``segments`` (see the module's docstring)."""
    N, H, W = images.shape[:3]
    if isinstance(segments, str):
        if segments == "grid":
            g = (grid, grid) if np.isscalar(grid) else tuple(grid)  # type: ignore[arg-type]
            if len(g) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in g):
                raise ValueError(f"grid must be a positive int or a pair (rows, cols); got {grid!r}")
            raw = np.broadcast_to(_grid_labels((H, W), (int(g[0]), int(g[1]))), (N, H, W))
        elif segments == "slic":
            raw = np.stack([_slic(im, n_segments, compactness) for im in images])
        else:
            raise ValueError(f"segments must be 'slic', 'grid' or an integer array (H, W) or (N, H, W); got {segments!r}")
    else:
        raw = np.asarray(segments)
        if raw.shape not in ((H, W), (N, H, W)) or not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(
                f"segments array must hold integers of shape (H, W) = {(H, W)} or (N, H, W) = "
                f"{(N, H, W)}; got {raw.dtype} {raw.shape}"
            )
        raw = np.broadcast_to(raw, (N, H, W))
    out = np.empty((N, H, W), dtype=np.int32)
    for n in range(N):  # numbered 0..M-1 with no gaps: M coefficients, none always absent
        out[n] = np.unique(raw[n], return_inverse=True)[1].reshape(H, W)
    return out


class _Surrogate(PixelMethod):
    """What LIME and KernelSHAP share: features, fill, scoring coalitions in chunks."""

    needs_gradients = False
    signed = True
    reduce = "sum"

    def __init__(
        self,
        n_samples: int = 256,
        segments: Any = "slic",
        grid: int | tuple[int, int] = 8,
        n_segments: int = 50,
        fill: float | str = 0.0,
        seed: int | None = 0,
        batch_size: int = 32,
        coalitions: Coalitions | None = None,
        compactness: float = 10.0,
    ) -> None:
        self.n_samples = positive_int(self.name, "n_samples", n_samples)
        self.segments = segments
        self.grid = grid
        self.n_segments = positive_int(self.name, "n_segments", n_segments)
        self.compactness = non_negative(self.name, "compactness", compactness)
        if isinstance(fill, str) and fill != "mean":
            raise ValueError(f"{self.name}: fill must be a number or 'mean'; got {fill!r}")
        self.fill = fill
        self.seed = seed_or_none(self.name, seed)
        self.batch_size = positive_int(self.name, "batch_size", batch_size)
        if coalitions is not None and not callable(coalitions):
            raise TypeError(f"{self.name}: coalitions must be a callable (n, image, n_features, n_samples) -> array; got {coalitions!r}")
        self.coalitions = coalitions

    def _given(self, n: int, image: np.ndarray, m: int) -> np.ndarray | None:
        if self.coalitions is None:
            return None
        z = np.asarray(self.coalitions(n, image, m, self.n_samples))
        if z.shape != (self.n_samples, m) or not np.isin(z, (0, 1)).all():
            raise ValueError(f"{self.name}: coalitions must return 0 / 1 of shape ({self.n_samples}, {m}); got {z.shape}")
        return z.astype(np.float64)

    def _rng(self, image: np.ndarray) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(noise_key(self.seed, image)))

    def _score(self, data: PixelData, n: int, image: np.ndarray, labels: np.ndarray,
               z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(K,)`` of ``h(z)`` for each row of ``z`` ``(K, M)``, and each ``h(z)``'s cosine
        similarity to ``x``."""
        fill = image.mean(axis=(0, 1)) if self.fill == "mean" else np.float32(self.fill)
        scores, cos = np.empty(len(z)), np.empty(len(z))
        flat = image.reshape(-1).astype(np.float64)
        for start in range(0, len(z), self.batch_size):
            keep = z[start : start + self.batch_size][:, labels].astype(bool)[..., None]  # (B, H, W, 1)
            batch = np.where(keep, image[None], fill).astype(np.float32)
            s = np.asarray(data.score(n, batch), dtype=np.float64).reshape(-1)
            if s.shape != (len(batch),):
                raise ValueError(f"score of {len(batch)} copies returned {s.size} values")
            scores[start : start + len(batch)] = s
            rows = batch.reshape(len(batch), -1).astype(np.float64)
            norms = np.maximum(np.linalg.norm(rows, axis=1), 1e-8) * max(np.linalg.norm(flat), 1e-8)
            cos[start : start + len(batch)] = rows @ flat / norms
        return scores, cos

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = np.asarray(data.images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"{self.name}: images must be (N, H, W, c); got shape {images.shape}")
        labels = segment(images, self.segments, self.grid, self.n_segments, self.compactness)
        out = np.empty((*images.shape[:3], 1), dtype=np.float32)
        weights, runs, extra = [], np.empty(len(images), dtype=np.int64), {}
        for n, image in enumerate(images):
            m = int(labels[n].max()) + 1
            phi, facts, n_runs = self.explain_one(data, n, image, labels[n], m)
            out[n, ..., 0] = phi[labels[n]]
            weights.append(phi.astype(np.float32))
            runs[n] = n_runs
            for key, value in facts.items():
                extra.setdefault(key, np.empty(len(images)))[n] = value
        return out, {"segments": labels, "weights": weights, "n_runs": runs, **extra}

    def explain_one(self, data: PixelData, n: int, image: np.ndarray, labels: np.ndarray,
                    m: int) -> tuple[np.ndarray, dict[str, float], int]:
        raise NotImplementedError


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """``(coef, intercept)`` minimising ``sum_k w_k (y_k - b - z_k . coef)^2 + alpha |coef|^2``
    (the intercept ``b`` not penalised): scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``
    in closed form, by weighted centring."""
    w = np.asarray(w, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        return np.zeros(z.shape[1]), 0.0
    zm, ym = w @ z / total, w @ y / total
    zc, yc = z - zm, y - ym
    gram = zc.T @ (zc * w[:, None]) + alpha * np.eye(z.shape[1])
    coef = np.linalg.lstsq(gram, zc.T @ (w * yc), rcond=None)[0]
    return coef, float(ym - zm @ coef)


@register
class Lime(_Surrogate):
    """LIME: a linear model of the score on which superpixels are kept, fitted to random
    coalitions weighted by how close their images are to ``x``.

    Ribeiro et al., "'Why Should I Trust You?': Explaining the Predictions of Any Classifier",
    KDD 2016; captum's ``Lime``.

    ``K = n_samples`` (256) coalitions ``z_k``, each feature kept with probability 1/2; weights
    ``pi_k = exp(-d_k^2 / (2 kernel_width^2))`` with ``d_k = 1 - cos(x, h(z_k))`` the cosine
    distance of the flattened images (captum's default similarity, ``kernel_width=1``); then
    ridge regression (``alpha=1``, intercept unpenalised: the ``lime`` package's default
    surrogate) of ``S(h(z_k))`` on ``z_k`` weighted by ``pi_k``, solved in closed form with
    numpy. ``details``: ``intercept`` per image and the common ones. ``K`` model runs per
    image.

    Deliberate differences: captum's default surrogate is Lasso (``alpha=0.01``, through
    scikit-learn); camlens fits ridge, which has a closed form (no scikit-learn at run time)
    and keeps every superpixel's weight instead of zeroing most of them (equal to captum with
    ``interpretable_model=SkLearnRidge(alpha=1.0)``: the parity test). The ``lime`` package
    measures the cosine distance between the binary ``z`` vectors with ``kernel_width=0.25``;
    camlens follows captum (distance between the images), so the weights see how much of the
    image a coalition hides. Draws: ``seed=0``, from :func:`~camlens.methods.base.noise_key`
    of the seed and the image (a batch equals its images one by one); ``coalitions`` replaces
    them with your own ``(n, image, M, K) -> (K, M)`` 0 / 1 array.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import Lime, PixelData
        >>> x = np.ones((1, 2, 2, 1)); score = lambda n, b: b[:, 0, :, 0].sum(axis=1) * 3
        >>> a, info = Lime(segments="grid", grid=2, n_samples=64, alpha=1e-9).attribute(PixelData(x, score))
        >>> (np.round(a[0, ..., 0], 6) + 0.0).tolist()            # 3 per kept top pixel
        [[3.0, 3.0], [0.0, 0.0]]
    """

    name = "lime"
    cost = "256 model runs per image"

    def __init__(
        self,
        n_samples: int = 256,
        segments: Any = "slic",
        grid: int | tuple[int, int] = 8,
        n_segments: int = 50,
        fill: float | str = 0.0,
        alpha: float = 1.0,
        kernel_width: float = 1.0,
        seed: int | None = 0,
        batch_size: int = 32,
        coalitions: Coalitions | None = None,
        compactness: float = 10.0,
    ) -> None:
        super().__init__(n_samples, segments, grid, n_segments, fill, seed, batch_size, coalitions, compactness)
        self.alpha = non_negative(self.name, "alpha", alpha)
        self.kernel_width = non_negative(self.name, "kernel_width", kernel_width)
        if self.kernel_width == 0:
            raise ValueError(f"{self.name}: kernel_width must be above 0 (captum's default is 1.0); got 0")

    def explain_one(self, data: PixelData, n: int, image: np.ndarray, labels: np.ndarray,
                    m: int) -> tuple[np.ndarray, dict[str, float], int]:
        z = self._given(n, image, m)
        if z is None:
            z = (self._rng(image).random((self.n_samples, m)) < 0.5).astype(np.float64)
        scores, cos = self._score(data, n, image, labels, z)
        pi = np.exp(-((1.0 - cos) ** 2) / (2 * self.kernel_width**2))
        coef, intercept = weighted_ridge(z, scores, pi, self.alpha)
        return coef, {"intercept": intercept}, len(z)


@register
class KernelShap(_Surrogate):
    """KernelSHAP: Shapley values of the superpixels, as the weighted linear regression whose
    weights are the Shapley kernel.

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017;
    captum's ``KernelShap``.

    ``f(z) = S(h(z))``; the Shapley kernel weighs a coalition of ``|z| = k`` of ``M`` features
    by ``(M - 1) / (C(M, k) k (M - k))``. With ``2^M - 2 <= n_samples`` every coalition is
    enumerated with that weight (the values are then the exact Shapley values of ``f``);
    otherwise ``K = n_samples`` (256) coalitions are drawn as captum does (``k`` with
    probability proportional to ``(M - 1) / (k (M - k))``, then ``k`` features uniformly), each
    of weight 1. The fit is the weighted least squares of ``f(z) - f(0)`` on ``z`` under the
    constraint ``sum_i phi_i = f(1) - f(0)`` (the paper's efficiency property), solved exactly
    by eliminating one coefficient. For a score that is linear in the kept features,
    ``phi_i`` is exactly feature ``i``'s term. ``K + 2`` model runs per image (``f(0)`` and
    ``f(1)``); ``details``: ``base_score`` ``f(0)``, ``full_score`` ``f(1)``.

    Deliberate differences from captum: captum puts weight 10^6 on ``f(0)`` and ``f(1)`` in an
    unconstrained regression with an intercept (close to, not exactly, the constraint), and
    never enumerates. Draws: as :class:`Lime` (``seed``, ``coalitions``: given coalitions are
    taken as drawn from the kernel, weight 1 each).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import KernelShap, PixelData
        >>> x = np.array([[[[1.0], [2.0]]]]); score = lambda n, b: 5 * b[:, 0, 0, 0] * b[:, 0, 1, 0]
        >>> a, info = KernelShap(segments="grid", grid=(1, 2)).attribute(PixelData(x, score))
        >>> a[0, 0, :, 0].tolist(), info["n_runs"].tolist()       # the product's 10 split evenly
        ([5.0, 5.0], [4])
    """

    name = "kernelshap"
    cost = "256 model runs per image"

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """``(n_samples, m)`` coalitions drawn from the Shapley kernel (``m >= 2``)."""
        k = np.arange(1, m)
        p = (m - 1) / (k * (m - k))
        sizes = rng.choice(k, size=self.n_samples, p=p / p.sum())
        z = np.zeros((self.n_samples, m))
        for row, size in zip(z, sizes):
            row[rng.permutation(m)[:size]] = 1.0
        return z

    def explain_one(self, data: PixelData, n: int, image: np.ndarray, labels: np.ndarray,
                    m: int) -> tuple[np.ndarray, dict[str, float], int]:
        z = self._given(n, image, m)
        if z is not None:
            w = np.ones(len(z))
        elif m == 1:
            z, w = np.zeros((0, 1)), np.zeros(0)
        elif 2**m - 2 <= self.n_samples:
            z = ((np.arange(1, 2**m - 1)[:, None] >> np.arange(m)) & 1).astype(np.float64)
            k = z.sum(axis=1).astype(int)
            w = (m - 1) / (np.array([comb(m, int(j)) for j in k]) * k * (m - k))
        else:
            z, w = self.draw(self._rng(image), m), np.ones(self.n_samples)
        ends = np.stack([np.zeros(m), np.ones(m)])
        scores, _ = self._score(data, n, image, labels, np.concatenate([ends, z]))
        f0, f1, y = scores[0], scores[1], scores[2:]
        phi = shapley_fit(z, y - f0, w, f1 - f0)
        return phi, {"base_score": f0, "full_score": f1}, len(scores)


def shapley_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float) -> np.ndarray:
    """``phi`` minimising ``sum_k w_k (y_k - z_k . phi)^2`` subject to ``sum(phi) = total``."""
    m = z.shape[1]
    if m == 1 or len(z) == 0:
        return np.full(m, total / m) if m == 1 else np.zeros(m)
    # phi_last = total - sum(phi_rest): the constraint holds exactly, the rest is least squares
    a = (z[:, :-1] - z[:, -1:]) * np.sqrt(w)[:, None]
    b = (y - z[:, -1] * total) * np.sqrt(w)
    rest = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.append(rest, total - rest.sum())
