"""Gradient times input difference: Input x Gradient and GradientSHAP.

Notation as in :mod:`camlens.methods.pixel`: ``x`` sample ``n``'s image ``(H, W, c)``, ``S`` its
target score, ``dS/dx`` the gradient from :attr:`PixelData.gradient`. Both are signed and
summed over channels (``reduce="sum"``), as captum's attributions are usually summed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._args import non_negative, positive_int, seed_or_none
from .base import PixelData, PixelMethod, noise_key, register
from .pixel import _grad, _gradient_fn, _images, per_image_gradients

__all__ = ["InputXGradient", "GradientShap"]

#: ``draws(n, image, k) -> (baseline_index (k,), noise (k, H, W, c), alpha (k,))``
Draws = Callable[[int, np.ndarray, int], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


@register
class InputXGradient(PixelMethod):
    """Input x Gradient: each input value times the score's gradient there.

    Shrikumar et al., "Not Just a Black Box: Learning Important Features Through Propagating
    Activation Differences", arXiv 2016 (the "gradient * input" baseline of DeepLIFT, ICML
    2017); captum's ``InputXGradient``.

    attributions ``= x * dS/dx`` (signed); map ``= sum_c attributions``. For a linear score
    ``S = sum(w * x)`` the attributions are exactly ``w * x``. One gradient pass per image.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import InputXGradient, PixelData
        >>> x = np.array([[[[1.0, 2.0], [-1.0, 0.5]]]])            # one 1x2 image, c = 2
        >>> w = np.array([[[3.0, -1.0], [2.0, 4.0]]])
        >>> grad = lambda n, b: ((b * w).sum(axis=(1, 2, 3)), np.broadcast_to(w, b.shape))
        >>> InputXGradient()(PixelData(x, None, grad)).tolist()    # sum_c w * x
        [[[1.0, 0.0]]]
    """

    name = "inputxgradient"
    needs_gradients = True
    gradient_at_image = True
    signed = True
    reduce = "sum"

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        return per_image_gradients(self, data, lambda x, g: x * g)


@register
class GradientShap(PixelMethod):
    """GradientSHAP: the expected gradient between baselines drawn from a distribution and a
    noisy copy of the image, times their difference.

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017 (the
    expected-gradients form of Erion et al., Nature Machine Intelligence 2021); captum's
    ``GradientShap``.

    For ``k = 1..K`` (``K = n_samples``): a baseline ``b_k`` drawn uniformly from
    ``baselines``, noise ``e_k ~ N(0, stdevs^2)`` per input value, ``a_k ~ U(0, 1)``,
    ``x_k = x + e_k``; attributions
    ``= (1/K) sum_k (x_k - b_k) * dS/dx (b_k + a_k (x_k - b_k))`` (signed); map
    ``= sum_c attributions``. As in captum, the noisy ``x_k`` (not ``x``) multiplies the
    gradient: with ``stdevs=0`` (the default, captum's too) they are the same. For a linear
    score ``S = sum(w * x)`` and one baseline ``b`` the attributions are exactly
    ``w * (x - b)`` whatever the draws.

    ``baselines``: ``None`` (one black image, all zeros), a number, one ``(H, W, c)`` image or
    a distribution ``(B, H, W, c)`` of them (unlike Integrated Gradients' ``baseline``, a
    4-d array is a set to draw from, not one baseline per sample).

    Draws: ``seed=0`` by default; each image's draws (baseline indices, then noise, then
    alphas) come from ``np.random.default_rng(SeedSequence(noise_key(seed, x)))``, so a batch
    equals its images one by one and ``batch_size`` (gradients taken that many copies at a
    time) changes nothing; ``seed=None``: fresh draws per call. ``draws`` replaces them:
    ``draws(n, image, K) -> (baseline_index (K,), noise (K, H, W, c), alpha (K,))``, e.g. to
    reproduce another library's random numbers (the parity test does so for captum's).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GradientShap, PixelData
        >>> x = np.array([[[[1.0], [-2.0]]]]); w = np.array([3.0, 1.0])[None, :, None]
        >>> grad = lambda n, b: ((b * w).sum(axis=(1, 2, 3)), np.broadcast_to(w, b.shape))
        >>> a, _ = GradientShap(baselines=0.5).attribute(PixelData(x, None, grad))
        >>> a[0, 0, :, 0].tolist()                                  # w * (x - b)
        [1.5, -2.5]
    """

    name = "gradientshap"
    cost = "16 gradient passes"
    needs_gradients = True
    signed = True
    reduce = "sum"

    def __init__(
        self,
        baselines: float | np.ndarray | None = None,
        n_samples: int = 16,
        stdevs: float = 0.0,
        seed: int | None = 0,
        batch_size: int = 32,
        draws: Draws | None = None,
    ) -> None:
        self.baselines = baselines
        self.n_samples = positive_int(self.name, "n_samples", n_samples)
        self.stdevs = non_negative(self.name, "stdevs", stdevs)
        self.seed = seed_or_none(self.name, seed)
        self.batch_size = positive_int(self.name, "batch_size", batch_size)
        if draws is not None and not callable(draws):
            raise TypeError(f"{self.name}: draws must be a callable (n, image, k) -> (index, noise, alpha); got {draws!r}")
        self.draws = draws

    def distribution(self, image_shape: tuple[int, ...]) -> np.ndarray:
        """``(B, H, W, c)`` the baselines to draw from for images of ``image_shape``."""
        if self.baselines is None:
            return np.zeros((1, *image_shape), dtype=np.float32)
        base = np.asarray(self.baselines, dtype=np.float32)
        if base.ndim == len(image_shape) + 1 and len(base):
            base_one = base[0]
        else:
            base_one, base = base, base[None]
        try:
            np.broadcast_to(base_one, image_shape)
        except ValueError:
            raise ValueError(
                f"{self.name}: baselines of shape {np.shape(self.baselines)} do not fit images of "
                f"shape {image_shape}; give a number, an (H, W, c) = {image_shape} image or a "
                f"distribution (B, H, W, c) of them"
            ) from None
        return np.broadcast_to(base, (len(base), *image_shape)).astype(np.float32)

    def _draw(self, n: int, image: np.ndarray, n_base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.n_samples
        if self.draws is not None:
            idx, noise, alpha = self.draws(n, image, k)
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            noise = np.asarray(noise, dtype=np.float64)
            alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
            if idx.shape != (k,) or alpha.shape != (k,) or noise.shape != (k, *image.shape):
                raise ValueError(
                    f"{self.name}: draws must return index ({k},), noise {(k, *image.shape)} and "
                    f"alpha ({k},); got {idx.shape}, {noise.shape}, {alpha.shape}"
                )
            if idx.min() < 0 or idx.max() >= n_base:
                raise ValueError(f"{self.name}: draws gave baseline indices outside 0..{n_base - 1}")
            return idx, noise, alpha
        rng = np.random.default_rng(np.random.SeedSequence(noise_key(self.seed, image)))
        idx = rng.integers(0, n_base, k)
        noise = rng.standard_normal((k, *image.shape)) * self.stdevs
        alpha = rng.random(k)
        return idx, noise, alpha

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        fn = _gradient_fn(self, data)
        bases = self.distribution(images.shape[1:]).astype(np.float64)
        out = np.empty(images.shape, dtype=np.float32)
        for n, image in enumerate(images):
            idx, noise, alpha = self._draw(n, image, len(bases))
            total = np.zeros(image.shape)
            for start in range(0, self.n_samples, self.batch_size):
                part = slice(start, start + self.batch_size)
                x_k = image.astype(np.float64) + noise[part]
                diff = x_k - bases[idx[part]]
                a = alpha[part, None, None, None]
                # float32 like the model's own inputs; the difference stays float64
                _, g = _grad(fn, n, (bases[idx[part]] + a * diff).astype(np.float32))
                total += (diff * g).sum(axis=0)
            out[n] = total / self.n_samples
        return out, {"n_samples": np.full(len(images), self.n_samples)}
