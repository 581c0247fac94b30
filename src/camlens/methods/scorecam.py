"""Score-CAM and its variants: Faster Score-CAM (top-k channels), SS-CAM (smoothed), IS-CAM
(integrated).

All four weight channel ``c`` by ``softmax_c(s)`` where ``s_c`` is the target score of the image
multiplied by the channel's mask ``H_c`` (averaged over a few modified copies in SS-CAM and
IS-CAM). They share :func:`normalised_masks` and one scoring loop, which builds at most
``batch_size`` masked copies at a time whatever the channel count: with the 1280 channels of
EfficientNet-Lite0 at 224 px, all masked copies at once would take 770 MB.

A sample whose scores are the same under every mask (:func:`~camlens.methods.base.scores_flat`:
a model that ignores its input, a saturated score) has weights ``softmax`` of equal numbers,
``1/C`` each, and its map would be the plain channel mean normalised to full contrast, telling
nothing of the score: all four give it an all-zero map and one ``UserWarning`` per call.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._image import resize_bilinear
from .._args import non_negative, positive_int, seed_or_none
from .base import (CAMMethod, SiteData, channel_sum_or_principal, eigen_smooth_flag, noise_key, register,
                   scores_flat, warn_flat_scores)

__all__ = ["normalised_masks", "ScoreCAM", "FastScoreCAM", "SSCAM", "ISCAM"]


def normalised_masks(acts: np.ndarray, channels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``(K, H, W)`` Score-CAM masks of ``channels`` (``K`` indices) of one sample's ``(h, w, C)``
    activations: each channel upsampled bilinearly to ``size`` and min-max scaled to [0, 1].
    A constant channel gives an all-zero mask (no division by zero)."""
    masks = resize_bilinear(np.moveaxis(acts[..., channels], -1, 0), size)
    low = masks.min(axis=(1, 2), keepdims=True)
    span = masks.max(axis=(1, 2), keepdims=True) - low
    # a constant channel is zero exactly, whatever rounding the upsampling left
    span[constant_channels(acts[..., channels])] = 0
    return np.divide(masks - low, span, out=np.zeros_like(masks), where=span > 0)


def constant_channels(acts: np.ndarray) -> np.ndarray:
    """``(C,)`` bool: which channels of ``(h, w, C)`` activations hold one value everywhere."""
    return (acts == acts[:1, :1]).all(axis=(0, 1))


def _softmax(s: np.ndarray) -> np.ndarray:
    w = np.exp(s - s.max())
    return w / w.sum()


