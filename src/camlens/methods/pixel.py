"""Gradient attributions to input pixels: Saliency, SmoothGrad, Integrated Gradients, Guided
Backprop and Guided Grad-CAM.

Notation: ``x`` sample ``n``'s image ``(H, W, c)``, ``S`` its target score, ``dS/dx`` the
gradient from :attr:`PixelData.gradient`. Copies of one image are sent to the model
``batch_size`` at a time, never all at once.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._args import positive_int, seed_or_none
from .base import PixelData, PixelMethod, noise_key, register

__all__ = [
    "Saliency",
    "SmoothGrad",
    "IntegratedGradients",
    "GuidedBackprop",
    "GuidedGradCAM",
    "guided_gradcam",
]

GradientFn = Callable[[int, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def _images(method: PixelMethod, data: PixelData) -> np.ndarray:
    images = np.asarray(data.images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"{method.name}: images must be (N, H, W, c); got shape {images.shape}")
    return images


def _gradient_fn(method: PixelMethod, data: PixelData, guided: bool = False) -> GradientFn:
    fn = data.guided_gradient if guided else data.gradient
    if fn is None:
        what = "guided_gradient (Guided Backprop ReLU rule)" if guided else "gradient"
        raise ValueError(f"{method.name} needs PixelData.{what}; none was given")
    return fn


def _grad(fn: GradientFn, n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, grads = fn(n, batch)
    grads = np.asarray(grads, dtype=np.float64)
    if grads.shape != batch.shape:
        raise ValueError(f"gradient of {batch.shape} copies came back with shape {grads.shape}")
    return np.asarray(scores, dtype=np.float64).reshape(-1), grads


def per_image_gradients(
    method: PixelMethod, data: PixelData, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, dict[str, Any]]:
    """One gradient pass per image: ``combine(x, dS/dx)`` per image ``(N, H, W, c)``, and the
    scores in ``{"scores": ...}`` (Saliency: ``|g|``, Input x Gradient: ``x * g``)."""
    images = _images(method, data)
    fn = _gradient_fn(method, data)
    out = np.empty(images.shape, dtype=np.float32)
    scores = np.empty(len(images))
    for n in range(len(images)):
        s, g = _grad(fn, n, images[n : n + 1])
        out[n], scores[n] = combine(images[n].astype(np.float64), g[0]), s[0]
    return out, {"scores": scores}


def baselines_for(name: str, baseline: Any, images: np.ndarray) -> np.ndarray:
    """``(N, H, W, c)`` the baseline of each image: zeros for ``None``, else ``baseline``
    broadcast (a number, one ``(H, W, c)`` image or one per sample); ``name`` prefixes the
    error."""
    if baseline is None:
        return np.zeros_like(images)
    base = np.asarray(baseline, dtype=np.float32)
    try:
        return np.broadcast_to(base, images.shape).astype(np.float32)
    except ValueError:
        raise ValueError(
            f"{name}: baseline of shape {base.shape} does not fit images of shape {images.shape}; "
            f"give a number, an (H, W, c) = {images.shape[1:]} array or one per sample"
        ) from None


@register
class Saliency(PixelMethod):
    """Saliency: the magnitude of the score's gradient with respect to each pixel.

    Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image Classification
    Models and Saliency Maps", ICLR Workshops 2014.

    attributions ``= |dS/dx|``; map ``= max_c |dS/dx[:, :, c]|``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import PixelData, Saliency
        >>> w = np.array([[[1.0, -3.0], [0.5, 2.0]]])            # (1, 2, 2) weights, c = 1
        >>> x = np.ones((1, 1, 2, 2))                             # one 1x2 image, c = 2
        >>> grad = lambda n, b: ((b * w).sum(axis=(1, 2, 3)), np.broadcast_to(w, b.shape))
        >>> Saliency()(PixelData(x, score=None, gradient=grad)).tolist()
        [[[3.0, 2.0]]]
    """

    name = "saliency"
    needs_gradients = True
    gradient_at_image = True
    reduce = "maxabs"

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        return per_image_gradients(self, data, lambda x, g: np.abs(g))


@register
class SmoothGrad(PixelMethod):
    """SmoothGrad: the gradient averaged over noisy copies of the image.

    Smilkov et al., "SmoothGrad: removing noise by adding noise", ICML Workshops 2017.
    ``squared=True`` averages the squared gradient (SmoothGrad-Squared, Hooker et al., "A
    Benchmark for Interpretability Methods in Deep Neural Networks", NeurIPS 2019).

    attributions ``= (1/K) sum_k dS/dx (x + e_k)`` with ``e_k ~ N(0, s^2)``,
    ``s = sigma * (max(x) - min(x))`` (the paper's noise level) and ``K = n_samples``;
    map ``= max_c |attributions|``. ``seed=0`` by default; the noise of each image is drawn
    from one stream, ``np.random.default_rng(SeedSequence(noise_key(seed, x)))``, keyed by the
    seed and the image's content (:func:`camlens.methods.base.noise_key`): a batch equals its
    images one by one, and ``batch_size`` changes nothing. ``seed=None``: fresh noise per call.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import PixelData, SmoothGrad
        >>> x = np.array([[[[1.0], [2.0]]]])                     # S = sum(x^2), dS/dx = 2x
        >>> grad = lambda n, b: ((b ** 2).sum(axis=(1, 2, 3)), 2 * b)
        >>> a, _ = SmoothGrad(n_samples=4000, seed=0).attribute(PixelData(x, None, grad))
        >>> np.round(a[0, 0, :, 0], 1).tolist()                  # ~ 2x: the noise averages out
        [2.0, 4.0]
    """

    name = "smoothgrad"
    needs_gradients = True
    reduce = "maxabs"

    def __init__(
        self,
        n_samples: int = 25,
        sigma: float = 0.15,
        seed: int | None = 0,
        squared: bool = False,
        batch_size: int = 32,
    ) -> None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1; got {n_samples}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0 (a fraction of the image's range, e.g. 0.15); got {sigma}")
        self.n_samples = int(n_samples)
        self.sigma = float(sigma)
        self.seed = seed_or_none(self.name, seed)
        self.squared = bool(squared)
        self.batch_size = positive_int(self.name, "batch_size", batch_size)

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        fn = _gradient_fn(self, data)
        out = np.empty(images.shape, dtype=np.float32)
        stds = np.empty(len(images))
        for n, image in enumerate(images):
            rng = np.random.default_rng(np.random.SeedSequence(noise_key(self.seed, image)))
            stds[n] = std = self.sigma * float(image.max() - image.min())
            total = np.zeros(image.shape, dtype=np.float64)
            for start in range(0, self.n_samples, self.batch_size):
                k = min(self.batch_size, self.n_samples - start)
                noise = rng.standard_normal((k, *image.shape)) * std
                _, g = _grad(fn, n, (image + noise).astype(np.float32))
                total += (g * g if self.squared else g).sum(axis=0)
            out[n] = total / self.n_samples
        return out, {"noise_std": stds}


@register
class IntegratedGradients(PixelMethod):
    """Integrated Gradients: the gradient integrated along the line from a baseline to x.

    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.

    attributions ``= (x - b) * integral_0^1 dS/dx (b + a (x - b)) da``, by the composite
    midpoint rule: ``(x - b) * (1/m) sum_k dS/dx (b + a_k (x - b))``, ``a_k = (k + 1/2) / m``,
    ``m = steps`` gradients (exact when S is quadratic). The midpoints never touch the ends:
    at a black baseline every ReLU input of a bias-free network is exactly 0, where the
    gradient is degenerate, and a rule evaluating it there (trapezoid) errs by ``O(1/m)``.
    Completeness: ``sum(attributions) = S(x) - S(b)`` up to the quadrature error, reported
    per sample in ``info["completeness_error"]``
    ``= |sum(attr) - (S(x) - S(b))| / max(|S(x) - S(b)|, 1e-12)`` next to
    ``info["score_delta"] = S(x) - S(b)`` (one extra scoring call of 2 images per sample).
    Signed; map ``= sum_c attributions``.

    ``baseline``: ``None`` (black, all zeros), a number, or an array broadcastable to
    ``(H, W, c)`` or to the whole batch ``(N, H, W, c)``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import IntegratedGradients, PixelData
        >>> x = np.array([[[[1.0], [-2.0]]]]); w = np.array([3.0, 1.0])[None, :, None]
        >>> score = lambda n, b: (b * w).sum(axis=(1, 2, 3))
        >>> grad = lambda n, b: (score(n, b), np.broadcast_to(w, b.shape))
        >>> a, info = IntegratedGradients(steps=4).attribute(PixelData(x, score, grad))
        >>> a[0, 0, :, 0].tolist(), info["completeness_error"].tolist()
        ([3.0, -2.0], [0.0])
    """

    name = "integratedgradients"
    cost = "64 gradient passes"
    needs_gradients = True
    signed = True
    reduce = "sum"

    def __init__(self, baseline: float | np.ndarray | None = None, steps: int = 64, batch_size: int = 32) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1 (64 is a good start); got {steps}")
        self.baseline = baseline
        self.steps = int(steps)
        self.batch_size = positive_int(self.name, "batch_size", batch_size)

    def baselines(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, c)`` the baseline of each image."""
        return baselines_for(self.name, self.baseline, images)

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        bases = self.baselines(images)
        fn = _gradient_fn(self, data)
        alphas = (np.arange(self.steps) + 0.5) / self.steps
        out = np.empty(images.shape, dtype=np.float32)
        delta = np.empty(len(images))
        error = np.empty(len(images))
        for n in range(len(images)):
            x, b = images[n].astype(np.float64), bases[n].astype(np.float64)
            total = np.zeros(x.shape)
            for start in range(0, self.steps, self.batch_size):
                a = alphas[start : start + self.batch_size, None, None, None]
                _, g = _grad(fn, n, (b + a * (x - b)).astype(np.float32))
                total += g.sum(axis=0)
            attr = (x - b) * total / self.steps
            out[n] = attr
            ends = np.asarray(data.score(n, np.stack([images[n], bases[n]])), dtype=np.float64)
            delta[n] = ends[0] - ends[1]
            error[n] = abs(attr.sum() - delta[n]) / max(abs(delta[n]), 1e-12)
        return out, {"completeness_error": error, "score_delta": delta}


@register
class GuidedBackprop(PixelMethod):
    """Guided Backpropagation: the gradient with every ReLU passing back only positive
    gradients where its input was positive.

    Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR
    Workshops 2015. The rule is :data:`camlens.rules.GUIDED`, which the adapters set on every
    ReLU while they take the gradient (``data.guided_gradient``).

    attributions ``= guided dS/dx`` (signed, as an image-like reconstruction);
    map ``= max_c |attributions|``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GuidedBackprop, PixelData
        >>> g = np.array([[[0.0, -2.0], [1.0, 0.5]]])            # a made-up guided gradient
        >>> guided = lambda n, b: (b.sum(axis=(1, 2, 3)), np.broadcast_to(g, b.shape))
        >>> GuidedBackprop()(PixelData(np.ones((1, 1, 2, 2)), None, guided_gradient=guided)).tolist()
        [[[2.0, 1.0]]]
    """

    name = "guidedbackprop"
    reduce = "maxabs"

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        return _guided(self, data), {}


def _guided(method: PixelMethod, data: PixelData) -> np.ndarray:
    images = _images(method, data)
    fn = _gradient_fn(method, data, guided=True)
    out = np.empty(images.shape, dtype=np.float32)
    for n in range(len(images)):
        _, g = _grad(fn, n, images[n : n + 1])
        out[n] = g[0]
    return out


def guided_gradcam(guided: np.ndarray, cam_maps: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM attributions ``(N, H, W, c)``: ``guided`` Guided Backprop attributions
    ``(N, H, W, c)`` times ``cam_maps`` ``(N, H, W)``, Grad-CAM maps at the input size."""
    guided = np.asarray(guided, dtype=np.float32)
    cam = np.asarray(cam_maps, dtype=np.float32)
    if guided.ndim != 4 or cam.shape != guided.shape[:3]:
        raise ValueError(
            f"guided_gradcam: needs guided (N, H, W, c) and cam_maps (N, H, W) of the same size; "
            f"got {guided.shape} and {cam.shape} (upsample the Grad-CAM maps to the input size)"
        )
    return guided * cam[..., None]


@register
class GuidedGradCAM(PixelMethod):
    """Guided Grad-CAM: Guided Backprop sharpened by the layer's Grad-CAM map.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.

    attributions ``= guided dS/dx * up(M)``, ``M`` the ``cam_method`` ("gradcam") map of the
    layer, upsampled to the input and scaled to [0, 1] (what ``explain`` returns as
    ``Explanation.maps``); map ``= max_c |attributions|``. Unlike the other pixel methods it
    needs a layer: ``explain`` passes the maps as ``cam_maps``, one ``(N, H, W)`` per call.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import GuidedGradCAM, PixelData
        >>> g = np.array([[[0.0, -2.0], [1.0, 0.5]]])
        >>> guided = lambda n, b: (b.sum(axis=(1, 2, 3)), np.broadcast_to(g, b.shape))
        >>> data = PixelData(np.ones((1, 1, 2, 2)), None, guided_gradient=guided)
        >>> GuidedGradCAM()(data, cam_maps=np.array([[[0.25, 1.0]]])).tolist()
        [[[0.5, 1.0]]]
    """

    name = "guidedgradcam"
    needs_layer = True
    reduce = "maxabs"
    cam_method = "gradcam"

    def attribute(  # type: ignore[override]
        self, data: PixelData, cam_maps: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if cam_maps is None:
            raise ValueError(
                "guidedgradcam needs cam_maps: the Grad-CAM maps (N, H, W) of the layer at the "
                "input size (camlens.explain(model, x, 'guidedgradcam') computes them)"
            )
        return guided_gradcam(_guided(self, data), cam_maps), {}

    def __call__(self, data: PixelData, cam_maps: np.ndarray | None = None) -> np.ndarray:  # type: ignore[override]
        attributions, _ = self.attribute(data, cam_maps)
        return self.reduce_channels(attributions)
