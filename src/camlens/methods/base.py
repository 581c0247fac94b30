"""The shared base of every CAM method: what a method receives and the registry of names.

A method is a small class over numpy arrays. The adapter has already run the model and
handed back, for one call site of one layer, the activations ``A`` and the gradients
``dS/dA`` of the score ``S`` of each sample, channels-last. A method turns them into a raw
map of shape ``(N, h, w)`` at the layer's resolution; normalisation and upsampling happen
later, in :mod:`camlens.explanation`, the same way for every method.

Shared notation in the method docstrings: ``A[n, i, j, c]`` activations, ``G[n, i, j, c]``
gradients of the score of sample ``n``, ``Z = h * w`` the number of spatial positions.

Noise. The stochastic methods (SmoothGrad, Smooth Grad-CAM++, SS-CAM, RISE) take ``seed=``:
0 by default, also when a method is chosen by name; the noise of each image comes from the
seed and the image's content, so a batch equals its images one by one. Each sample's noise is
drawn from :func:`noise_key` of the seed and the sample's own image, never from its position
in the batch: the same call gives the same maps every time, and an image gets the same noise
alone, in any batch, in any order, whatever ``batch_size`` splits it and on every backend
(RISE's masks depend on the seed only: the same masks for every image). ``seed=None`` opts
out: fresh noise on every call.

Flat scores. A method that builds its map only from the scores of modified inputs (Score-CAM
and its variants, RISE) cannot say anything about a sample whose scores did not change under
any modification (:func:`scores_flat`): a model that ignores its input, or a saturated score.
Its map is all zero, and one ``UserWarning`` per call names the samples
(:func:`warn_flat_scores`), rather than noise normalised to full contrast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ..registry import Registry
from ._principal import principal_maps
from .._args import warn

__all__ = [
    "SiteData",
    "CAMMethod",
    "PixelData",
    "PixelMethod",
    "WeightedCAM",
    "eigen_smooth_flag",
    "channel_sum_or_principal",
    "register",
    "get_method",
    "available_methods",
    "slow_methods",
    "noise_key",
    "scores_flat",
    "warn_flat_scores",
    "FLAT_RTOL",
]


@dataclass(frozen=True)
class SiteData:
    """What the model gave for one call site of one layer.

    activations:  ``(N, h, w, C)`` float array, channels-last.
    gradients:    ``(N, h, w, C)`` gradient of each sample's score with respect to the
                  activations, or ``None`` for methods that need none.
    head_weights: ``(N, C)`` for CAM only: for each sample, the weights of the Dense unit of
                  the explained class, the layer after global average pooling.
    head_kernel:  ``(C, classes)`` that Dense layer's whole kernel, every class's weights (DFF
                  ranks classes by it); ``None`` where there is none.
    images:       ``(N, H, W, c)`` for methods that run the model again (Score-CAM): the input
                  image each map belongs to, as the model takes it.
    score:        for those methods: ``score(n, batch)`` runs the model on ``batch``, modified
                  copies of sample ``n``'s image ``(B, H, W, c)``, and returns the target score
                  of sample ``n`` for each, ``(B,)`` (other model inputs held at sample ``n``).
    score_site:   for methods that change the layer's activations (Ablation-CAM):
                  ``score_site(n, acts)`` with ``acts`` ``(B, h, w, C)`` replacement
                  activations for sample ``n`` at this call site returns the target score of
                  sample ``n`` for each, ``(B,)``; only the part of the model after the layer
                  is recomputed.
    capture:      for methods that average over modified inputs (Smooth Grad-CAM++):
                  ``capture(n, batch)`` with ``batch`` ``(B, H, W, c)`` modified copies of
                  sample ``n``'s image returns ``(activations, gradients)`` at this call site,
                  each ``(B, h, w, C)``, for sample ``n``'s target.
    """

    activations: np.ndarray
    gradients: np.ndarray | None = None
    head_weights: np.ndarray | None = None
    images: np.ndarray | None = None
    score: Callable[[int, np.ndarray], np.ndarray] | None = None
    score_site: Callable[[int, np.ndarray], np.ndarray] | None = None
    capture: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    head_kernel: np.ndarray | None = None


class CAMMethod:
    """Base of all layer methods: ``method(data) -> (N, h, w)`` raw map, float32.

    ``data`` is what the model gave for one call site: from ``explain`` a
    :class:`camlens.access.ModelAccess`, which computes what the method asks for when it asks;
    in tests a :class:`SiteData` of given arrays. The same attribute names serve both.

    Declared on the class: ``name`` (the registry key), ``needs_layer``, ``needs_gradients``
    (whether the capture pass backpropagates), ``needs_head_weights`` (CAM: the Dense layer
    after global average pooling) and ``cost``: empty for methods that cost about one
    forward and backward pass, else a note on what makes them slow ("one model run per channel
    of the layer"), shown by the app and the command line.
    """

    name: ClassVar[str] = ""
    needs_layer: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    needs_head_weights: ClassVar[bool] = False
    cost: ClassVar[str] = ""

    def __call__(self, data: SiteData) -> np.ndarray:
        raise NotImplementedError

    def map_and_details(self, data: SiteData) -> tuple[np.ndarray, dict]:
        """The raw map and what the method reports beyond it, for ``Explanation.details``
        (Deep Feature Factorization: every concept's map); most methods report nothing."""
        return self(data), {}

    def _checked(self, data: SiteData) -> tuple[np.ndarray, np.ndarray | None]:
        acts = np.asarray(data.activations, dtype=np.float32)
        if acts.ndim != 4:
            raise ValueError(
                f"{self.name}: activations must be (N, h, w, C); got shape {acts.shape}"
            )
        grads = None
        if self.needs_gradients:
            if data.gradients is None:
                raise ValueError(f"{self.name} needs gradients; none were given")
            grads = np.asarray(data.gradients, dtype=np.float32)
            if grads.shape != acts.shape:
                raise ValueError(
                    f"{self.name}: gradients {grads.shape} and activations {acts.shape} differ"
                )
        return acts, grads


class WeightedCAM(CAMMethod):
    """Methods of the form ``relu(sum_c w[n, c] * A[n, :, :, c])``: only the weights differ.

    ``eigen_smooth=True`` (pytorch-grad-cam's ``eigen_smooth``): the weighted activations
    ``w[n, c] A[n, :, :, c]`` are projected onto their first principal component instead of
    summed over channels (Eigen-CAM's map of them, :func:`camlens.methods.eigencam.principal_maps`:
    centred per channel, relu), which keeps the dominant pattern and drops noise. One deliberate
    difference: pytorch-grad-cam keeps the arbitrary sign of the SVD; camlens orients the
    projection to correlate positively with the channel sum, i.e. with the unsmoothed map.
    """

    def __init__(self, eigen_smooth: bool = False) -> None:
        self.eigen_smooth = eigen_smooth_flag(self.name, eigen_smooth)

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        """Channel weights ``(N, C)``."""
        raise NotImplementedError

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        w = self.weights(acts, grads, data).astype(np.float32)
        if getattr(self, "eigen_smooth", False):
            return principal_maps(acts.astype(np.float64) * w[:, None, None, :], self.name)
        return np.maximum(np.einsum("nhwc,nc->nhw", acts, w), 0.0).astype(np.float32)


def eigen_smooth_flag(method: str, value: object) -> bool:
    """``eigen_smooth`` checked: True or False, else a TypeError naming ``method``."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{method}: eigen_smooth must be True or False; got {value!r}")
    return bool(value)


def channel_sum_or_principal(weighted: np.ndarray, eigen_smooth: bool, method: str) -> np.ndarray:
    """``(N, h, w, C)`` weighted activations -> ``(N, h, w)`` float32 map: ``relu`` of their sum
    over channels, or with ``eigen_smooth`` their projection on the first principal component
    (:func:`~camlens.methods._principal.principal_maps`: centred per channel, oriented to
    correlate positively with the channel sum, relu)."""
    if eigen_smooth:
        return principal_maps(np.asarray(weighted, dtype=np.float64), method)
    return np.maximum(weighted.sum(axis=3), 0.0).astype(np.float32)


@dataclass(frozen=True)
class PixelData:
    """What a pixel-attribution method receives: the explained inputs and ways to rerun the
    model on modified copies of them.

    images:   ``(N, H, W, c)`` the explained image of each sample, as the model takes it.
    score:    ``score(n, batch)``: target score of sample ``n`` for each of ``batch``
              ``(B, H, W, c)`` modified copies of its image, ``(B,)`` (other model inputs held
              at sample ``n``, the target pinned to what was explained for sample ``n``).
    gradient: ``gradient(n, batch)`` -> ``(scores (B,), grads (B, H, W, c))``: the same
              scores and their gradient with respect to each copy; ``None`` where the method
              needs none.
    guided_gradient: as ``gradient`` with the Guided Backpropagation rule on every ReLU
              (only negative gradients and negative inputs stopped), for Guided Backprop.
    bias_gradients: for FullGrad, ``bias_gradients(n, batch)`` -> a list, one entry per call
              site of a layer that adds a bias per channel (convolution, batch normalisation),
              of ``(label, bias (C,), grads (B, h, w, C))``: the gradient of the score with
              respect to the layer's output before its activation.
    """

    images: np.ndarray
    score: Callable[[int, np.ndarray], np.ndarray]
    gradient: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    guided_gradient: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    bias_gradients: Callable[[int, np.ndarray], list[tuple[str, np.ndarray, np.ndarray]]] | None = None


class PixelMethod(CAMMethod):
    """Base of methods that attribute the score to input pixels, with no layer.

    ``attribute(data)`` returns ``(attributions, info)``: ``(N, H, W, c)`` per-channel
    attributions (``c`` is 1 for methods that perturb whole pixels) and a dict of
    per-method facts (Integrated Gradients: ``completeness_error``). ``method(data)`` gives
    the ``(N, H, W)`` raw map: the attributions reduced over channels by ``reduce``
    ("sum", or "maxabs": the largest magnitude across channels, Simonyan et al.'s saliency).
    ``signed`` says whether raw maps carry a meaningful sign (shown as magnitude).
    """

    needs_layer = False
    needs_gradients = False
    reduce: ClassVar[str] = "sum"
    signed: ClassVar[bool] = False
    #: a layer method whose maps weight the attributions (Guided Grad-CAM: "gradcam"); ``explain``
    #: runs it at the layer first and passes its maps as ``attribute(data, cam_maps=...)``
    cam_method: ClassVar[str | None] = None

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict]:
        raise NotImplementedError

    def first_rule(self, images: np.ndarray) -> tuple[Any] | None:
        """``(rule,)``: the rule (:mod:`camlens.rules`; ``None`` the plain gradient) whose input
        gradients of every explained image ``attribute`` asks for first, through
        ``data.rule_gradients(rule)`` (or ``data.gradient(n, image)`` one image at a time);
        ``explain`` then takes them in its own pass over the batch where the adapter can (one
        forward pass saved). ``None``: no such rule."""
        return None

    def reduce_channels(self, attributions: np.ndarray) -> np.ndarray:
        a = np.asarray(attributions, dtype=np.float32)
        if self.reduce == "maxabs":
            return np.abs(a).max(axis=-1)
        return a.sum(axis=-1)

    def __call__(self, data: PixelData) -> np.ndarray:  # type: ignore[override]
        attributions, _ = self.attribute(data)
        return self.reduce_channels(attributions)


_REGISTRY: Registry[type[CAMMethod]] = Registry("method")


def register(cls: type[CAMMethod]) -> type[CAMMethod]:
    """Class decorator: make a method available by its ``name``; one new file with a
    decorated class is a new method everywhere (``explain``, the CLI, the app, the report)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    return _REGISTRY.add(cls.name, cls)


def get_method(name: str | CAMMethod) -> CAMMethod:
    """The method registered as ``name`` ("gradcam", "Grad-CAM++" and "gradcam_pp" spellings
    are accepted), or ``name`` itself when it already is a method instance."""
    if isinstance(name, CAMMethod):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or a CAMMethod; got {type(name).__name__}")
    return _REGISTRY.get(name)[1]()


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return _REGISTRY.names()


def slow_methods() -> dict[str, str]:
    """``{name: what makes it slow}`` for every registered method with a declared ``cost``."""
    return {name: cls.cost for name, cls in sorted(_REGISTRY.items()) if cls.cost}


def noise_key(seed: int | None, image: np.ndarray) -> tuple[int, ...]:
    """The entropy of one sample's noise: ``seed`` followed by a 128-bit hash of ``image``
    (its shape and float32 bytes, ``-0.0`` read as ``0.0``), for ``np.random.SeedSequence``.

    The noise depends on what the image is, not where it sits in the batch: an image explained
    alone or in any batch gets the same noise, and two different images get independent
    noise. ``seed=None`` puts fresh entropy in place of the seed (not reproducible).
    """
    x = np.ascontiguousarray(image, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = 0.0
    digest = hashlib.blake2b(repr(x.shape).encode(), digest_size=16, person=b"camlens-noise")
    digest.update(x.tobytes())
    first = int(np.random.SeedSequence().entropy) if seed is None else int(seed)  # type: ignore[arg-type]
    return (first, *(int(w) for w in np.frombuffer(digest.digest(), dtype="<u4")))


#: scores count as unchanged when ``max - min <= FLAT_RTOL * max(|min|, |max|)``: a few float32
#: rounding steps (float32 resolves 1.2e-7 of a value), far below any change a model makes
FLAT_RTOL = 1e-6


def scores_flat(scores: np.ndarray) -> bool:
    """Whether one sample's scores of its modified inputs are all equal, to :data:`FLAT_RTOL`
    relative to their magnitude (all zero counts as equal). One score is never judged: a single
    value cannot show whether the model responds."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size < 2:
        return False
    lo, hi = float(s.min()), float(s.max())
    return hi - lo <= FLAT_RTOL * max(abs(lo), abs(hi))


def warn_flat_scores(method: str, samples: Sequence[int], what: str = "mask") -> None:
    """The one warning of a call whose ``samples`` had flat scores (their maps set to zero)."""
    if len(samples):
        warn(
            f"{method}: the model's score did not change under any {what} for images "
            f"{[int(n) for n in samples]}: the map is meaningless (all zero); check that the "
            "target's score depends on the input (a model that ignores its input, or a "
            "saturated score such as a probability of 1.0)",
            UserWarning
        )