@register
class ScoreCAM(CAMMethod):
    """Score-CAM: each channel weighted by the score of the image masked with that channel.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020.

    ``H_c = minmax(upsample(A[n, :, :, c]))`` (bilinear to the input size, scaled to [0, 1]);
    ``s_c = S(x * H_c)``, the target score of the masked image; ``w = softmax_c(s)``;
    map ``= relu(sum_c w_c A[n, :, :, c])``; all zero, with a warning, where every ``s_c`` is
    the same (see the module's note). A constant channel gives an all-zero mask (no
    division by zero); all such channels share one scored all-black copy. Masked copies are
    built and scored ``batch_size`` at a time, so memory stays at ``batch_size`` images
    whatever the channel count. The default, 8, is also the faster choice on a CPU: a 224 px
    EfficientNet-Lite0 pass took 19 ms per image at 8 images, 26 ms at 16 and 38 ms at 32
    (PyTorch, 2 cores; larger activations leave the caches), see ``docs/benchmarks.md``.

    The masks are upsampled with half-pixel centres, as camlens upsamples every map
    (pytorch-grad-cam upsamples Score-CAM masks with ``align_corners=True``).

    ``eigen_smooth=True`` (pytorch-grad-cam's ``eigen_smooth``, here and in the three
    variants): the weighted activations ``w_c A[n, :, :, c]`` are projected onto their first
    principal component instead of summed over channels (centred per channel, relu), oriented
    to correlate positively with the unsmoothed map where pytorch-grad-cam keeps the SVD's
    arbitrary sign. A sample with flat scores stays all zero.

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
    cost = "one model run per channel of the layer"

    def __init__(self, batch_size: int = 8, eigen_smooth: bool = False) -> None:
        self.batch_size = positive_int(self.name, "batch_size", batch_size)
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)

    # --- what the variants override -------------------------------------------------------

    @property
    def copies_per_channel(self) -> int:
        """How many modified copies of each masked image are scored (their scores averaged)."""
        return 1

    def scored_channels(self, acts: np.ndarray) -> np.ndarray:
        """Sorted indices of the channels of one sample's ``(h, w, C)`` activations that are
        scored; the others get weight 0."""
        return np.arange(acts.shape[-1])

    def masked_copies(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        channels: np.ndarray,
        copies: np.ndarray,
        key: tuple[int, ...],
    ) -> np.ndarray:
        """``(B, H, W, c)`` images to score: ``image`` times ``masks[b]``, the mask of channel
        ``channels[b]``, for copy number ``copies[b]``; ``key`` (:meth:`noise_key` of the
        image) seeds any noise."""
        return image[None] * masks[..., None]

    def noise_key(self, image: np.ndarray) -> tuple[int, ...]:
        """The entropy of ``image``'s noise, ``()`` for a method without noise."""
        return ()

    # --- the shared loop ------------------------------------------------------------------

    def channel_scores(self, data: SiteData, n: int, channels: np.ndarray | None = None) -> np.ndarray:
        """``(K,)`` target scores of sample ``n``'s image masked by each of ``channels``
        (default: all), averaged over the method's copies of each."""
        assert data.images is not None and data.score is not None
        acts = np.asarray(data.activations[n], dtype=np.float32)
        image = np.asarray(data.images[n], dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"{self.name}: images must be (N, H, W, c); got sample shape {image.shape}")
        chans = np.arange(acts.shape[-1]) if channels is None else np.asarray(channels, dtype=np.intp)
        if type(self).masked_copies is ScoreCAM.masked_copies and self.copies_per_channel == 1:
            # Every constant channel has the all-zero mask, so the same all-black copy: it is
            # scored once. (Most channels after a ReLU are off on a given image: 831 of the
            # 1280 of EfficientNet-Lite0's last layer on the "chelsea" photo.)
            flat = np.flatnonzero(constant_channels(acts[..., chans]))
            if len(flat) > 1:
                source = np.arange(len(chans))
                source[flat] = flat[0]
                kept = np.unique(source)
                scores = self._scored(data, n, acts, image, chans[kept])
                return scores[np.searchsorted(kept, source)]
        return self._scored(data, n, acts, image, chans)

    def _scored(
        self,
        data: SiteData,
        n: int,
        acts: np.ndarray,
        image: np.ndarray,
        chans: np.ndarray,
    ) -> np.ndarray:
        assert data.score is not None
        reps = self.copies_per_channel
        key = self.noise_key(image)
        total = len(chans) * reps
        sums = np.zeros(len(chans), dtype=np.float64)
        # Copies run channel-major: copy j is copy j % reps of channel j // reps. Only the masks
        # of this chunk's channels are built, so memory is bounded by batch_size, not by C.
        for start in range(0, total, self.batch_size):
            job = np.arange(start, min(start + self.batch_size, total))
            which, copy = np.divmod(job, reps)
            first = int(which[0])
            masks = normalised_masks(acts, chans[first : int(which[-1]) + 1], image.shape[:2])
            batch = self.masked_copies(image, masks[which - first], chans[which], copy, key)
            s = np.asarray(data.score(n, batch), dtype=np.float64).reshape(-1)
            if s.shape != (len(job),):
                raise ValueError(
                    f"{self.name}: score(n, batch) must return one score per copy, {len(job)}; got "
                    f"shape {s.shape}"
                )
            np.add.at(sums, which, s)
        return sums / reps

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if data.images is None or data.score is None:
            raise ValueError(f"{self.name} runs the model on masked images: it needs images and score")
        out = np.zeros(acts.shape[:3], dtype=np.float32)
        flat = []
        for n in range(acts.shape[0]):
            chans = self.scored_channels(acts[n])
            scores = self.channel_scores(data, n, chans)
            if scores_flat(scores):  # the map would be the channel mean: nothing of the score
                flat.append(n)
                continue
            w = np.zeros(acts.shape[-1], dtype=np.float32)
            w[chans] = _softmax(scores)
            if self.eigen_smooth:
                out[n] = channel_sum_or_principal((acts[n] * w)[None], True, self.name)[0]
            else:
                out[n] = np.maximum(np.einsum("hwc,c->hw", acts[n], w), 0.0)
        warn_flat_scores(self.name, flat)
        return out


