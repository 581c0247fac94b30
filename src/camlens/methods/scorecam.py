"""Score-CAM."""

from __future__ import annotations

import numpy as np

from ..viz import resize_bilinear
from .base import CAMMethod, SiteData, register


@register
class ScoreCAM(CAMMethod):
    """Score-CAM: each channel weighted by the score of the image masked with that channel.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020.

    ``H_c = minmax(upsample(A[n, :, :, c]))`` (bilinear to the input size, scaled to [0, 1]);
    ``s_c = S(x * H_c)``, the target score of the masked image; ``w = softmax_c(s)``;
    map ``= relu(sum_c w_c A[n, :, :, c])``. A constant channel gives an all-zero mask (no
    division by zero). Masked copies are built and scored ``batch_size`` channels at a time,
    so memory stays at ``batch_size`` images whatever the channel count.

    The masks are upsampled with half-pixel centres, as camlens upsamples every map
    (pytorch-grad-cam upsamples Score-CAM masks with ``align_corners=True``).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import ScoreCAM, SiteData
        >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, 0, 0] = 1; A[0, 1, 1, 1] = 1
        >>> x = np.ones((1, 2, 2, 1))
        >>> score = lambda n, batch: batch[:, 0, 0, 0]   # the top-left pixel of each copy
        >>> ScoreCAM()(SiteData(A, images=x, score=score)).astype(float).round(3).tolist()
        [[[0.731, 0.0], [0.0, 0.269]]]
    """

    name = "scorecam"
    needs_gradients = False
    needs_model = True

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.batch_size = batch_size

    def channel_scores(self, data: SiteData, n: int) -> np.ndarray:
        """``(C,)`` target scores of sample ``n``'s image masked by each channel."""
        assert data.images is not None and data.score is not None
        acts = np.asarray(data.activations[n], dtype=np.float32)
        image = np.asarray(data.images[n], dtype=np.float32)
        size = image.shape[:2]
        scores = []
        for start in range(0, acts.shape[-1], self.batch_size):
            chunk = np.moveaxis(acts[..., start : start + self.batch_size], -1, 0)
            masks = resize_bilinear(chunk, size)
            low = masks.min(axis=(1, 2), keepdims=True)
            span = masks.max(axis=(1, 2), keepdims=True) - low
            masks = np.divide(masks - low, span, out=np.zeros_like(masks), where=span > 0)
            scores.append(np.asarray(data.score(n, image[None] * masks[..., None]), dtype=np.float64))
        return np.concatenate(scores)

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if data.images is None or data.score is None:
            raise ValueError("scorecam runs the model on masked images: it needs images and score")
        out = np.zeros(acts.shape[:3], dtype=np.float32)
        for n in range(acts.shape[0]):
            s = self.channel_scores(data, n)
            w = np.exp(s - s.max())
            w /= w.sum()
            out[n] = np.maximum(np.einsum("hwc,c->hw", acts[n], w.astype(np.float32)), 0.0)
        return out
