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

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016:
    ``M_c = sum_k w_k^c f_k``, with ``w^c`` the Dense weights into class ``c``.

    Needs a head of GlobalAveragePooling then Dense; ``W[n, c]`` is the Dense weight from
    channel ``c`` to the class explained for sample ``n``.

    **What it explains: the class logit.** The weights are the Dense layer's, before any
    softmax, so the map decomposes the pre-softmax class score ``z_c = mean_ij M_c + b_c``, as in
    the paper, whatever the model ends in. ``camlens.explain(..., method="cam")`` therefore
    turns the default target (each sample's top class; a ``ClassScore``) into
    ``camlens.targets.Logit`` of the same class: ``Explanation.target`` reads "logit of the top
    class" and ``Explanation.scores`` are the logits. The class itself is the same (the top
    probability is the top logit).

    **Negative evidence.** ``relu=False`` (default) keeps the signed map, as the paper and its
    code do (they min-max scale the raw weighted sum): ``Explanation.raw_maps`` holds it, and
    the min-max normalised ``Explanation.maps`` put the most negative evidence at 0, so zero
    evidence is somewhere in between. ``CAM(relu=True)`` keeps only the evidence for the class
    (``max(M_c, 0)``), as Grad-CAM does.

    **CAM and Grad-CAM.** For a logit ``S = (1/Z) sum_ijc W[c] A[i, j, c] + b`` (``Z = h * w``)
    the gradient is ``G = W / Z`` at every position, so Grad-CAM's channel weights are ``W / Z``
    and Grad-CAM with ``targets.Logit`` is ``relu(CAM) / Z``: after normalisation
    ``CAM(relu=True)`` and Grad-CAM of the logit give the same maps. Grad-CAM's default target
    is the model's output, a softmax probability ``p_c``, whose gradient is
    ``p_c (W_c - sum_k p_k W_k) / Z``: a map of class ``c`` against the others, so at the
    defaults the two methods differ.

    Example::

        >>> import numpy as np
        >>> from camlens.methods import CAM, SiteData
        >>> A = np.stack([np.eye(2), np.ones((2, 2))], axis=-1)[None]  # (1, 2, 2, 2)
        >>> CAM()(SiteData(A, head_weights=np.array([[2.0, -1.0]])))[0].tolist()
        [[1.0, -1.0], [-1.0, 1.0]]
        >>> CAM(relu=True)(SiteData(A, head_weights=np.array([[2.0, -1.0]])))[0].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """

    name = "cam"
    needs_gradients = False
    needs_head_weights = True
    #: the score the head weights decompose: explain() explains the logit, not a probability
    explains_logit = True

    def __init__(self, relu: bool = False) -> None:
        if not isinstance(relu, (bool, np.bool_)):
            raise TypeError(f"cam: relu must be True or False; got {relu!r}")
        self.relu = bool(relu)

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
        cam = np.einsum("nhwc,nc->nhw", acts, weights).astype(np.float32)
        return np.maximum(cam, 0) if self.relu else cam


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