@register
class FastScoreCAM(ScoreCAM):
    """Faster Score-CAM: Score-CAM over the ``k`` channels of largest spatial variance only.

    The channel selection of "Faster Score-CAM" (https://github.com/tabayashi0117/Score-CAM,
    2020, also in tf-keras-vis); the weights are Score-CAM's:
    ``V_c = var_ij A[n, i, j, c]``; the ``k`` channels of largest ``V_c`` (ties: the lower
    index) are scored as in Score-CAM and ``w = softmax`` over them; every other channel gets
    ``w_c = 0``. A low-variance channel is nearly flat: it adds little spatial detail to the
    map (``w_c`` is at most 1) yet costs a model run like any other. ``k = 64`` by default: 1280
    model runs become 64 for EfficientNet-Lite0 (``benchmarks/scorecam_memory.py`` measures
    what that costs in faithfulness). With ``k >= C`` it is Score-CAM exactly.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import FastScoreCAM, SiteData
        >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, 0, 0] = 1; A[0, 1, 1, 1] = 0.5   # var 3/16, 3/64
        >>> x = np.ones((1, 2, 2, 1))
        >>> score = lambda n, batch: batch[:, 0, 0, 0]
        >>> FastScoreCAM(k=1)(SiteData(A, images=x, score=score))[0].tolist()   # channel 0 only
        [[1.0, 0.0], [0.0, 0.0]]
    """

    name = "fastscorecam"
    cost = ""  # k model runs (64 by default), whatever the layer

    def __init__(self, k: int = 64, batch_size: int = 8, eigen_smooth: bool = False) -> None:
        super().__init__(batch_size, eigen_smooth)
        self.k = positive_int(self.name, "k", k)

    def scored_channels(self, acts: np.ndarray) -> np.ndarray:
        var = acts.reshape(-1, acts.shape[-1]).astype(np.float64).var(axis=0)
        return np.sort(np.argsort(-var, kind="stable")[: self.k])


