"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML 2022).

Removing pixels by setting them to a constant leaks where they were (the mask's shape alone can
decide the class). ROAD instead fills them by **noisy linear imputation**: every removed pixel
``i`` takes the weighted mean of its 8 neighbours, ``x_i = sum_j w_ij x_j / sum_j w_ij``, with
weight 1/6 for the 4 direct neighbours and 1/12 for the 4 diagonal ones (neighbours outside the
image are dropped). Removed neighbours are unknowns too, so all removed pixels of an image are
found together from one sparse linear system (per channel); then Gaussian noise
``N(0, noise^2)`` is added to the imputed pixels.

The system ``(S_i x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij x_j``, ``S_i = sum_j w_ij``)
is symmetric and positive definite whenever at least one pixel is kept. It is solved here
matrix-free on the pixel grid, all channels at once (they share the matrix), on the bounding box
of the removed pixels only, by the conjugate gradient method in float64 to a relative residual
of ``tol``, preconditioned with one float32 multigrid V-cycle per iteration (Jacobi sweeps; a
coarse pixel is unknown where its whole 2x2 block is; a grid of at most 64 unknowns solved by
its dense inverse); each mask that contains the one before (ROAD's fractions of one order do)
starts from that mask's solution. scipy is not a camlens dependency; the tests check the result
against ``scipy.sparse.linalg.spsolve``: to 1e-9 at ``tol=1e-12``, and at the default
``tol=1e-6`` every imputed pixel within 1e-5 of it (values in [0, 1]). On a 224 px photo the
18 solves of :func:`road`'s defaults take about 0.45 s of CPU time (``benchmarks/road_speed.py``),
7x less than the solver before 2026-12-06, whose imputed pixels agree to 5e-6.

For each fraction ``p`` in ``percentages`` the ``round(p * H * W)`` most relevant pixels (MoRF;
lower scores are better) or least relevant ones (LeRF; higher is better) are removed, ranked by
the map with a stable sort as in :mod:`camlens.metrics.curves`, and the class score is read on
the imputed image. The combined score is ``mean_p (LeRF(p) - MoRF(p)) / 2`` (higher is better),
the convention of pytorch-grad-cam's ``ROADCombined``; the ROAD paper reports the two curves
and defines no single number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..access import pinned
from ._common import BATCH_SIZE, MetricResult, setup, stable_ranks

__all__ = ["RoadResult", "road", "noisy_linear_imputation"]


def _stencil(a: np.ndarray, out: np.ndarray, tmp: np.ndarray, padded: bool = False) -> np.ndarray:
    """``12 * sum_j w_ij a_j`` over ROAD's neighbourhood (2 for the 4 direct neighbours, 1 for
    the 4 diagonal ones), zero outside the grid, into ``out``; ``a`` is ``(C, H, W)``. The
    weights are the separable ``[1, 2, 1]`` outer product minus its centre 4, computed as two
    1-D passes; the factor 12 keeps them whole numbers (each system is scaled by 12 on both
    sides). ``out`` and ``tmp`` are buffers of ``a``'s shape: fresh megabyte-sized arrays on
    every call cost more than the arithmetic (the allocator hands them back to the system).
    ``padded``: ``a``'s last column is 0, and ``out``'s last column is left wrong (the solver's
    grids end in a known column, where every result is multiplied by 0)."""
    np.multiply(a, 2, out=tmp)
    tmp[:, 1:] += a[:, :-1]
    tmp[:, :-1] += a[:, 1:]
    np.multiply(tmp, 2, out=out)
    if padded:
        # shifting the flattened planes by one pixel adds whole rows at once (row by row, numpy's
        # loop overhead costs 10x the additions); the pixel that wraps in from the row above is
        # a 0 of the last column, and the one that wraps into the last column is left there
        flat, flat_tmp = out.reshape(-1), tmp.reshape(-1)
        flat[1:] += flat_tmp[:-1]
        flat[:-1] += flat_tmp[1:]
    else:
        out[:, :, 1:] += tmp[:, :, :-1]
        out[:, :, :-1] += tmp[:, :, 1:]
    np.multiply(a, 4, out=tmp)
    out -= tmp
    return out


def _weights(h: int, w: int, sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """``(1, h, w)``: each pixel's total neighbour weight (times 12) on a grid whose ``(top,
    bottom, left, right)`` sides are the image's edges where ``sides`` says so and border on
    more pixels elsewhere."""
    top, bottom, left, right = sides
    ones = np.zeros((1, h + 2, w + 2))
    ones[:, 1 - (not top) : h + 1 + (not bottom), 1 - (not left) : w + 1 + (not right)] = 1
    return _stencil(ones, np.empty_like(ones), np.empty_like(ones))[:, 1:-1, 1:-1]


def _blocks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four pixels of every 2x2 block of ``(..., h, w)`` (``h``, ``w`` even), as views."""
    return a[..., 0::2, 0::2], a[..., 1::2, 0::2], a[..., 0::2, 1::2], a[..., 1::2, 1::2]


class _Level:
    """One grid of the solver: unknown mask ``u`` ``(1, h, w)`` (``h`` and ``w`` made even
    with a known row or column, so that 2x2 blocks tile it), each pixel's total weight ``s``,
    ``q = u / s`` (a Jacobi step from a residual) and the float32 buffers of the V-cycle."""

    # a grid with at most this many unknowns is solved exactly, by its dense inverse (larger
    # inverses cost more than the coarse grids' sweeps they spare)
    DENSE = 64

    def __init__(self, unknown: np.ndarray, sides: tuple[bool, bool, bool, bool], channels: int,
                 sweeps: int) -> None:
        hr, wr = unknown.shape
        h, w = hr + hr % 2, wr + 1 + (wr + 1) % 2  # a known last column: see _stencil
        u = np.zeros((1, h, w), bool)
        u[0, :hr, :wr] = unknown
        s = np.ones((1, h, w))
        s[:, :hr, :wr] = _weights(hr, wr, sides)
        s[~u] = 1.0
        self.u, self.s, self.q = u.astype(np.float32), s.astype(np.float32), (u / s).astype(np.float32)
        self.sweeps = sweeps
        shape = (channels, h, w)
        self.e0, self.e1, self.t, self.r = (np.zeros(shape, np.float32) for _ in range(4))
        self.coarse: _Level | None = None
        self.inverse: np.ndarray | None = None
        self.where = np.flatnonzero(u)
        if len(self.where) <= self.DENSE:
            self.inverse = np.linalg.inv(_dense(u[0], s[0])).astype(np.float32)
            return
        # a coarse pixel is unknown only when its whole block is: blocks holding a kept pixel stay
        # fixed, so every coarse system keeps a boundary and stays non-singular
        a, b, c, d = _blocks(u[0])
        uc = a & b & c & d
        if uc.any():
            # its real extent only: the padding is no image edge for its weights
            self.coarse = _Level(uc[:, : (wr + 1) // 2], sides, channels, sweeps)

    def _jacobi(self, e: np.ndarray, r: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One Jacobi step ``e + (r - A e) / s`` for ``A e = r``, into ``out``: ``(r + N e) / s``
        on the unknowns, since ``e`` is 0 elsewhere."""
        _stencil(e, out, self.t, padded=True)
        out += r
        out *= self.q
        return out

    def vcycle(self, r: np.ndarray) -> np.ndarray:
        """A symmetric V-cycle for ``A e = r`` from ``e = 0`` (the result is a buffer of this
        level): Jacobi sweeps (the stencil's Jacobi iteration damps every high frequency by 3 or
        more), the coarse grid's correction, the same sweeps again; the coarsest grid solved
        exactly where it is small."""
        e, f = self.e0, self.e1
        if self.inverse is not None:
            e.fill(0)
            c = r.shape[0]
            flat = e.reshape(c, -1)
            flat[:, self.where] = r.reshape(c, -1)[:, self.where] @ self.inverse
            return e
        np.multiply(self.q, r, out=e)
        if self.coarse is None:
            for _ in range(2 * self.sweeps - 1):
                e, f = self._jacobi(e, r, f), e
            return e
        for _ in range(self.sweeps - 1):
            e, f = self._jacobi(e, r, f), e
        self._jacobi(e, r, f)
        f -= e
        f *= self.s  # the residual r - A e, as s times the next Jacobi step
        h, w = r.shape[1:]
        rc = self.coarse.r[:, : h // 2, : w // 2]  # the coarse grid's even padding stays 0
        a, b, c, d = _blocks(f)
        np.add(a, b, out=rc)
        rc += c
        rc += d
        rc *= self.coarse.u[:, : h // 2, : w // 2]
        ec = self.coarse.vcycle(self.coarse.r)[:, : h // 2, : w // 2]
        for block in _blocks(e):
            block += ec
        for _ in range(self.sweeps):
            e, f = self._jacobi(e, r, f), e
        return e


def _dense(unknown: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The system's matrix (times 12) on the ``unknown`` pixels of a small grid (symmetric)."""
    h, w = unknown.shape
    index = np.full((h + 2, w + 2), -1)
    rows, cols = np.nonzero(unknown)
    index[rows + 1, cols + 1] = np.arange(len(rows))
    a = np.diag(s[rows, cols].astype(np.float64))
    for dr, dc, weight in ((-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2), (-1, -1, 1), (-1, 1, 1), (1, -1, 1),
                           (1, 1, 1)):
        j = index[rows + 1 + dr, cols + 1 + dc]
        ok = j >= 0
        a[np.flatnonzero(ok), j[ok]] -= weight
    return a


def _conjugate_gradient(grid: _Level, b: np.ndarray, v: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Solve ``A v = b`` (``(C, h, w)``) on ``grid`` for every channel at once, from ``v``
    (updated in place), by conjugate gradients in float64 preconditioned with one float32
    multigrid V-cycle; each system's scalars are ``(C, 1, 1)``."""
    channels = len(b)

    def dot(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        # einsum, not BLAS: OpenBLAS's threads for a dot product wait milliseconds for a busy core
        return np.einsum("cij,cij->c", a, c).reshape(channels, 1, 1)

    r, p, ap, n, t, z = (np.empty_like(b) for _ in range(6))
    s, u = grid.s.astype(np.float64), grid.u.astype(np.float64)

    def apply(x: np.ndarray, out: np.ndarray) -> np.ndarray:  # A x, x being 0 off the unknowns
        np.multiply(s, x, out=out)
        _stencil(x, n, t, padded=True)
        np.multiply(n, u, out=n)
        out -= n
        return out

    def precondition(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.copyto(grid.r, x, casting="same_kind")
        np.copyto(out, grid.vcycle(grid.r))
        return out

    goal = tol * np.sqrt(dot(b, b))
    np.subtract(b, apply(v, ap), out=r)
    if (np.sqrt(dot(r, r)) <= goal).all():
        return v
    precondition(r, z)
    np.copyto(p, z)
    rz = dot(r, z)
    for _ in range(max_iter):
        apply(p, ap)
        pap = dot(p, ap)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        np.multiply(p, alpha, out=t)
        v += t
        np.multiply(ap, alpha, out=t)
        r -= t
        if (np.sqrt(dot(r, r)) <= goal).all():
            return v
        precondition(r, z)
        rz_next = dot(r, z)
        beta = np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)
        p *= beta
        p += z
        rz = rz_next
    worst = float((np.sqrt(dot(r, r)) / np.maximum(goal / tol, 1e-300)).max())
    raise RuntimeError(
        f"the imputation did not converge in {max_iter} iterations (relative residual "
        f"{worst:.2g}); raise max_iter or tol"
    )


def checked_imputation_args(image: Any, removed: Any, noise: float) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """:func:`noisy_linear_imputation`'s arguments checked: ``(x (H, W, C) float64, masks
    (M, H, W) bool, whether the image was (H, W), whether one mask was given)``."""
    x = np.asarray(image, dtype=np.float64)
    gray = x.ndim == 2
    if gray:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"image must be (H, W, C) or (H, W); got shape {np.shape(image)}")
    mask = np.asarray(removed)
    single = mask.ndim == 2
    if single:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[1:] != x.shape[:2]:
        raise ValueError(f"removed must be (H, W) or (M, H, W) with (H, W) = {x.shape[:2]}; got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("removed must be a boolean (or 0/1) mask")
        mask = mask.astype(bool)
    if mask.reshape(len(mask), -1).all(axis=1).any():
        raise ValueError("every pixel is removed: nothing is left to impute from; keep at least one")
    if noise < 0:
        raise ValueError(f"noise must be 0 or more; got {noise}")
    return x, mask, gray, single


def noisy_linear_imputation(
    image: Any,
    removed: Any,
    *,
    noise: float = 0.01,
    seed: int | np.random.Generator | None = 0,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> np.ndarray:
    """ROAD's noisy linear imputation of the ``removed`` pixels of ``image``.

    Args:
        image: ``(H, W, C)`` (or ``(H, W)``).
        removed: ``(H, W)`` boolean mask, or ``(M, H, W)`` masks to impute ``M`` copies at once.
        noise: standard deviation of the Gaussian noise added to the imputed pixels, in the
            image's units (ROAD uses 0.01 on ImageNet-normalised images); 0 for none.
        seed: seed or ``numpy.random.Generator`` for the noise.
        tol: the solver stops at ``||r|| <= tol * ||b||`` for every system.
        max_iter: conjugate gradient iterations at most (a few dozen are typical).

    Returns:
        ``(H, W, C)`` (or ``(M, H, W, C)`` for several masks) float64 images: kept pixels
        unchanged, removed ones imputed.
    """
    x, mask, gray, single = checked_imputation_args(image, removed, noise)
    h, w, c = x.shape
    u = mask[..., None]  # (M, H, W, 1): True where unknown
    out = np.where(u, 0.0, x[None])
    for k in range(len(mask)):
        rows, cols = np.flatnonzero(mask[k].any(axis=1)), np.flatnonzero(mask[k].any(axis=0))
        if rows.size == 0:
            continue
        # only the unknowns' bounding box is solved, channels first (each channel's plane
        # contiguous); the kept pixels around it enter through b
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        one = mask[k, y0:y1, x0:x1]
        grid = _Level(one, (y0 == 0, y1 == h, x0 == 0, x1 == w), c, sweeps=2)
        ry0, ry1, rx0, rx1 = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
        ring = np.ascontiguousarray(out[k, ry0:ry1, rx0:rx1].transpose(2, 0, 1))
        ring = _stencil(ring, np.empty_like(ring), np.empty_like(ring))
        b = np.zeros((c, *grid.u.shape[1:]))
        b[:, : y1 - y0, : x1 - x0] = one * ring[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0]
        v = np.zeros_like(b)
        if k and not (mask[k] < mask[k - 1]).any():  # nested masks: the last solution is close
            v[:, : y1 - y0, : x1 - x0] = one * out[k - 1, y0:y1, x0:x1].transpose(2, 0, 1)
        v = _conjugate_gradient(grid, b, v, tol, max_iter)
        out[k, y0:y1, x0:x1] += (one * v[:, : y1 - y0, : x1 - x0]).transpose(1, 2, 0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if noise > 0:
        out += u * noise * rng.standard_normal(out.shape)
    if gray:
        out = out[..., 0]
    return out[0] if single else out


@dataclass(repr=False)  # MetricResult's summary, not the arrays
class RoadResult(MetricResult):
    """ROAD curves per image.

    Attributes (beyond :class:`~camlens.metrics.MetricResult`'s):
        percentages: ``(P,)`` the fractions removed.
        morf: ``(N, P)`` scores with the most relevant pixels removed (``None`` if not asked).
        lerf: ``(N, P)`` scores with the least relevant removed (``None`` if not asked).
        clean: ``(N,)`` the score on the unmodified image.
        combined: ``(N,)`` ``mean_p (LeRF - MoRF) / 2`` when both orders ran, else ``None``.
    ``per_image`` is ``combined``, or the mean over ``p`` of the one order asked for.
    """

    percentages: np.ndarray = field(default_factory=lambda: np.zeros(0))
    morf: np.ndarray | None = None
    lerf: np.ndarray | None = None
    clean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    combined: np.ndarray | None = None


def road(
    model: Any,
    images: Any,
    maps: Any = None,
    target: Any = None,
    *,
    percentages: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    order: str = "both",
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    score: str = "probability",
    output: int | str | None = None,
    site: int = 0,
    input_index: int | None = None,
) -> RoadResult:
    """ROAD (Rong et al. 2022): the class score after removing a fraction of the pixels by the
    map and imputing them (see :mod:`camlens.metrics.road`).

    Args:
        percentages: fractions of pixels to remove, each in [0, 1).
        order: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first) or
            ``"both"`` (default; gives the combined score).
        noise: imputation noise standard deviation, in the model's input units.
        seed: seed of the noise (the same numbers on every backend).
        The other arguments are those of :func:`camlens.metrics.deletion`. Cost per image:
        ``ceil((len(percentages) * orders + 1) / batch_size)`` model calls.
    """
    orders = {"morf": ["morf"], "lerf": ["lerf"], "both": ["morf", "lerf"]}.get(order)
    if orders is None:
        raise ValueError(f"order must be 'morf', 'lerf' or 'both'; got {order!r}")
    pct = np.asarray(percentages, dtype=np.float64).reshape(-1)
    if pct.size == 0 or ((pct < 0) | (pct >= 1)).any():
        raise ValueError(f"percentages must be fractions in [0, 1), e.g. (0.1, ..., 0.9); got {list(percentages)}")
    prob = setup(model, images, maps, target, score=score, batch_size=batch_size, output=output,
                 site=site, input_index=input_index)
    prob.resolve_classes()
    rng = np.random.default_rng(seed)
    x = prob.images
    n_img, h, w = x.shape[:3]
    counts = np.floor(pct * h * w + 0.5).astype(np.int64)
    curves = {o: np.empty((n_img, pct.size)) for o in orders}
    clean = np.empty(n_img)
    bs = prob.batch_size
    for n in range(n_img):
        masks = [stable_ranks(prob.maps[n], descending=(o == "morf"))[None] < counts[:, None, None] for o in orders]
        filled = noisy_linear_imputation(x[n], np.concatenate(masks), noise=noise, seed=rng)
        stream = np.concatenate([x[n][None], filled.astype(np.float32)])  # unmodified first
        scores = np.empty(len(stream))
        for i in range(0, len(stream), bs):
            part = stream[i : i + bs]
            scores[i : i + len(part)] = prob.run(
                pinned(prob.arrays, n, prob.which, part), np.full(len(part), n),
                clean=np.arange(i, i + len(part)) == 0,
            )
        clean[n] = scores[0]
        for k, o in enumerate(orders):
            curves[o][n] = scores[1 + k * pct.size : 1 + (k + 1) * pct.size]
    morf, lerf = curves.get("morf"), curves.get("lerf")
    combined = None if morf is None or lerf is None else ((lerf - morf) / 2.0).mean(axis=1)
    if combined is not None:
        per_image, better, name = combined, True, "road"
    elif morf is not None:
        per_image, better, name = morf.mean(axis=1), False, "road_morf"
    else:
        assert lerf is not None
        per_image, better, name = lerf.mean(axis=1), True, "road_lerf"
    return RoadResult(name, per_image, better, prob.describe(), percentages=pct, morf=morf,
                      lerf=lerf, clean=clean, combined=combined)
