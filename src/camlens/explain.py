"""``camlens.explain``: one call for every method, model and target."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .adapters import adapt
from .adapters.base import Capture, ModelAdapter
from .explanation import Explanation, Site, finish_maps
from .layers import GraphNode, LayerGraph, LayerReport, choose_layers, find_nodes, layer_report
from .methods import PixelData, PixelMethod, SiteData, get_method
from .tokens import grid_to_tokens, infer_grid, split_tokens, tokens_to_grid
from .targets import ClassScore, Target, as_target

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
            if n.shape is not None and len(n.shape) == 2:  # ViT tokens: is there a patch grid?
                if n.shape[0] is not None:
                    infer_grid(n.shape[0], token_grid, argname="token_grid")
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
        model: a Keras 3 Functional or Sequential model (nested and shared submodels,
            several inputs and outputs are fine) or a ``torch.nn.Module``. It is left exactly
            as it was.
        inputs: a batch ``(N, H, W, C)`` or one image ``(H, W, C)``, preprocessed as the model
            expects; for several inputs a list (or a dict by input name). PyTorch modules also
            take ``(N, C, H, W)`` tensors or arrays.
        method: a name from ``camlens.methods.available_methods()`` or a
            ``camlens.methods.CAMMethod`` instance with its own settings
            (``ScoreCAM(batch_size=8)``, ``IntegratedGradients(steps=128)``). Layer methods:
            "cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam",
            "eigengradcam", "smoothgradcam++"; rerunning the model: "scorecam", "sscam",
            "iscam", "fastscorecam", "ablationcam" (only the layers after ``layer`` rerun).
            Pixel attributions (no layer; one map per image input, details in
            ``Explanation.details``): "saliency", "smoothgrad", "integratedgradients",
            "guidedbackprop", "occlusion", "rise"; and "guidedgradcam" (Guided Backprop times
            the layer's Grad-CAM).
        target: what score to explain: ``None`` (each sample's top class), a class index, a list
            with one index per sample, a ``camlens.targets.Target`` (``Logit``,
            ``RegressionScore``, ``Similarity``, ``SegmentationRegion``...) or a callable
            ``fn(output) -> (N,)``.
        layer: ``"auto"`` (see ``camlens.layers``), a layer path like ``"encoder/conv2d_5"``
            (``"path#1"`` for its second call), a layer index, or a list of them.
        output: for models with several outputs, which one (index or name) the target reads.
        normalize: "minmax" or "percentile", applied to each map.
        batch_size: samples per forward/backward pass.
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not algo.needs_layer:
        if not (layer is None or layer == "auto"):
            raise ValueError(
                f"{algo.name} attributes the score to input pixels and uses no layer; drop "
                f"layer={layer!r}"
            )
        return _explain_pixels(adapter, graph, arrays, algo, tgt, normalize, batch_size)
    nodes, reason = _resolve_layer(graph, model, layer, out_idx, token_grid)
    pixel_step = None
    if isinstance(algo, PixelMethod):  # Guided Grad-CAM: a layer's map, then pixels
        pixel_step, algo = algo, get_method(getattr(algo, "cam_method", "gradcam"))

    head = None
    if algo.needs_head_weights:
        if not isinstance(tgt, ClassScore):
            raise ValueError(
                f"CAM explains a class; the target is {tgt.describe()!r}. Use a class target "
                "(an index, None, ClassScore or Logit) or method='gradcam'."
            )
        head = [adapter.head_weights(n, out_idx[0]) for n in nodes]

    n_total = arrays[0].shape[0]
    parts: list[Capture] = []
    for start in range(0, n_total, batch_size):
        chunk = [a[start : start + batch_size] for a in arrays]
        parts.append(adapter.capture(chunk, nodes, tgt, need_gradients=algo.needs_gradients))

    outputs = [np.concatenate([p.outputs[i] for p in parts]) for i in range(len(parts[0].outputs))]
    scores = np.concatenate([p.scores for p in parts])
    class_idx = tgt.class_indices(outputs, graph.output_names)
    anc = graph.input_ancestry()
    raw_maps, maps, sites, details = [], [], [], []
    for k, node in enumerate(nodes):
        acts = np.concatenate([p.sites[k].activations for p in parts])
        grads = (
            np.concatenate([p.sites[k].gradients for p in parts])
            if algo.needs_gradients
            else None
        )
        weights = None
        if head is not None:
            assert class_idx is not None
            weights = head[k][:, class_idx].T
        site_shape = node.shape
        extra = None
        if acts.ndim == 3:  # a ViT token layer (N, T, C): the patch tokens as (N, gh, gw, C)
            extra, acts = split_tokens(acts, token_grid, argname="token_grid")
            grads = None if grads is None else tokens_to_grid(grads, token_grid, argname="token_grid")
            site_shape = tuple(acts.shape[1:])
        site = Site(node.path, node.call, _site_input(graph, node, anc), site_shape)
        images, score, score_site, capture = None, None, None, None
        if algo.needs_model or algo.needs_capture:
            images = arrays[site.input_index]
        if algo.needs_model:
            score = _sample_scorer(adapter, arrays, site.input_index, tgt, class_idx, batch_size)
        if algo.needs_site_scorer:
            score_site = _site_scorer(adapter, arrays, node, tgt, class_idx, extra)
        if algo.needs_capture:
            capture = _sample_capturer(
                adapter, arrays, site.input_index, node, tgt, class_idx, batch_size, token_grid
            )
        raw = algo(SiteData(acts, grads, weights, images, score, score_site, capture))
        size = arrays[site.input_index].shape[1:3]
        shown = finish_maps(raw, (int(size[0]), int(size[1])), normalize, f"{algo.name} @ {site.label}")
        detail: dict[str, Any] = {}
        if pixel_step is not None:
            data = PixelData(
                arrays[site.input_index],
                _sample_scorer(adapter, arrays, site.input_index, tgt, class_idx, batch_size),
                guided_gradient=_sample_gradient(
                    adapter, arrays, site.input_index, tgt, class_idx, batch_size, True
                ),
            )
            attributions, info = pixel_step.attribute(data, cam_maps=shown)
            detail = {"attributions": attributions, "cam": shown, **info}
            raw = pixel_step.reduce_channels(attributions)
            shown = finish_maps(raw, raw.shape[1:3], normalize, f"{pixel_step.name} @ {site.label}")
        maps.append(shown)
        raw_maps.append(raw)
        sites.append(site)
        details.append(detail)
    return Explanation(
        maps=maps,
        raw_maps=raw_maps,
        sites=sites,
        method=(pixel_step or algo).name,
        target=tgt.describe(),
        scores=scores,
        class_indices=class_idx,
        reason=reason,
        inputs=arrays,
        outputs=outputs,
        details=details,
        target_spec=tgt,
    )


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
    n_total = arrays[0].shape[0]
    parts = [
        adapter.capture([a[s : s + batch_size] for a in arrays], [], tgt, need_gradients=False)
        for s in range(0, n_total, batch_size)
    ]
    outputs = [np.concatenate([p.outputs[i] for p in parts]) for i in range(len(parts[0].outputs))]
    scores = np.concatenate([p.scores for p in parts])
    class_idx = tgt.class_indices(outputs, graph.output_names)
    images = [i for i, a in enumerate(arrays) if a.ndim == 4]
    if not images:
        raise ValueError(f"{algo.name} attributes to image pixels; the model has no image input")
    maps, raw_maps, sites, details = [], [], [], []
    for i in images:
        data = PixelData(
            arrays[i],
            _sample_scorer(adapter, arrays, i, tgt, class_idx, batch_size),
            _sample_gradient(adapter, arrays, i, tgt, class_idx, batch_size, False)
            if algo.needs_gradients else None,
            _sample_gradient(adapter, arrays, i, tgt, class_idx, batch_size, True)
            if algo.needs_guided else None,
        )
        attributions, info = algo.attribute(data)
        raw = algo.reduce_channels(attributions)
        site = Site(graph.input_names[i], 0, i, tuple(arrays[i].shape[1:]))
        shown = np.abs(raw) if algo.signed else raw
        maps.append(finish_maps(shown, raw.shape[1:3], normalize, f"{algo.name} @ {site.label}"))
        raw_maps.append(raw)
        sites.append(site)
        details.append({"attributions": attributions, **info})
    return Explanation(
        maps=maps,
        raw_maps=raw_maps,
        sites=sites,
        method=algo.name,
        target=tgt.describe(),
        scores=scores,
        class_indices=class_idx,
        reason=f"{algo.name} attributes the score to the input pixels; no layer is used",
        inputs=arrays,
        outputs=outputs,
        details=details,
        target_spec=tgt,
    )


def _sample_scorer(
    adapter: ModelAdapter,
    arrays: list[np.ndarray],
    which: int,
    target: Target,
    class_idx: np.ndarray | None,
    batch_size: int,
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``score(n, batch)`` for methods that rerun the model on modified copies of sample
    ``n``'s input ``which``: the other inputs are held at sample ``n``, the target at what was
    explained for sample ``n``."""

    def score(n: int, batch: np.ndarray) -> np.ndarray:
        pinned = target.for_sample(n, class_idx)
        out = []
        for start in range(0, len(batch), batch_size):
            part = batch[start : start + batch_size]
            out.append(adapter.score(_pinned(arrays, n, which, part), pinned))
        return np.concatenate(out)

    return score


