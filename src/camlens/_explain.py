"""``camlens.explain``: one call for every method, model and target."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .adapters import adapt
from ._args import batches, positive_int
from ._restore import interruptible
from .access import ModelAccess, rule_runs
from .adapters.base import Capture, ModelAdapter
from .explanation import Explanation, Site, finish_maps
from .graph import (GraphNode, LayerGraph, LayerReport, choose_layers, find_nodes, grid_arg, layer_report,
                    model_order)
from .methods import PixelMethod, get_method
from .methods.attention import AttentionData
from .tokens import infer_grid, split_tokens, tokens_to_grid
from .targets import ClassScore, Logit, Target, as_target

__all__ = ["explain", "layers", "adapt"]


def _resolve_layer(
    graph: LayerGraph, model: Any, layer: Any, outputs: Sequence[int], token_grid: Any = None
) -> tuple[list[GraphNode], str]:
    if layer is None or (isinstance(layer, str) and layer == "auto"):
        choice = choose_layers(graph, outputs, token_grid)
        return choice.nodes, choice.reason
    specs = layer if isinstance(layer, (list, tuple)) else [layer]
    nodes: list[GraphNode] = []
    for spec in specs:
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            names = [lyr.name for lyr in getattr(model, "layers", [])]
            if not -len(names) <= spec < len(names):
                raise ValueError(f"layer index {spec} is out of range: the model has {len(names)} layers")
            spec = names[spec]
        if not isinstance(spec, str):
            raise TypeError(f"layer must be 'auto', a name, an index or a list of them; got {spec!r}")
        found = find_nodes(graph, spec)
        for n in found:
            if n.is_input:
                raise ValueError(f"{spec!r} is a model input, not a layer; pick a layer after it")
            if n.unusable is not None:
                raise ValueError(f"layer {n.label!r} cannot be explained: {n.unusable}")
            if n.shape is not None and len(n.shape) == 2:  # ViT tokens: is there a patch grid?
                if n.shape[0] is not None:
                    infer_grid(n.shape[0], grid_arg(n, token_grid), argname="token_grid")
            elif not (n.shape is not None and len(n.shape) == 3):
                raise ValueError(
                    f"layer {n.path!r} has output shape {n.shape} (without batch), not a spatial "
                    "(height, width, channels) map, so no CAM can be drawn from it. "
                    "`camlens.layers(model)` lists the spatial layers."
                )
        nodes.extend(n for n in found if n not in nodes)
    return nodes, "given by the caller: " + ", ".join(n.label for n in nodes)


def _site_input(graph: LayerGraph, node: GraphNode, anc: dict[int, frozenset[int]]) -> int:
    by_id = {n.id: n for n in graph.nodes}
    spatial = [i for i in sorted(anc[node.id]) if by_id[graph.inputs[i]].spatial]
    return spatial[0] if spatial else 0


@interruptible
def explain(
    model: Any,
    inputs: Any,
    method: str = "gradcam",
    target: Any = None,
    layer: Any = "auto",
    *,
    output: int | str | None = None,
    normalize: str = "minmax",
    batch_size: int = 16,
    token_grid: Any = None,
) -> Explanation:
    """Explain the model's ``target`` score on ``inputs`` with ``method`` at ``layer``.

    Args:
        model: a Keras 3 Functional, Sequential or (built) subclassed model (nested and
            shared submodels, several inputs and outputs are fine) or a ``torch.nn.Module``.
            It is left exactly as it was.
        inputs: a batch ``(N, H, W, C)`` or one image ``(H, W, C)``, preprocessed as the model
            expects; for several inputs a list (or a dict by input name). PyTorch modules also
            take ``(N, C, H, W)`` tensors or arrays.
        method: a name from ``camlens.methods.available_methods()`` or a
            ``camlens.methods.CAMMethod`` instance with its own settings
            (``ScoreCAM(batch_size=8)``, ``IntegratedGradients(steps=128)``); README's
            "Methods" groups them by family. Layer methods from gradients: "cam", "gradcam",
            "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam",
            "gradcamelementwise", "finercam" (the class against its nearest classes),
            "smoothgradcam++"; from activations only: "eigencam", "kpcacam", "dff" (concepts by
            non-negative factorisation); rerunning the model: "scorecam", "sscam", "iscam",
            "fastscorecam", "ablationcam" (only the layers after ``layer`` rerun). Pixel
            attributions (no layer; one map per image input, details in
            ``Explanation.details``): from input gradients "saliency", "smoothgrad",
            "integratedgradients", "inputxgradient", "gradientshap", "guidedbackprop",
            "guidedgradcam" (Guided Backprop times the layer's Grad-CAM), "fullgrad" (plus the
            gradient at every convolution and batch-norm bias); relevance propagation "lrp",
            "deeplift"; from reruns "occlusion", "rise", "lime", "kernelshap" (superpixels).
            Vision transformers: "rollout", "legrad" (attention maps of every block; Keras
            MultiHeadAttention, timm, torch MultiheadAttention, Hugging Face ViT).
        target: what score to explain: ``None`` (each sample's top class), a class index, a list
            with one index per sample, a ``camlens.targets.Target`` (``Logit``,
            ``RegressionScore``, ``Similarity``, ``SegmentationRegion``...) or a callable
            ``fn(output) -> (N,)``.
        layer: ``"auto"`` (see ``camlens.layers``), a layer path like ``"encoder/conv2d_5"``
            (``"path#1"`` for its second call), a layer index, or a list of them.
        output: for models with several outputs, which one (index or name) the target reads.
        normalize: "minmax" or "percentile", applied to each map.
        batch_size: samples per forward/backward pass, and the most inputs of any one model
            run: where a method reruns the model, its own ``batch_size`` (``ScoreCAM(batch_size=8)``:
            masked copies built at a time) is run in parts of at most this many.
        token_grid: for vision transformers, ``(gh, gw)`` patches of a token layer ``(T, C)``;
            ``T - gh * gw`` leading tokens (class, distillation, registers) are set aside. Without
            it ``T`` or ``T - 1`` must be a perfect square (197 = class token + 14x14). The map
            is drawn on the patch grid (see ``camlens.tokens``).

    Returns:
        an :class:`~camlens.explanation.Explanation` with one map per call site.

    Example::

        exp = camlens.explain(model, images)                 # Grad-CAM of the top class
        exp.map.shape                                        # (N, H, W), values in [0, 1]
        exp.overlay(images)                                  # uint8 RGB
    """
    adapter = adapt(model)
    arrays = adapter.prepare(inputs)
    tgt: Target = as_target(target, output)
    graph = adapter.graph()
    out_idx = tgt.output_indices(graph.output_names)
    algo = get_method(method)
    if getattr(algo, "explains_logit", False) and type(tgt) is ClassScore:
        # CAM's weights are the Dense layer's, before any softmax: the map is of the logit, so
        # the scores and the target's name must be too, not the probability
        tgt = Logit(tgt.index, tgt.output)
    retarget = getattr(algo, "retarget", None)
    if retarget is not None:  # a method that explains a score of its own (Finer-CAM's contrast)
        tgt = retarget(tgt)
    positive_int("explain", "batch_size", batch_size)
    if getattr(algo, "needs_attention", False):
        if not (layer is None or layer == "auto"):
            raise ValueError(
                f"{algo.name} reads the attention probabilities of every block and uses no layer; "
                f"drop layer={layer!r}"
            )
        return _explain_attention(adapter, graph, arrays, algo, tgt, normalize, batch_size, token_grid)
    if not algo.needs_layer:
        if not (layer is None or layer == "auto"):
            raise ValueError(
                f"{algo.name} attributes the score to input pixels and uses no layer; drop "
                f"layer={layer!r}"
            )
        return _explain_pixels(adapter, graph, arrays, algo, tgt, normalize, batch_size)
    nodes, reason = _resolve_layer(graph, model, layer, out_idx, token_grid)
    # a pixel method weighted by a layer method's map (Guided Grad-CAM): the layer method first
    cam = get_method(algo.cam_method) if isinstance(algo, PixelMethod) and algo.cam_method else algo

    outputs, scores, parts = _capture(adapter, arrays, nodes, tgt, cam.needs_gradients, batch_size)
    class_idx = tgt.class_indices(outputs, graph.output_names)
    boxes = _explained_boxes(tgt, parts, graph, arrays[0].shape[0], batch_size)
    anc = graph.input_ancestry()
    per_site: list[tuple[np.ndarray, np.ndarray, Site, dict[str, Any]]] = []
    for k, node in enumerate(nodes):
        acts = np.concatenate([p.sites[k].activations for p in parts])
        grads = np.concatenate([p.sites[k].gradients for p in parts]) if cam.needs_gradients else None
        site_shape = node.shape
        extra = None
        grid = grid_arg(node, token_grid)
        if acts.ndim == 3:  # a ViT token layer (N, T, C): the patch tokens as (N, gh, gw, C)
            extra, acts = split_tokens(acts, grid, argname="token_grid")
            grads = None if grads is None else tokens_to_grid(grads, grid, argname="token_grid")
            site_shape = tuple(acts.shape[1:])
        site = Site(node.path, node.call, _site_input(graph, node, anc), site_shape)
        access = ModelAccess(
            adapter, arrays, site.input_index, tgt, class_idx, batch_size, node=node,
            activations=acts, gradients=grads, extra=extra, token_grid=grid,
            output_index=out_idx[0],
        )
        raw, detail = cam.map_and_details(access)
        size = arrays[site.input_index].shape[1:3]
        shown = finish_maps(raw, (int(size[0]), int(size[1])), normalize, f"{cam.name} @ {site.label}")
        if cam is not algo:
            attributions, info = algo.attribute(access, cam_maps=shown)
            detail = {"attributions": attributions, "cam": shown, **info}
            raw = algo.reduce_channels(attributions)
            shown = finish_maps(raw, raw.shape[1:3], normalize, f"{algo.name} @ {site.label}")
        per_site.append((shown, raw, site, detail))
    exp = _explanation(algo, tgt, reason, arrays, outputs, scores, class_idx, per_site)
    exp.boxes = boxes
    return exp


def _explained_boxes(
    tgt: Target, parts: list[Capture], graph: LayerGraph, total: int, batch_size: int
) -> np.ndarray | None:
    """For a target that explains boxes (:class:`camlens.targets.Detection`), the box of each
    sample ``(N, 4)``, read from each part's outputs by the names that run gave them."""
    if not hasattr(tgt, "boxes"):
        return None
    picked = [b for s, p in zip(batches(total, batch_size), parts)
              for b in tgt.for_samples(s).boxes(p.outputs, p.names or graph.output_names)]
    return np.stack(picked).astype(np.float32)


def _explanation(
    algo: Any, tgt: Target, reason: str, arrays: list[np.ndarray], outputs: list[np.ndarray],
    scores: np.ndarray, class_idx: np.ndarray | None,
    per_site: list[tuple[np.ndarray, np.ndarray, Site, dict[str, Any]]],
) -> Explanation:
    """The Explanation of ``(map, raw map, site, details)`` per site."""
    return Explanation(
        maps=[s[0] for s in per_site],
        raw_maps=[s[1] for s in per_site],
        sites=[s[2] for s in per_site],
        method=algo.name,
        target=tgt.describe(),
        scores=scores,
        class_indices=class_idx,
        reason=reason,
        inputs=arrays,
        outputs=outputs,
        details=[s[3] for s in per_site],
        target_spec=tgt,
    )


def _capture(
    adapter: ModelAdapter, arrays: list[np.ndarray], nodes: Sequence[GraphNode], tgt: Target,
    need_gradients: bool, batch_size: int,
) -> tuple[list[np.ndarray], np.ndarray, list[Capture]]:
    """The batched capture pass: the model's outputs, the target scores, and per batch the
    activations (and gradients) at ``nodes``."""
    parts = [
        adapter.capture([a[s] for a in arrays], nodes, tgt.for_samples(s), need_gradients=need_gradients)
        for s in batches(arrays[0].shape[0], batch_size)
    ]
    return _assembled(parts)


def _assembled(parts: list[Capture]) -> tuple[list[np.ndarray], np.ndarray, list[Capture]]:
    sizes = [len(p.scores) for p in parts]
    if len({len(p.outputs) for p in parts}) > 1 or any(
            o.ndim == 0 or o.shape[0] != n for p, n in zip(parts, sizes) for o in p.outputs):
        # not one row per sample: outputs per image (a detector's dicts, 0.boxes, 0.labels...
        # for each part) are listed in order
        outputs = [o for p in parts for o in p.outputs]
    else:
        outputs = [np.concatenate([p.outputs[i] for p in parts]) for i in range(len(parts[0].outputs))]
    return outputs, np.concatenate([p.scores for p in parts]), parts


def _explain_pixels(
    adapter: ModelAdapter,
    graph: LayerGraph,
    arrays: list[np.ndarray],
    algo: Any,
    tgt: Target,
    normalize: str,
    batch_size: int,
) -> Explanation:
    """Pixel attributions: one map per image input, at the input's resolution."""
    images = [i for i, a in enumerate(arrays) if a.ndim == 4]
    fused = _fused_capture(adapter, arrays, images, algo, tgt, batch_size)
    if fused is None:
        outputs, scores, _ = _capture(adapter, arrays, [], tgt, False, batch_size)
    else:
        outputs, scores, _ = fused[0]
    class_idx = tgt.class_indices(outputs, graph.output_names)
    if not images:
        raise ValueError(f"{algo.name} attributes to image pixels; the model has no image input")
    per_site: list[tuple[np.ndarray, np.ndarray, Site, dict[str, Any]]] = []
    for i in images:
        attributions, info = algo.attribute(ModelAccess(adapter, arrays, i, tgt, class_idx, batch_size,
                                                        fused=None if fused is None else fused[1]))
        raw = algo.reduce_channels(attributions)
        site = Site(graph.input_names[i], 0, i, tuple(arrays[i].shape[1:]))
        shown = finish_maps(np.abs(raw) if algo.signed else raw, raw.shape[1:3], normalize,
                            f"{algo.name} @ {site.label}")
        per_site.append((shown, raw, site, {"attributions": attributions, **info}))
    reason = f"{algo.name} attributes the score to the input pixels; no layer is used"
    return _explanation(algo, tgt, reason, arrays, outputs, scores, class_idx, per_site)


def _fused_capture(adapter: ModelAdapter, arrays: list[np.ndarray], images: list[int], algo: Any, tgt: Target,
                   batch_size: int) -> Any:
    """The capture pass and the input gradients the method asks for first
    (:meth:`PixelMethod.first_rule`) in one run per part, where the adapter can
    (``input_capture``: native torch for every rule; Keras on TensorFlow and JAX for the plain
    gradient, in one compiled program): saliency and LRP then cost one forward and one backward
    pass, not one more forward, and a Keras model's first call compiles one program, not a
    forward one and a gradient one. ``None``: the usual capture pass."""
    fuse = getattr(adapter, "input_capture", None)
    if fuse is None or len(images) != 1:
        return None
    first = algo.first_rule(arrays[images[0]])
    if first is None:
        return None
    (rule,) = first
    done = rule_runs(rule, batches(arrays[0].shape[0], batch_size),
                     lambda s, got: fuse([a[s] for a in arrays], images[0], tgt.for_samples(s), got))
    if done is None:
        return None
    runs, refs = done
    assembled = _assembled([capture for capture, _ in runs])
    return assembled, (rule, assembled[1], np.concatenate([grads for _, grads in runs]), refs)


def _explain_attention(
    adapter: ModelAdapter, graph: LayerGraph, arrays: list[np.ndarray], algo: Any, tgt: Target,
    normalize: str, batch_size: int, token_grid: Any,
) -> Explanation:
    """Attention methods (rollout, LeGrad): one run per batch with every attention module's
    probabilities (and their gradients) recorded; one map on the patch grid."""
    read = getattr(adapter, "attentions", None)
    if read is None:
        raise ValueError(
            f"{algo.name} reads attention probabilities, which camlens reads from Keras models "
            "(keras.layers.MultiHeadAttention) and torch models (timm ViT/DeiT/DINOv2, "
            f"nn.MultiheadAttention, Hugging Face ViT); this is a {adapter.framework} model. Use a "
            "method that needs no layer, such as 'saliency'"
        )
    parts = [read([a[s] for a in arrays], tgt.for_samples(s), algo.needs_gradients)
             for s in batches(arrays[0].shape[0], batch_size)]
    outputs = [np.concatenate([p.outputs[i] for p in parts]) for i in range(len(parts[0].outputs))]
    scores = np.concatenate([p.scores for p in parts])
    class_idx = tgt.class_indices(outputs, graph.output_names)
    probs = [np.concatenate([p.probs[b] for p in parts]) for b in range(len(parts[0].probs))]
    grads = None if parts[0].grads is None else [
        np.concatenate([p.grads[b] for p in parts]) for b in range(len(parts[0].grads))]
    raw = algo(AttentionData(probs, grads, token_grid))
    paths = parts[0].paths
    where = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
    site = Site(where, 0, 0, (*raw.shape[1:], probs[0].shape[1]))
    size = arrays[0].shape[1:3]
    shown = finish_maps(raw, (int(size[0]), int(size[1])), normalize, f"{algo.name} @ {where}")
    reason = (f"{algo.name} reads the attention probabilities of {len(paths)} attention call(s) "
              f"({where}); no layer is used")
    return _explanation(algo, tgt, reason, arrays, outputs, scores, class_idx,
                        [(shown, raw, site, {"attention": paths})])


def layers(
    model: Any,
    output: int | str | None = None,
    input_shape: Sequence[int] | None = None,
    token_grid: Any = None,
    input_size: tuple[int, int] | None = None,
    channels: int = 3,
) -> LayerReport:
    """Every layer of ``model`` with its output shape and whether it lies on every path to the
    output, which one ``layer="auto"`` picks, and why. Print it, or read ``.chosen``,
    ``.candidates`` and ``.reason``.

    ``input_shape``: for PyTorch modules, which have no input shape of their own, the shape of
    one input batch, e.g. ``(1, 3, 224, 224)``; for a subclassed Keras model, channels-last
    ``(1, H, W, C)`` (without it, the shape it was built or first called with).
    ``input_size``: ``(H, W)`` instead of ``input_shape``, for either kind: camlens lays out a
    batch of one ``channels``-channel image as the model itself takes it.
    ``token_grid``: for vision transformers, the patch grid of token layers, as in
    :func:`explain`.
    """
    adapter = adapt(model)
    if input_size is not None:
        if input_shape is not None:
            raise ValueError("give input_shape or input_size, not both")
        h, w = (int(v) for v in input_size)
        adapter.prepare(adapter.native_inputs([np.zeros((1, h, w, int(channels)), np.float32)]))
    elif input_shape is not None:
        adapter.prepare(np.zeros(tuple(input_shape), np.float32))
    graph = adapter.graph()
    out_idx = ClassScore(output=output).output_indices(graph.output_names)
    return layer_report(graph, out_idx, token_grid, model_order(model))
