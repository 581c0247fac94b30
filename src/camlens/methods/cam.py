"""CAM, the original Class Activation Mapping."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..graph import GraphNode, LayerGraph
from .base import CAMMethod, SiteData, register

__all__ = ["CAM", "head_weights"]

#: what an adapter says a layer is, for the head search (``adapter.layer_role(node)``)
ROLES = ("global_pool", "pass", "dense", "activation")


@register
class CAM(CAMMethod):
    """CAM: channels weighted by the Dense weights of the explained class.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

    Needs a head of GlobalAveragePooling then Dense; ``W[n, c]`` is the Dense weight from
    channel ``c`` to the class explained for sample ``n``.

    map ``= sum_c W[n, c] A[n, :, :, c]``, without relu, as in the paper: negative evidence
    stays visible. For a logit score ``S = (1/Z) sum_ijc W[c] A[i, j, c] + b`` the gradient
    is ``G = W / Z`` at every position, so Grad-CAM on such a head equals ``relu(CAM) / Z``.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import CAM, SiteData
        >>> A = np.stack([np.eye(2), np.ones((2, 2))], axis=-1)[None]  # (1, 2, 2, 2)
        >>> CAM()(SiteData(A, head_weights=np.array([[2.0, -1.0]])))[0].tolist()
        [[1.0, -1.0], [-1.0, 1.0]]
    """

    name = "cam"
    needs_gradients = False
    needs_head_weights = True

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, _ = self._checked(data)
        if data.head_weights is None:
            raise ValueError(
                "cam needs head_weights, the Dense weights after a GlobalAveragePooling layer; "
                "for a model without a GlobalAveragePooling + Dense head use method='gradcam'"
            )
        weights = np.asarray(data.head_weights, dtype=np.float32)
        expected = (acts.shape[0], acts.shape[3])
        if weights.shape != expected:
            raise ValueError(f"cam: head_weights must be (N, C) = {expected}; got {weights.shape}")
        return np.einsum("nhwc,nc->nhw", acts, weights).astype(np.float32)


def head_weights(
    graph: LayerGraph,
    node: GraphNode,
    output_index: int,
    role: Callable[[GraphNode], str | None],
    kernel: Callable[[GraphNode], np.ndarray],
) -> np.ndarray:
    """``(C, classes)``: the kernel of the dense layer that follows ``node`` through global
    average pooling (only pass-through layers such as dropout or flatten between) and gives
    output ``output_index`` (only activations such as a softmax after it). ``role(n)`` is one
    of :data:`ROLES` or ``None``, and ``kernel(n)`` the dense layer's ``(in, out)`` weights:
    what the adapter says of its layers. Raises ``ValueError`` naming what the model has
    instead."""
    succ = graph.successors()
    by_id = {n.id: n for n in graph.nodes}
    cur, pooled, walked, dense = node.id, False, [], None
    while len(succ[cur]) == 1:
        cur = succ[cur][0]
        n = by_id[cur]
        walked.append(n.path)
        if not pooled and role(n) == "global_pool":
            pooled = True
        elif pooled and role(n) == "dense":
            dense = n
            break
        elif not (pooled and role(n) == "pass"):
            break
    if dense is None:
        raise ValueError(
            f"CAM needs the layer to feed global average pooling and then one dense layer that "
            f"gives the scores; after {node.path!r} the model has {' -> '.join(walked) or 'nothing'}. "
            "Use method='gradcam', which equals CAM on such heads and works on any model."
        )
    weights = np.asarray(kernel(dense), dtype=np.float32)
    channels = (node.shape or (None,))[-1]
    if weights.shape[0] != channels:
        raise ValueError(
            f"CAM: the {dense.kind} layer {dense.path!r} takes {weights.shape[0]} features; "
            f"{node.path!r} has {channels} channels"
        )
    nid, out = dense.id, graph.outputs[output_index]
    while nid != out:
        nxt = succ[nid]
        if len(nxt) != 1 or role(by_id[nxt[0]]) not in ("activation", "pass"):
            raise ValueError(
                f"CAM: the {dense.kind} layer {dense.path!r} after {node.path!r} does not produce "
                f"output {graph.output_names[output_index]!r}"
            )
        nid = nxt[0]
    return weights
