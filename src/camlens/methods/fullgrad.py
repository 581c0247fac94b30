"""FullGrad: the input gradient and the gradients at every bias of the network, in one map."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._args import warn
from .._image import resize_bilinear
from .base import PixelData, PixelMethod, register

__all__ = ["FullGrad", "rescale_channels"]


def rescale_channels(terms: np.ndarray) -> np.ndarray:
    """Each channel of ``terms`` ``(..., h, w, C)`` scaled on its own from its minimum to its
    maximum onto ``[0, 1]`` (over ``h, w``); a constant channel becomes 0."""
    t = np.asarray(terms, dtype=np.float64)
    lo = t.min(axis=(-3, -2), keepdims=True)
    span = t.max(axis=(-3, -2), keepdims=True) - lo
    return np.where(span > 0, (t - lo) / np.where(span > 0, span, 1.0), 0.0)


@register
class FullGrad(PixelMethod):
    """FullGrad: the input-gradient term plus, for every convolution and batch normalisation,
    the bias-gradient term, each made positive, scaled to ``[0, 1]`` per channel, upsampled to
    the input and summed.

    Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization",
    NeurIPS 2019 (eq. 5).

    With ``x`` the image ``(H, W, c)``, ``S`` the score, ``b_l`` the bias a layer ``l`` adds
    per channel and ``g_l = dS/dz_l`` the gradient at its output before its activation
    (``h_l, w_l, C_l``), and ``psi(t)`` = each channel of ``|t|`` scaled from its minimum to
    its maximum onto ``[0, 1]``, bilinearly upsampled to ``H x W``::

        map = sum_c psi(x * dS/dx)[:, :, c] + sum_l sum_c psi(b_l[c] * g_l[:, :, c])

    The layers are every call site of a convolution with a bias (Keras ``Conv2D``,
    ``DepthwiseConv2D``, ``SeparableConv2D``; torch ``Conv2d``) and of a batch normalisation
    (``BatchNormalization``, ``BatchNorm2d``) computed from the image, the latter with its
    inference-time effective bias ``beta - mean * gamma / sqrt(var + eps)``. A Keras layer with
    a fused ``activation="relu"`` counts its gradient where its output is positive (that of the
    value before the ReLU); another fused activation is refused with the fix. A model without
    such layers gets the input-gradient term alone, with a warning. Costs two forward and
    backward passes per image (the input gradient, then every layer's gradient at once).

    ``attribute`` gives the map as ``(N, H, W, 1)`` attributions and ``details`` with
    ``input_term`` and ``bias_term`` ``(N, H, W)`` (their sum is the map), ``layers`` (the
    call sites read) and ``scores``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import FullGrad, PixelData
        >>> x = np.array([[[[1.0], [-2.0]], [[3.0], [0.5]]]])     # one 2x2 image, c = 1
        >>> g = np.array([[[[2.0], [1.0]], [[-1.0], [4.0]]]])     # dS/dx
        >>> grad = lambda n, b: ((b * g).sum(axis=(1, 2, 3)), g)
        >>> conv = ("conv", np.array([0.5, -1.0]), np.array([[[[1.0, 2.0], [3.0, 2.0]]]]))  # 1x2, C = 2
        >>> a, info = FullGrad().attribute(PixelData(x, None, grad, bias_gradients=lambda n, b: [conv]))
        >>> info["input_term"][0].tolist(), info["bias_term"][0].tolist()
        ([[0.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]])

    Differences from pytorch-grad-cam 1.5.7's ``FullGrad`` (which otherwise computes the same
    map, per channel as the paper's eq. 5 does):

    - each channel is scaled by ``1 / (max - min)``, not ``1 / (max - min + 1e-7)``: a map
      does not depend on the units of the score (a probability's gradients are small, and
      then the ``1e-7`` weighs channels by their size);
    - a batch normalisation without a learnt bias (torch ``affine=False``, Keras
      ``center=False``) still adds ``-mean * gamma / sqrt(var + eps)`` and is counted; the
      reference skips it;
    - subclasses of ``Conv2d`` and ``BatchNorm2d`` count (the reference matches the exact
      types only);
    - resizing to the input: the sum over a layer's channels is upsampled once rather than
      each channel (the same up to rounding: bilinear resizing is linear).
    """

    name = "fullgrad"
    needs_gradients = True
    reduce = "sum"

    def first_rule(self, images: np.ndarray) -> tuple[Any] | None:
        return (None,)  # the plain input gradient: explain's one pass gives it

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = np.asarray(data.images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"fullgrad: images must be (N, H, W, c); got shape {images.shape}")
        if data.gradient is None or getattr(data, "bias_gradients", None) is None:
            raise ValueError("fullgrad needs PixelData.gradient and PixelData.bias_gradients; "
                             "one was not given")
        size = images.shape[1:3]
        input_term = np.zeros(images.shape[:3])
        bias_term = np.zeros(images.shape[:3])
        scores = np.empty(len(images))
        layers: list[str] = []
        for n in range(len(images)):
            x = images[n : n + 1]
            s, g = data.gradient(n, x)
            g = np.asarray(g, dtype=np.float64)
            if g.shape != x.shape:
                raise ValueError(f"fullgrad: the input gradient has shape {g.shape}; expected {x.shape}")
            scores[n] = float(np.asarray(s).reshape(-1)[0])
            input_term[n] = rescale_channels(np.abs(g[0] * x[0])).sum(axis=-1)
            layers = []
            for label, bias, grads in data.bias_gradients(n, x):
                grads = np.asarray(grads, dtype=np.float64)[0]
                per_layer = rescale_channels(np.abs(grads * np.asarray(bias, dtype=np.float64))).sum(axis=-1)
                bias_term[n] += per_layer if per_layer.shape == size else resize_bilinear(per_layer, size)
                layers.append(label)
        if not layers:
            warn(
                "fullgrad: the model has no convolution or batch normalisation with a bias on the "
                "way from this input, so the map is the input-gradient term |x * dS/dx| alone",
                UserWarning,
            )
        total = (input_term + bias_term).astype(np.float32)
        info = {"scores": scores, "input_term": input_term.astype(np.float32),
                "bias_term": bias_term.astype(np.float32), "layers": layers}
        return total[..., None], info
