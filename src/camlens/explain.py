"""``camlens.explain``: one call for every method, model and target."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np

from .adapters.base import Capture, ModelAdapter
from .explanation import Explanation, Site, finish_maps
from .layers import GraphNode, LayerGraph, LayerReport, choose_layers, find_nodes, layer_report
from .methods import SiteData, get_method
from .targets import ClassScore, Target, as_target

__all__ = ["explain", "layers", "adapt"]


def adapt(model: Any) -> ModelAdapter:
    """The adapter for ``model``: a Keras 3 model or a ``torch.nn.Module``."""
    if all(hasattr(model, name) for name in ("capture", "graph", "prepare")):
        return model  # already an adapter
    if "keras" in sys.modules or type(model).__module__.startswith("keras"):
        from .adapters.keras import KerasAdapter, is_keras_model

        if is_keras_model(model):
            return KerasAdapter(model)
    from .adapters.torch import TorchAdapter, is_torch_module

    if is_torch_module(model):
        return TorchAdapter(model)
    raise TypeError(
        f"camlens explains Keras 3 models and torch.nn.Module; got "
        f"{type(model).__module__}.{type(model).__name__}"
    )


def _resolve_layer(
    graph: LayerGraph, model: Any, layer: Any, outputs: Sequence[int]
) -> tuple[list[GraphNode], str]:
    if layer is None or (isinstance(layer, str) and layer == "auto"):
        choice = choose_layers(graph, outputs)
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
            if not (n.shape is not None and len(n.shape) == 3):
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
) -> Explanation:
    """Explain the model's ``target`` score on ``inputs`` with ``method`` at ``layer``.

    Args:
        model: a Keras 3 Functional or Sequential model (nested and shared submodels,
            several inputs and outputs are fine) or a ``torch.nn.Module``. It is left exactly
            as it was.
        inputs: a batch ``(N, H, W, C)`` or one image ``(H, W, C)``, preprocessed as the model
            expects; for several inputs a list (or a dict by input name). PyTorch modules also
            take ``(N, C, H, W)`` tensors or arrays.
        method: a name from ``camlens.methods.available_methods()``: "cam", "gradcam",
            "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam",
            "scorecam"; or a ``camlens.methods.CAMMethod`` instance (``ScoreCAM(batch_size=8)``).
        target: what score to explain: ``None`` (each sample's top class), a class index, a list
            with one index per sample, a ``camlens.targets.Target`` (``Logit``,
            ``RegressionScore``, ``Similarity``, ``SegmentationRegion``...) or a callable
            ``fn(output) -> (N,)``.
        layer: ``"auto"`` (see ``camlens.layers``), a layer path like ``"encoder/conv2d_5"``
            (``"path#1"`` for its second call), a layer index, or a list of them.
        output: for models with several outputs, which one (index or name) the target reads.
        normalize: "minmax" or "percentile", applied to each map.
        batch_size: samples per forward/backward pass.

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
    nodes, reason = _resolve_layer(graph, model, layer, out_idx)
    algo = get_method(method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")

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
    raw_maps, maps, sites = [], [], []
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
        site = Site(node.path, node.call, _site_input(graph, node, anc), node.shape)
        images, score = None, None
        if algo.needs_model:
            images = arrays[site.input_index]
            score = _sample_scorer(adapter, arrays, site.input_index, tgt, class_idx, batch_size)
        raw = algo(SiteData(acts, grads, weights, images, score))
        size = arrays[site.input_index].shape[1:3]
        maps.append(finish_maps(raw, (int(size[0]), int(size[1])), normalize, f"{algo.name} @ {site.label}"))
        raw_maps.append(raw)
        sites.append(site)
    return Explanation(
        maps=maps,
        raw_maps=raw_maps,
        sites=sites,
        method=algo.name,
        target=tgt.describe(),
        scores=scores,
        class_indices=class_idx,
        reason=reason,
        inputs=arrays,
        outputs=outputs,
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
            full = [np.repeat(a[n : n + 1], len(part), axis=0) for a in arrays]
            full[which] = part
            out.append(adapter.score(full, pinned))
        return np.concatenate(out)

    return score


def layers(model: Any, output: int | str | None = None, input_shape: Sequence[int] | None = None) -> LayerReport:
    """Every layer of ``model`` with its output shape and whether it lies on every path to the
    output, which one ``layer="auto"`` picks, and why. Print it, or read ``.chosen``,
    ``.candidates`` and ``.reason``.

    ``input_shape``: for PyTorch modules, which have no input shape of their own, the shape of
    one input batch, e.g. ``(1, 3, 224, 224)``.
    """
    adapter = adapt(model)
    if input_shape is not None:
        adapter.prepare(np.zeros(tuple(input_shape), np.float32))
    graph = adapter.graph()
    out_idx = ClassScore(output=output).output_indices(graph.output_names)
    return layer_report(graph, out_idx)
