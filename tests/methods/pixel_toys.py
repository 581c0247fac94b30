"""Hand-made pixel-method inputs shared by the method tests: a linear score per sample."""

from __future__ import annotations

from typing import Callable

import numpy as np

from camlens.methods import PixelData


def linear_toy(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, Callable[..., PixelData]]:
    """``(rng, X, W, linear)``: images ``X`` ``(2, 5, 4, 3)``, a different linear model ``W[n]``
    per sample, ``linear(calls=None)`` giving the PixelData of ``S_n(x) = sum(W[n] * x)``,
    ``dS/dx = W[n]`` (``calls`` collects the size of every gradient batch), and the generator
    that drew them, to draw on from."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    W = rng.normal(size=(2, 5, 4, 3))

    def linear(calls: list[int] | None = None) -> PixelData:
        def score(n, b):
            return (b * W[n]).sum(axis=(1, 2, 3))

        def gradient(n, b):
            if calls is not None:
                calls.append(len(b))
            return score(n, b), np.broadcast_to(W[n], b.shape).copy()

        return PixelData(X, score, gradient)

    return rng, X, W, linear
