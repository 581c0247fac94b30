"""Grad-CAM++ and Smooth Grad-CAM++."""

from __future__ import annotations

import numpy as np

from .._args import non_negative, positive_int, seed_or_none
from .base import CAMMethod, SiteData, WeightedCAM, channel_sum_or_principal, eigen_smooth_flag, noise_key, register

__all__ = ["plusplus_weights", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus"]


def plusplus_weights(acts: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray) -> np.ndarray:
    """Grad-CAM++ channel weights ``(N, C)`` from ``(N, h, w, C)`` activations and the first,
    second and third derivative terms (for Grad-CAM++ ``G``, ``G^2``, ``G^3``)::

        alpha = d2 / (2 d2 + (sum_ab A[n, a, b, c]) d3),   w[n, c] = sum_ij alpha relu(d1)

    with ``alpha = 0`` where the denominator is 0.
    """
    denom = 2.0 * d2 + acts.sum(axis=(1, 2), keepdims=True) * d3
    # A zero denominator only comes with G = 0 or a cancelling activation sum; no epsilon,
    # which would bias every other alpha.
    alpha = np.divide(d2, denom, out=np.zeros_like(d2), where=denom != 0)
    return (alpha * np.maximum(d1, 0.0)).sum(axis=(1, 2))


@register
class GradCAMPlusPlus(WeightedCAM):
    """Grad-CAM++: positive gradients weighted per position by ``alpha``.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations for Deep
    Convolutional Networks", WACV 2018.

    With the paper's exponential score ``exp(S)``, its second and third derivatives are powers
    of ``G``, which gives the closed form (``sum_ab A`` is the spatial sum of channel ``c``)::

        alpha[n, i, j, c] = G^2 / (2 G^2 + (sum_ab A[n, a, b, c]) G^3)
        w[n, c]           = sum_ij alpha[n, i, j, c] relu(G[n, i, j, c])

    where ``G`` stands for ``G[n, i, j, c]``, and ``alpha = 0`` where the denominator is 0.

    map ``= relu(sum_c w[n, c] A[n, :, :, c])``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GradCAMPlusPlus, SiteData
        >>> A = np.eye(2)[None, :, :, None]                    # channel sum 2
        >>> G = np.array([[1.0, 1.0], [0.0, 0.0]])[None, :, :, None]
        >>> GradCAMPlusPlus()(SiteData(A, G))[0].tolist()       # alpha = 1/(2+2), w = 2 * 1/4
        [[0.5, 0.0], [0.0, 0.5]]
    """

    name = "gradcam++"

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        assert grads is not None
        g2 = grads * grads
        return plusplus_weights(acts, grads, g2, g2 * grads)


@register
class SmoothGradCAMPlusPlus(CAMMethod):
    """Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of the image.

    Omeiza, Speakman, Cintas and Weldemariam, "Smooth Grad-CAM++: An Enhanced Inference Level
    Visualization Technique for Deep Convolutional Neural Network Models", arXiv:1908.01224,
    2019 (the noise of SmoothGrad, Smilkov et al. 2017).

    ``x_m = x + eps_m`` for ``m = 1..M`` (``M = n_samples``), ``eps_m`` Gaussian with standard
    deviation ``sigma * (max x - min x)``, the range of sample ``n``'s image; ``A_m``, ``G_m``
    the layer's activations and gradients on ``x_m``. The paper's averages::

        D1 = mean_m G_m,   D2 = mean_m G_m^2,   D3 = mean_m G_m^3,   Ā = mean_m A_m

    go into the Grad-CAM++ formula (:func:`plusplus_weights`) in place of ``G``, ``G^2``,
    ``G^3`` and ``A``: ``alpha = D2 / (2 D2 + (sum_ab Ā) D3)``, ``w = sum_ij alpha relu(D1)``,
    map ``= relu(sum_c w_c Ā_c)``. camlens averages the activations over the same copies, so
    the map and its weights describe the same smoothed model. With ``sigma = 0`` it is
    Grad-CAM++ exactly. Defaults: ``n_samples = 8`` (the paper shows more, at one backward
    pass each), ``sigma = 0.15`` (15% of the value range, within SmoothGrad's advice of
    10-20%). Copies are captured ``batch_size`` at a time; each copy's noise comes from its own
    stream, ``SeedSequence(noise_key(seed, x), spawn_key=(copy,))``, keyed by the seed (0 by
    default) and the image's content (:func:`camlens.methods.base.noise_key`), never by the
    sample's place in the batch: a batch equals its images one by one, and ``batch_size``
    changes nothing. ``seed=None``: fresh noise per call.

    ``eigen_smooth=True`` (as pytorch-grad-cam's ``eigen_smooth`` of the other CAMs): the
    weighted averaged activations ``w_c Ā_c`` are projected onto their first principal
    component instead of summed over channels (centred per channel, relu), oriented to
    correlate positively with the unsmoothed map.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import SiteData, SmoothGradCAMPlusPlus
        >>> A = np.eye(2)[None, :, :, None]
        >>> G = np.array([[1.0, 1.0], [0.0, 0.0]])[None, :, :, None]
        >>> capture = lambda n, batch: (A.repeat(len(batch), 0), G.repeat(len(batch), 0))
        >>> data = SiteData(A, images=np.zeros((1, 2, 2, 3)), capture=capture)
        >>> SmoothGradCAMPlusPlus(seed=0)(data)[0].tolist()    # the same G on every copy
        [[0.5, 0.0], [0.0, 0.5]]
    """

    name = "smoothgradcam++"
    needs_gradients = False

    def __init__(
        self, n_samples: int = 8, sigma: float = 0.15, seed: int | None = 0, batch_size: int = 8,
        eigen_smooth: bool = False,
    ) -> None:
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)
        self.n_samples = positive_int(self.name, "n_samples", n_samples)
        self.sigma = non_negative(self.name, "sigma", sigma)
        self.seed = seed_or_none(self.name, seed)
        self.batch_size = positive_int(self.name, "batch_size", batch_size)

    def noisy_copies(self, image: np.ndarray, copies: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
        """``(B, H, W, c)`` copies of ``image`` with noise ``copies[b]`` added; ``key`` is the
        image's :func:`~camlens.methods.base.noise_key`."""
        std = np.float32(self.sigma * float(image.max() - image.min()))
        noise = np.stack(
            [
                np.random.default_rng(np.random.SeedSequence(key, spawn_key=(int(m),)))
                .standard_normal(image.shape, dtype=np.float32)
                for m in copies
            ]
        )
        return image[None] + std * noise

    def smoothed(self, data: SiteData, n: int) -> tuple[np.ndarray, ...]:
        """``(Ā, D1, D2, D3)`` of sample ``n``, each ``(h, w, C)`` float32."""
        assert data.images is not None and data.capture is not None
        image = np.asarray(data.images[n], dtype=np.float32)
        key = noise_key(self.seed, image)
        shape = np.shape(data.activations)[1:]
        # Float64 sums: with identical copies (sigma = 0) the means are the values exactly.
        sums = [np.zeros(shape, dtype=np.float64) for _ in range(4)]
        for start in range(0, self.n_samples, self.batch_size):
            copies = np.arange(start, min(start + self.batch_size, self.n_samples))
            acts, grads = data.capture(n, self.noisy_copies(image, copies, key))
            acts = np.asarray(acts, dtype=np.float32)
            grads = np.asarray(grads, dtype=np.float32)
            want = (len(copies), *shape)
            if acts.shape != want or grads.shape != want:
                raise ValueError(
                    f"{self.name}: capture(n, batch) must return activations and gradients of "
                    f"shape {want}; got {acts.shape} and {grads.shape}"
                )
            g2 = grads * grads
            for total, term in zip(sums, (acts, grads, g2, g2 * grads)):
                total += term.sum(axis=0, dtype=np.float64)
        return tuple((total / self.n_samples).astype(np.float32) for total in sums)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if data.images is None or data.capture is None:
            raise ValueError(
                f"{self.name} reruns the model on noisy copies of the image: it needs images and capture"
            )
        out = np.zeros(acts.shape[:3], dtype=np.float32)
        for n in range(acts.shape[0]):
            a, d1, d2, d3 = (t[None] for t in self.smoothed(data, n))
            w = plusplus_weights(a, d1, d2, d3).astype(np.float32)
            if self.eigen_smooth:
                out[n] = channel_sum_or_principal(a * w[:, None, None, :], True, self.name)[0]
            else:  # Grad-CAM++'s own sum, so that sigma=0 gives its map bit for bit
                out[n] = np.maximum(np.einsum("nhwc,nc->nhw", a, w), 0.0)[0]
        return out
