"""Methods that read a vision transformer's attention probabilities: attention rollout, LeGrad.

They use no layer: ``explain`` runs the model once with every attention module's probabilities
``P[b]`` ``(N, heads, T, T)`` recorded, block by block in the order they ran (and, for LeGrad,
the gradients ``dS/dP[b]`` of the target score), and the method turns them into a map on the
patch grid. ``T`` tokens are laid out as in :mod:`camlens.tokens`: ``T - gh * gw`` leading extra
tokens (the class token first), then the ``gh x gw`` patches row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ..tokens import infer_grid
from .base import CAMMethod, register

__all__ = ["AttentionData", "AttentionMethod", "Rollout", "LeGrad"]


@dataclass(frozen=True)
class AttentionData:
    """What an attention method receives.

    attentions:          per attention call, ``(N, heads, T, T)`` probabilities (rows: queries,
                         summing to 1 over the keys), in the order the blocks ran.
    attention_gradients: per call, the gradient of each sample's score with respect to them,
                         or ``None`` for methods that need none.
    token_grid:          ``(gh, gw)`` patches, or ``None`` to infer a square grid with no or one
                         class token (as ``explain(token_grid=...)``).
    """

    attentions: Sequence[np.ndarray]
    attention_gradients: Sequence[np.ndarray] | None = None
    token_grid: Any = None


class AttentionMethod(CAMMethod):
    """Base of the methods that read attention probabilities: ``method(data) -> (N, gh, gw)``."""

    needs_layer = False
    needs_gradients = False
    needs_attention: ClassVar[bool] = True

    def _checked_attention(self, data: AttentionData) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        probs = [np.asarray(p, dtype=np.float64) for p in data.attentions]
        if not probs:
            raise ValueError(f"{self.name} needs the attention probabilities of at least one block; none were given")
        first = probs[0].shape
        for b, p in enumerate(probs):
            if p.ndim != 4 or p.shape[2] != p.shape[3] or p.shape[0] != first[0] or p.shape[2] != first[2]:
                raise ValueError(
                    f"{self.name}: attention {b} has shape {p.shape}; every block must give "
                    f"(N, heads, T, T) with the same N and T as the first, {first}"
                )
        grads = None
        if self.needs_gradients:
            if data.attention_gradients is None or len(data.attention_gradients) != len(probs):
                raise ValueError(f"{self.name} needs one attention gradient per block")
            grads = [np.asarray(g, dtype=np.float64) for g in data.attention_gradients]
            for b, (g, p) in enumerate(zip(grads, probs)):
                if g.shape != p.shape:
                    raise ValueError(f"{self.name}: attention gradient {b} {g.shape} and attention {p.shape} differ")
        return probs, grads

    def _grid(self, tokens: np.ndarray, data: AttentionData) -> np.ndarray:
        """``(N, T)`` values per token -> ``(N, gh, gw)`` on the patch grid (extra tokens dropped)."""
        layout = infer_grid(tokens.shape[1], data.token_grid, argname="token_grid")
        return tokens[:, layout.extra:].reshape(len(tokens), layout.height, layout.width).astype(np.float32)

    def _blocks(self, probs: list[Any], blocks: Sequence[int] | None) -> list[int]:
        if blocks is None:
            return list(range(len(probs)))
        for b in blocks:
            if not -len(probs) <= b < len(probs):
                raise ValueError(f"{self.name}: block {b} is out of range: the model ran {len(probs)} attention(s)")
        return [b % len(probs) for b in blocks]


def _check_blocks(blocks: Any) -> tuple[int, ...] | None:
    if blocks is None:
        return None
    if isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool):
        blocks = [blocks]
    if (not isinstance(blocks, Sequence) or not blocks
            or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in blocks)):
        raise ValueError(f"blocks must be None (every block) or block indices, e.g. blocks=[-1]; got {blocks!r}")
    return tuple(int(b) for b in blocks)


@register
class Rollout(AttentionMethod):
    """Attention rollout: how much the class token's final state draws on each patch token,
    following attention through the residual connections of every block.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.

    Per block ``b``: the heads fused, ``F = mean_h P[b]`` (``head_fusion="max"``/``"min"``: the
    maximum/minimum over heads); with ``discard_ratio = r > 0`` the ``floor(r * T * T)`` smallest
    entries of ``F`` of each sample are set to 0 (never the class token's attention to itself);
    ``A[b] = 0.5 F + 0.5 I``, each row divided by its sum. Rollout ``R = A[B-1] ... A[1] A[0]``;
    the map is the class token's row of ``R`` (token 0) over the patch tokens, on the patch
    grid. A model without extra tokens (it averages its tokens) gets the mean of every row.

    The discard step and its protected entry follow the widely used implementation of the
    paper (jacobgil/vit-explain); the paper itself fuses heads by the mean and discards nothing,
    the defaults here.

    Example (one block, one head, a class token and 4 patches: each token attends to itself)::

        >>> import numpy as np
        >>> from camlens.methods.attention import AttentionData, Rollout
        >>> P = np.eye(5)[None, None]
        >>> Rollout()(AttentionData([P]))[0].tolist()
        [[0.0, 0.0], [0.0, 0.0]]
    """

    name = "rollout"
    cost = ""

    def __init__(self, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        if head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"head_fusion must be 'mean', 'max' or 'min'; got {head_fusion!r}")
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) \
                or not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be a number in [0, 1), e.g. 0.9; got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def __call__(self, data: AttentionData) -> np.ndarray:  # type: ignore[override]
        probs, _ = self._checked_attention(data)
        n, _, t, _ = probs[0].shape
        eye = np.eye(t)
        rollout = np.broadcast_to(eye, (n, t, t))
        for p in probs:
            fused = getattr(p, self.head_fusion)(axis=1)
            k = int(self.discard_ratio * t * t)
            if k:
                flat = fused.reshape(n, t * t).copy()
                order = np.argsort(flat, axis=1, kind="stable")
                for i in range(n):
                    drop = order[i][order[i] != 0][:k]
                    flat[i, drop] = 0.0
                fused = flat.reshape(n, t, t)
            a = 0.5 * fused + 0.5 * eye
            a = a / a.sum(axis=-1, keepdims=True)
            rollout = a @ rollout
        layout = infer_grid(t, data.token_grid, argname="token_grid")
        row = rollout[:, 0] if layout.extra else rollout.mean(axis=1)
        return self._grid(row, data)


@register
class LeGrad(AttentionMethod):
    """LeGrad: the positive gradients of the score with respect to each block's attention
    probabilities, averaged over heads, queries and blocks.

    Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature
    Formation Sensitivity", 2024; as torchcam 0.5.0's ``LeGrad`` computes it.

    Per block ``b``: ``E[b][n, k] = mean_{h, q} relu(dS/dP[b][n, h, q, k])`` (query rows ``q`` and
    heads ``h``), the patch keys ``k`` laid on the grid; map ``= mean_b E[b]`` over the blocks
    used (``blocks``: indices into the attention calls in the order they ran, e.g. ``[-1]`` for
    the last; ``None``: every one). The attention values themselves do not enter the map.

    Differences from torchcam and the paper, by design: ``S`` is the explained target's score
    of the whole model for every block. The paper and torchcam differentiate a score per block,
    that block's tokens passed through the final norm and classifier (torchcam pools them by
    their mean by default); that needs the model's head and how it pools, which camlens cannot
    read off any model, and it ties LeGrad to class targets. On the last block, with the
    model's own pooling, the two are the same: the parity test compares that.

    Example (one block, one head, a class token and 4 patches)::

        >>> import numpy as np
        >>> from camlens.methods.attention import AttentionData, LeGrad
        >>> P = np.full((1, 1, 5, 5), 0.2)
        >>> G = np.zeros((1, 1, 5, 5)); G[0, 0, :, 1] = 1.0; G[0, 0, 0, 4] = -3.0
        >>> LeGrad()(AttentionData([P], [G]))[0].tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """

    name = "legrad"
    needs_gradients = True

    def __init__(self, blocks: Sequence[int] | int | None = None) -> None:
        self.blocks = _check_blocks(blocks)

    def __call__(self, data: AttentionData) -> np.ndarray:  # type: ignore[override]
        probs, grads = self._checked_attention(data)
        assert grads is not None
        used = self._blocks(probs, self.blocks)
        relevance = np.mean([np.maximum(grads[b], 0.0).mean(axis=(1, 2)) for b in used], axis=0)
        return self._grid(relevance, data)
