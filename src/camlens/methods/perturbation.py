"""Attributions from rerunning the model on perturbed copies of the image, no gradients:
Occlusion and RISE.

Notation: ``x`` sample ``n``'s image ``(H, W, c)``, ``S`` its target score
(:attr:`PixelData.score`). Both give one value per pixel: attributions ``(N, H, W, 1)``.
Perturbed copies are built and scored ``batch_size`` at a time, never all at once. A sample whose
score is the same on every copy (:func:`~camlens.methods.base.scores_flat`) gets an all-zero
map: Occlusion's drops are zero then anyway; RISE would return its mean mask scaled by the
constant score, normalised to full contrast, so it sets the map to zero and warns.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .._image import resize_bilinear
from .._args import seed_or_none
from .base import PixelData, PixelMethod, register, scores_flat, warn_flat_scores

__all__ = ["Occlusion", "RISE"]


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)  # type: ignore[arg-type]
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair (h, w) of them; got {value!r}")
    return int(pair[0]), int(pair[1])


def _images(method: PixelMethod, data: PixelData) -> np.ndarray:
    images = np.asarray(data.images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"{method.name}: images must be (N, H, W, c); got shape {images.shape}")
    return images


def _scores(data: PixelData, n: int, batch: np.ndarray) -> np.ndarray:
    s = np.asarray(data.score(n, batch), dtype=np.float64).reshape(-1)
    if s.shape != (len(batch),):
        raise ValueError(f"score of {len(batch)} copies returned {s.size} values")
    return s


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:  # one more window flush with the edge: every pixel covered
        starts.append(size - window)
    return starts


@register
class Occlusion(PixelMethod):
    """Occlusion: how much the score drops when a window of the image is covered.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.

    A ``window`` ``(h, w)`` slides over the image by ``stride``, plus one last window flush
    with the bottom and right edges, so every pixel is covered at least once. Pixel ``p``
    gets ``mean over windows R containing p of (S(x) - S(x with R set to fill))``.
    ``window=None``: 1/8 of each image side (at least 1); ``stride=None``: half the window
    (at least 1). ``fill``: a number, or "mean" (each channel's mean over the image).

    Example::

        >>> import numpy as np
        >>> from camlens.methods import Occlusion, PixelData
        >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
        >>> score = lambda n, b: b[:, 0, 1, 0] * 10               # S reads pixel (0, 1)
        >>> Occlusion(window=1, stride=1)(PixelData(x, score))[0].tolist()
        [[0.0, 10.0], [0.0, 0.0]]
    """

    name = "occlusion"
    cost = "one model run per window position"
    needs_gradients = False
    reduce = "sum"

    def __init__(
        self,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        fill: float | str = 0.0,
        batch_size: int = 32,
    ) -> None:
        self.window = None if window is None else _pair(window, "window")
        self.stride = None if stride is None else _pair(stride, "stride")
        if isinstance(fill, str) and fill != "mean":
            raise ValueError(f"fill must be a number or 'mean'; got {fill!r}")
        self.fill = fill
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.batch_size = int(batch_size)

    def windows(self, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """``(top, left, h, w)`` of every occluding window for an image of ``size`` (H, W)."""
        H, W = size
        wh, ww = self.window or (max(1, H // 8), max(1, W // 8))
        if wh > H or ww > W:
            raise ValueError(f"window {(wh, ww)} is larger than the image {(H, W)}; use a smaller window")
        sh, sw = self.stride or (max(1, wh // 2), max(1, ww // 2))
        return [(t, l, wh, ww) for t in _starts(H, wh, sh) for l in _starts(W, ww, sw)]

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        N, H, W, _ = images.shape
        wins = self.windows((H, W))
        out = np.zeros((N, H, W, 1), dtype=np.float32)
        scores = np.empty(N)
        for n, image in enumerate(images):
            fill = image.mean(axis=(0, 1)) if self.fill == "mean" else np.float32(self.fill)
            scores[n] = _scores(data, n, image[None])[0]
            total = np.zeros((H, W))
            count = np.zeros((H, W))
            for start in range(0, len(wins), self.batch_size):
                chunk = wins[start : start + self.batch_size]
                batch = np.repeat(image[None], len(chunk), axis=0)
                for k, (t, l, h, w) in enumerate(chunk):
                    batch[k, t : t + h, l : l + w] = fill
                drops = scores[n] - _scores(data, n, batch)
                for (t, l, h, w), d in zip(chunk, drops):
                    total[t : t + h, l : l + w] += d
                    count[t : t + h, l : l + w] += 1
            out[n, ..., 0] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return out, {"scores": scores}


@register
class RISE(PixelMethod):
    """RISE: the score-weighted average of random smooth masks.

    Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018.

    Mask ``M_i``: a ``cell x cell`` grid of 0/1 (1 with probability ``p``), bilinearly
    upsampled to ``(cell + 1) * ceil(H / cell)`` by ``(cell + 1) * ceil(W / cell)`` and cropped
    to ``H x W`` at a random shift below one grid cell. Saliency
    ``= sum_i S(x * M_i) M_i / (n_masks * p)``; all zero, with a warning, for an image whose
    scores ``S(x * M_i)`` are all the same. The grids and shifts are drawn up front from
    ``np.random.default_rng(seed)``, ``seed=0`` by default (``seed=None``: a random seed fixed
    at construction): the masks depend on the seed only, the same masks for every image, so a
    batch equals its images one by one. Masks are built ``batch_size`` at a time
    (:meth:`masks`), so the result does not depend on ``batch_size``. The paper uses 4000
    to 8000 masks; the default 1000 keeps CPU runs short.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import RISE, PixelData
        >>> rise = RISE(n_masks=500, cell=2, seed=0)
        >>> score = lambda n, b: b[:, 0, 0, 0]                    # S reads pixel (0, 0)
        >>> sal = rise(PixelData(np.ones((1, 4, 4, 1)), score))[0]
        >>> bool(sal[0, 0] > sal[3, 3])
        True
    """

    name = "rise"
    cost = "1000 model runs on masked copies"
    needs_gradients = False
    reduce = "sum"

    def __init__(
        self,
        n_masks: int = 1000,
        cell: int = 7,
        p: float = 0.5,
        seed: int | None = 0,
        batch_size: int = 32,
    ) -> None:
        if n_masks < 1:
            raise ValueError(f"n_masks must be at least 1 (the paper uses 4000); got {n_masks}")
        if cell < 1:
            raise ValueError(f"cell (the mask grid size) must be at least 1; got {cell}")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p (probability of keeping a grid cell) must be in (0, 1]; got {p}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.n_masks, self.cell, self.p, self.batch_size = int(n_masks), int(cell), float(p), int(batch_size)
        seed = seed_or_none(self.name, seed)
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else seed  # type: ignore[arg-type]
        self._params: tuple[tuple[int, int], np.ndarray, np.ndarray] | None = None

    def _mask_params(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Grids ``(n_masks, cell, cell)`` and shifts ``(n_masks, 2)``: cheap, drawn once."""
        if self._params is None or self._params[0] != size:
            H, W = size
            if self.cell > min(H, W):
                raise ValueError(f"cell {self.cell} is finer than the image {size}; use cell <= {min(H, W)}")
            rng = np.random.default_rng(self.seed)
            grids = rng.random((self.n_masks, self.cell, self.cell)) < self.p
            step = (-(-H // self.cell), -(-W // self.cell))
            shifts = np.stack([rng.integers(0, s, self.n_masks) for s in step], axis=1)
            self._params = (size, grids, shifts)
        return self._params[1], self._params[2]

    def masks(self, size: tuple[int, int], start: int = 0, stop: int | None = None) -> np.ndarray:
        """Masks ``start`` to ``stop`` (default: all) for images of ``size`` (H, W), as
        ``(stop - start, H, W)`` float32 in [0, 1]."""
        H, W = int(size[0]), int(size[1])
        grids, shifts = self._mask_params((H, W))
        stop = self.n_masks if stop is None else min(stop, self.n_masks)
        big = ((self.cell + 1) * -(-H // self.cell), (self.cell + 1) * -(-W // self.cell))
        up = resize_bilinear(grids[start:stop].astype(np.float32), big)
        out = np.empty((len(up), H, W), dtype=np.float32)
        for k, (dy, dx) in enumerate(shifts[start:stop]):
            out[k] = up[k, dy : dy + H, dx : dx + W]
        return out

    def _chunks(self, size: tuple[int, int]) -> Iterator[np.ndarray]:
        for start in range(0, self.n_masks, self.batch_size):
            yield self.masks(size, start, start + self.batch_size)

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        N, H, W, _ = images.shape
        total = np.zeros((N, H, W))
        low, high = np.full(N, np.inf), np.full(N, -np.inf)
        for masks in self._chunks((H, W)):
            for n in range(N):
                s = _scores(data, n, images[n][None] * masks[..., None])
                total[n] += np.einsum("k,khw->hw", s, masks)
                low[n], high[n] = min(low[n], s.min()), max(high[n], s.max())
        # the scores' range is all that is needed to tell them flat (see base.scores_flat)
        flat = [n for n in range(N) if scores_flat(np.array([low[n], high[n]])) and self.n_masks > 1]
        total[flat] = 0.0
        warn_flat_scores(self.name, flat)
        out = (total / (self.n_masks * self.p)).astype(np.float32)[..., None]
        return out, {}