@register
class SSCAM(ScoreCAM):
    """SS-CAM (Smoothed Score-CAM): each channel's score averaged over noisy copies of its mask.

    Wang, Naidu, Michael and Kundu, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", arXiv:2006.14255, 2020.

    The paper's first variant, noise on the mask (the second adds it to the masked input):
    ``s_c = (1/N) sum_i S(x * (H_c + sigma eps_ci))`` with ``eps_ci`` standard normal noise of
    the input's spatial size (the same for every image channel), ``N = n_samples``; then as
    Score-CAM, ``w = softmax_c(s)``, map ``= relu(sum_c w_c A[n, :, :, c])``. ``sigma`` is in
    mask units (masks lie in [0, 1]); the defaults are the paper's, ``N = 35``, ``sigma = 2``.
    A constant channel's mask is zero, so its copies are pure noise times the image.

    ``seed=0`` by default. Each copy's noise is drawn from its own stream,
    ``SeedSequence(noise_key(seed, x), spawn_key=(channel, copy))``: keyed by the seed and the
    image's content (:func:`camlens.methods.base.noise_key`), never by the sample's place in
    the batch, so a batch equals its images one by one and ``batch_size`` changes nothing;
    ``seed=None`` draws fresh noise per call.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import SSCAM, SiteData
        >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, 0, 0] = 1; A[0, 1, 1, 1] = 1
        >>> data = SiteData(A, images=np.ones((1, 2, 2, 1)), score=lambda n, b: b[:, 0, 0, 0])
        >>> a = SSCAM(n_samples=4, seed=0)(data); b = SSCAM(n_samples=4, seed=0, batch_size=3)(data)
        >>> bool((a == b).all())                      # the noise does not depend on batch_size
        True
    """

    name = "sscam"
    cost = "35 model runs per channel of the layer"

    def __init__(
        self, n_samples: int = 35, sigma: float = 2.0, seed: int | None = 0, batch_size: int = 8,
        eigen_smooth: bool = False,
    ) -> None:
        super().__init__(batch_size, eigen_smooth)
        self.n_samples = positive_int(self.name, "n_samples", n_samples)
        self.sigma = non_negative(self.name, "sigma", sigma)
        self.seed = seed_or_none(self.name, seed)

    @property
    def copies_per_channel(self) -> int:
        return self.n_samples

    def noise_key(self, image: np.ndarray) -> tuple[int, ...]:
        return noise_key(self.seed, image)

    def masked_copies(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        channels: np.ndarray,
        copies: np.ndarray,
        key: tuple[int, ...],
    ) -> np.ndarray:
        size = image.shape[:2]
        noise = np.stack(
            [
                np.random.default_rng(np.random.SeedSequence(key, spawn_key=(int(c), int(i))))
                .standard_normal(size, dtype=np.float32)
                for c, i in zip(channels, copies)
            ]
        )
        return image[None] * (masks + np.float32(self.sigma) * noise)[..., None]


@register
class ISCAM(ScoreCAM):
    """IS-CAM (Integrated Score-CAM): each channel's score averaged along the path from the
    black image to the masked image.

    Naidu, Ghosh, Maurya, Nayak K and Kundu, "IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations", arXiv:2010.03023, 2020.

    ``s_c = (1/N) sum_{k=1..N} S(x * (k/N) H_c)`` with ``N = n_steps`` (a right Riemann sum of
    the integral over ``t`` in [0, 1] of ``S(x * t H_c)``, as in Integrated Gradients); then as
    Score-CAM, ``w = softmax_c(s)``, map ``= relu(sum_c w_c A[n, :, :, c])``. ``n_steps = 10``
    as in the paper; ``n_steps = 1`` is Score-CAM. (The paper's Algorithm 1 adds ``(k/N) H_c``
    to a running mask, so its later steps scale the mask past 1; camlens keeps to the
    integration path the paper describes.)

    Example::

        >>> import numpy as np
        >>> from camlens.methods import ISCAM, SiteData
        >>> A = np.zeros((1, 2, 2, 2)); A[0, 0, 0, 0] = 1; A[0, 1, 1, 1] = 1
        >>> data = SiteData(A, images=np.ones((1, 2, 2, 1)), score=lambda n, b: b[:, 0, 0, 0])
        >>> ISCAM(n_steps=2)(data).astype(float).round(3).tolist()   # s = (3/4, 0): softmax
        [[[0.679, 0.0], [0.0, 0.321]]]
    """

    name = "iscam"
    cost = "several model runs per channel of the layer"

    def __init__(self, n_steps: int = 10, batch_size: int = 8, eigen_smooth: bool = False) -> None:
        super().__init__(batch_size, eigen_smooth)
        self.n_steps = positive_int(self.name, "n_steps", n_steps)

    @property
    def copies_per_channel(self) -> int:
        return self.n_steps

    def masked_copies(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        channels: np.ndarray,
        copies: np.ndarray,
        key: tuple[int, ...],
    ) -> np.ndarray:
        scale = ((copies + 1) / self.n_steps).astype(np.float32)
        return image[None] * (scale[:, None, None] * masks)[..., None]
