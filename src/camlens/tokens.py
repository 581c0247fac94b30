"""Token layers of vision transformers as image grids, so that CAM methods apply to them.

A ViT cuts the image into ``gh x gw`` patches and runs a sequence of ``T`` tokens: a few extra
tokens first (a class token; some models add a distillation token or register tokens), then one
token per patch in row-major order (row by row, left to right). A layer output ``(N, T, C)``
therefore holds an ``(N, gh, gw, C)`` map once the extra tokens are set aside.

Without an explicit grid the layout is inferred from ``T`` alone: ``T`` a perfect square means no
extra token, ``T - 1`` a perfect square means one class token (197 = 1 + 14 x 14). Anything else
needs the grid: ``grid=(gh, gw)``, and ``T - gh * gw`` leading tokens are extra.

Every function here is pure numpy: inputs are never modified.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "TokenGrid",
    "check_grid",
    "infer_grid",
    "guess_grid",
    "tokens_to_grid",
    "split_tokens",
    "grid_to_tokens",
]


class TokenGrid(NamedTuple):
    """How ``extra + height * width`` tokens are laid out: ``extra`` leading tokens (class,
    distillation, registers), then the ``height x width`` patch grid in row-major order."""

    height: int
    width: int
    extra: int

    @property
    def tokens(self) -> int:
        return self.extra + self.height * self.width


def _square_side(n: int) -> int | None:
    side = math.isqrt(n) if n > 0 else 0
    return side if side > 1 and side * side == n else None


def guess_grid(num_tokens: int) -> TokenGrid | None:
    """The layout of ``num_tokens`` tokens without a given grid, or ``None`` when ``T`` and
    ``T - 1`` are not perfect squares of a side above 1 (196 -> 14x14; 197 -> class token +
    14x14)."""
    for extra in (0, 1):
        side = _square_side(num_tokens - extra)
        if side is not None:
            return TokenGrid(side, side, extra)
    return None


def check_grid(grid: object, argname: str = "grid") -> tuple[int, int]:
    """``grid`` as ``(gh, gw)``; an int ``g`` means ``(g, g)``. Raises ``ValueError`` otherwise."""
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        grid = (int(grid), int(grid))
    if (
        not isinstance(grid, Sequence)
        or len(grid) != 2
        or not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        raise ValueError(
            f"{argname} must be (grid_height, grid_width) in patches, two positive integers, "
            f"e.g. {argname}=(14, 14); got {grid!r}"
        )
    return int(grid[0]), int(grid[1])


def infer_grid(num_tokens: int, grid: object = None, *, argname: str = "grid") -> TokenGrid:
    """The :class:`TokenGrid` of a ``(N, num_tokens, C)`` token layer.

    ``grid``: ``(gh, gw)`` patches (an int ``g`` means ``(g, g)``), or ``None`` to infer a square
    grid with no or one leading class token. ``argname`` is the name the error messages give the
    grid (``explain`` calls it ``token_grid``).
    """
    if grid is not None:
        gh, gw = check_grid(grid, argname)
        if gh * gw > num_tokens:
            raise ValueError(
                f"{argname}=({gh}, {gw}) needs {gh * gw} patch tokens, but the layer has only "
                f"{num_tokens} tokens; give the grid of patches the model cuts the image into "
                "(image size / patch size)"
            )
        return TokenGrid(gh, gw, num_tokens - gh * gw)
    found = guess_grid(num_tokens)
    if found is None:
        raise ValueError(
            f"{num_tokens} tokens do not form a square grid of patches, with or without one "
            f"class token ({num_tokens} and {num_tokens - 1} are not squares of a side above 1); "
            f"pass the patch grid, {argname}=(grid_height, grid_width), and the "
            f"{num_tokens} - grid_height * grid_width leading tokens are set aside as extra "
            "tokens (class, distillation, registers)"
        )
    return found


def _check_tokens(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3:
        raise ValueError(f"{what} must be (N, tokens, channels); got shape {a.shape}")
    return a


def split_tokens(
    tokens: np.ndarray, grid: object = None, *, argname: str = "grid"
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, T, C)`` -> ``(extra, grid_map)``: the ``(N, k, C)`` leading extra tokens and the
    ``(N, gh, gw, C)`` patch tokens as a map (copies; ``tokens`` is left as it is)."""
    a = _check_tokens(tokens, "tokens")
    layout = infer_grid(a.shape[1], grid, argname=argname)
    n, _, c = a.shape
    extra = a[:, : layout.extra].copy()
    patches = a[:, layout.extra :].reshape(n, layout.height, layout.width, c).copy()
    return extra, patches


def tokens_to_grid(tokens: np.ndarray, grid: object = None, *, argname: str = "grid") -> np.ndarray:
    """``(N, T, C)`` -> ``(N, gh, gw, C)``: the patch tokens as a map, extra tokens dropped."""
    return split_tokens(tokens, grid, argname=argname)[1]


def grid_to_tokens(grid_map: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """The inverse of :func:`split_tokens`: ``(B, gh, gw, C)`` patch maps and ``(N, k, C)``
    extra tokens (``N`` equal to ``B``, or 1 to use the same extra tokens for every map) ->
    ``(B, k + gh * gw, C)`` tokens, the extra ones first and unchanged. For methods that replace
    a token layer's activations (Ablation-CAM)."""
    g = np.asarray(grid_map)
    e = np.asarray(extra)
    if g.ndim != 4:
        raise ValueError(f"grid_map must be (N, grid_height, grid_width, channels); got shape {g.shape}")
    if e.ndim != 3 or e.shape[2] != g.shape[3] or e.shape[0] not in (1, g.shape[0]):
        raise ValueError(
            f"extra tokens must be (N, k, {g.shape[3]}) with N = {g.shape[0]} or 1, to go with "
            f"grid_map {g.shape}; got shape {e.shape}"
        )
    b, gh, gw, c = g.shape
    e = np.broadcast_to(e, (b, *e.shape[1:]))
    return np.concatenate([e, g.reshape(b, gh * gw, c)], axis=1)
