"""ROAD's noisy linear imputation as camlens computed it until 2026-12-06 (commit 7982f1b), kept
so that ``road_speed.py`` measures before and after in one run; the numbers are the same to the
solver's tolerance (the benchmark prints the largest difference). Not part of camlens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camlens.metrics.road import checked_imputation_args


def _neighbour_sum(a: np.ndarray) -> np.ndarray:
    """``sum_j w_ij a_j`` over ROAD's neighbourhood (1/6 direct, 1/12 diagonal), zero outside the
    grid; ``a`` is ``(M, H, W, C)``. The stencil ``[[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12`` is
    the separable ``[1, 2, 1]`` outer product minus its centre, computed as two 1-D passes."""
    t = 2.0 * a
    t[:, 1:] += a[:, :-1]
    t[:, :-1] += a[:, 1:]
    u = 2.0 * t
    u[:, :, 1:] += t[:, :, :-1]
    u[:, :, :-1] += t[:, :, 1:]
    u -= 4.0 * a
    u /= 12.0
    return u


class _Level:
    """One grid of the multigrid preconditioner: unknown mask ``u`` ``(M, H, W, 1)`` and the
    diagonal ``d = u * S`` (each pixel's total neighbour weight)."""

    def __init__(self, u: np.ndarray) -> None:
        self.u = u
        self.s = _neighbour_sum(np.ones((1, *u.shape[1:3], 1)))
        self.coarse: _Level | None = None
        h, w = u.shape[1:3]
        if min(h, w) > 6:
            hc, wc = -(-h // 2), -(-w // 2)
            padded = np.pad(u, ((0, 0), (0, 2 * hc - h), (0, 2 * wc - w), (0, 0)))
            # a coarse pixel is unknown only when its whole block is: blocks holding a kept pixel
            # stay fixed, so every coarse system keeps a boundary and stays non-singular
            uc = padded.reshape(len(u), hc, 2, wc, 2, 1).min(axis=(2, 4))
            if uc.any():
                self.coarse = _Level(uc)

    def apply(self, v: np.ndarray) -> np.ndarray:
        return self.u * (self.s * v - _neighbour_sum(v))

    def restrict(self, r: np.ndarray) -> np.ndarray:
        assert self.coarse is not None
        m, h, w, c = r.shape
        hc, wc = self.coarse.u.shape[1:3]
        padded = np.pad(r * self.u, ((0, 0), (0, 2 * hc - h), (0, 2 * wc - w), (0, 0)))
        return self.coarse.u * padded.reshape(m, hc, 2, wc, 2, c).sum(axis=(2, 4))

    def prolong(self, e: np.ndarray) -> np.ndarray:
        h, w = self.u.shape[1:3]
        assert self.coarse is not None
        up = np.repeat(np.repeat(self.coarse.u * e, 2, axis=1), 2, axis=2)
        return self.u * up[:, :h, :w]

    def vcycle(self, r: np.ndarray, sweeps: int = 2) -> np.ndarray:
        """A symmetric V-cycle for ``apply(e) = r`` from ``e = 0``: Jacobi sweeps (the
        stencil's Jacobi iteration damps every high frequency by 3 or more), the coarse grid's
        correction, the same sweeps again; the coarsest grid gets 40 sweeps."""
        if self.coarse is None:
            sweeps = 40
        e = np.zeros_like(r)
        for _ in range(sweeps):
            e += self.u * (r - self.apply(e)) / self.s
        if self.coarse is None:
            return e
        e += self.prolong(self.coarse.vcycle(self.restrict(r - self.apply(e)), sweeps))
        for _ in range(sweeps):
            e += self.u * (r - self.apply(e)) / self.s
        return e


def noisy_linear_imputation(
    image: Any,
    removed: Any,
    *,
    noise: float = 0.01,
    seed: int | np.random.Generator | None = 0,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> np.ndarray:
    """camlens.metrics.road.noisy_linear_imputation as it was (same arguments, same result)."""
    x, mask, gray, single = checked_imputation_args(image, removed, noise)
    u = mask[..., None].astype(np.float64)  # (M, H, W, 1): 1 where unknown
    kept = (1.0 - u) * x[None]
    out = kept.copy()
    for k in range(len(u)):  # one mask at a time: the arrays stay in cache
        one = u[k : k + 1]
        out[k : k + 1] += one * _conjugate_gradient(_Level(one), one * _neighbour_sum(kept[k : k + 1]), tol, max_iter)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if noise > 0:
        out += u * noise * rng.standard_normal(out.shape)
    if gray:
        out = out[..., 0]
    return out[0] if single else out


def _conjugate_gradient(grid: _Level, b: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Solve ``grid.apply(v) = b`` for every channel at once by conjugate gradients
    preconditioned with one multigrid V-cycle; each system's scalars are ``(M, 1, 1, C)``."""

    def dot(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.sum(a * c, axis=(1, 2), keepdims=True)

    v = np.zeros_like(b)
    r = b.copy()
    goal = tol * np.sqrt(dot(b, b))
    if (np.sqrt(dot(r, r)) <= goal).all():
        return v
    z = grid.vcycle(r)
    p = z.copy()
    rz = dot(r, z)
    for _ in range(max_iter):
        ap = grid.apply(p)
        pap = dot(p, ap)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        v += alpha * p
        r -= alpha * ap
        if (np.sqrt(dot(r, r)) <= goal).all():
            return v
        z = grid.vcycle(r)
        rz_next = dot(r, z)
        beta = np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_next
    worst = float((np.sqrt(dot(r, r)) / np.maximum(goal / tol, 1e-300)).max())
    raise RuntimeError(
        f"the imputation did not converge in {max_iter} iterations (relative residual "
        f"{worst:.2g}); raise max_iter or tol"
    )