def _pinned(arrays: list[np.ndarray], n: int, which: int, part: np.ndarray) -> list[np.ndarray]:
    """The model inputs for copies ``part`` of sample ``n``'s input ``which``: the other inputs
    repeated at sample ``n``."""
    full = [np.repeat(a[n : n + 1], len(part), axis=0) for a in arrays]
    full[which] = np.asarray(part, dtype=np.float32)
    return full


def _site_scorer(
    adapter: ModelAdapter, arrays: list[np.ndarray], node: GraphNode, target: Target,
    class_idx: np.ndarray | None, extra: np.ndarray | None = None,
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``score_site(n, acts)``: sample ``n``'s target score with ``node``'s activations
    replaced by each of ``acts``; the adapter's per-sample scorer is built once per sample.
    For a token layer, ``acts`` is the patch grid and ``extra`` ``(N, k, C)`` the set-aside
    tokens (class token...), put back unchanged."""
    made: dict[int, Callable[[np.ndarray], np.ndarray]] = {}

    def score_site(n: int, acts: np.ndarray) -> np.ndarray:
        if n not in made:
            made.clear()  # one sample at a time: its kept values go with it
            one = [a[n : n + 1] for a in arrays]
            made[n] = adapter.site_scorer(one, node, target.for_sample(n, class_idx))
        if extra is not None:
            acts = grid_to_tokens(acts, extra[n : n + 1])
        return made[n](acts)

    return score_site


def _sample_capturer(
    adapter: ModelAdapter, arrays: list[np.ndarray], which: int, node: GraphNode,
    target: Target, class_idx: np.ndarray | None, batch_size: int, token_grid: Any = None,
) -> Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``capture(n, batch)``: activations and gradients at ``node`` for modified copies of
    sample ``n``'s input ``which``."""

    def capture(n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pinned = target.for_sample(n, class_idx)
        acts, grads = [], []
        for start in range(0, len(batch), batch_size):
            part = batch[start : start + batch_size]
            got = adapter.capture(_pinned(arrays, n, which, part), [node], pinned).sites[0]
            a, g = got.activations, got.gradients
            if a.ndim == 3:  # token layer
                a = tokens_to_grid(a, token_grid, argname="token_grid")
                g = tokens_to_grid(g, token_grid, argname="token_grid")
            acts.append(a)
            grads.append(g)
        return np.concatenate(acts), np.concatenate(grads)

    return capture


def _sample_gradient(
    adapter: ModelAdapter, arrays: list[np.ndarray], which: int, target: Target,
    class_idx: np.ndarray | None, batch_size: int, guided: bool,
) -> Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``gradient(n, batch)``: sample ``n``'s target score for copies of its input ``which``
    and the gradient of each with respect to its copy."""

    def gradient(n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pinned = target.for_sample(n, class_idx)
        scores, grads = [], []
        for start in range(0, len(batch), batch_size):
            part = batch[start : start + batch_size]
            s, g = adapter.input_gradients(_pinned(arrays, n, which, part), which, pinned, guided=guided)
            scores.append(s)
            grads.append(g)
        return np.concatenate(scores), np.concatenate(grads)

    return gradient


def layers(
    model: Any,
    output: int | str | None = None,
    input_shape: Sequence[int] | None = None,
    token_grid: Any = None,
) -> LayerReport:
    """Every layer of ``model`` with its output shape and whether it lies on every path to the
    output, which one ``layer="auto"`` picks, and why. Print it, or read ``.chosen``,
    ``.candidates`` and ``.reason``.

    ``input_shape``: for PyTorch modules, which have no input shape of their own, the shape of
    one input batch, e.g. ``(1, 3, 224, 224)``. ``token_grid``: for vision transformers, the
    patch grid of token layers, as in :func:`explain`.
    """
    adapter = adapt(model)
    if input_shape is not None:
        adapter.prepare(np.zeros(tuple(input_shape), np.float32))
    graph = adapter.graph()
    out_idx = ClassScore(output=output).output_indices(graph.output_names)
    return layer_report(graph, out_idx, token_grid)
