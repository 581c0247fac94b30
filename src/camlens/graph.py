"""The layer graph of a model and the automatic choice of the layer to explain.

Adapters flatten a model into a :class:`LayerGraph`: one node per *call* of a layer, nested
submodels expanded into their own layers (``"encoder/conv2d_5"``), in the order the model runs
them. A layer that runs twice (a siamese encoder) gives two nodes, its two call sites.

The rule for ``layer="auto"``: take the deepest node with a spatial output that every path from
the input to the explained output passes through (a dominator of the output). Picking "the last
convolution by index" is wrong on branching models: on Keras 3's InceptionV3 it is ``conv2d_93``
(``model.layers[299]``; Keras 2 named it ``conv2d_94``), one branch of the last block, while every
path passes through the concatenation ``mixed10`` (``model.layers[310]``).

Two refinements:

* A map must be in one image's coordinates, so on a model with several image inputs the rule is
  applied per input, among the layers that see only that input (before the branches merge). A
  shared encoder then gives one layer with one call site per input image. Where no such layer
  exists (images fused at the very start) the rule falls back to all inputs at once.
* The explained output itself is taken only when no hidden layer qualifies: the gradient of a
  score with respect to the output is the target's own selection, not the model's evidence.
* When the chosen node is a pooling layer, its producer is preferred if it dominates too: same
  content at twice the resolution (VGG16: ``block5_conv3`` rather than ``block5_pool``, as in the
  Keras Grad-CAM example).

Vision transformers: a token layer, output ``(T, C)`` with ``T`` or ``T - 1`` a perfect square
(197 = class token + 14 x 14 patches), counts as a map over its patch grid (see
:mod:`camlens.tokens`). The deepest token layer on every path is useless on a ViT, though: after
the last attention the tokens are no longer mixed and the head reads only the class token, so the
gradient at the final norm (or any later token layer) is zero at every patch. So a token
dominator is taken only when a layer that combines tokens (attention, a matrix product, pooling
over tokens) follows it, and then the last node of its shape on every path into that layer: the
input of the last attention (``blocks[-1].norm1`` in timm-style ViTs, the common choice), which
every path from the patch tokens to the output passes through. Spatial ``(h, w, C)`` layers are
chosen exactly as before.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .tokens import TokenGrid, check_grid, guess_grid, infer_grid
from ._args import warn

__all__ = [
    "GraphNode",
    "LayerGraph",
    "LayerChoice",
    "LayerReport",
    "choose_layers",
    "find_nodes",
    "grid_arg",
    "model_order",
]

_POOLING = {"MaxPooling2D", "AveragePooling2D", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"}
# Operations that combine tokens, by kind in lower case (Keras layers and ops, torch modules and
# functions): any kind naming attention, products of token matrices, and pooling over tokens.
_TOKEN_PRODUCTS = {"matmul", "bmm", "baddbmm", "einsum"}
_TOKEN_POOLING = {"globalaveragepooling1d", "globalmaxpooling1d", "mean", "max", "amax", "sum"}
_TOKEN_POOLING_1D = {"adaptiveavgpool1d", "adaptive_avg_pool1d", "avgpool1d", "avg_pool1d",
                     "adaptivemaxpool1d", "adaptive_max_pool1d"}


@dataclass
class GraphNode:
    """One call of one layer (or raw operation).

    ``shape`` is the output shape without the batch axis, channels-last ``(h, w, c)`` for
    spatial outputs; entries may be ``None`` when unknown until an input is seen.
    """

    id: int
    path: str
    call: int
    kind: str
    shape: tuple[int | None, ...] | None
    inputs: list[int] = field(default_factory=list)
    is_input: bool = False
    input_index: int | None = None
    #: why this node's output cannot be read as one map per sample, where the adapter knows
    #: (its first axis is not the batch, its layout is unknown, it cannot be probed); such a
    #: node is never chosen, and naming it raises this text
    unusable: str | None = None
    #: for a token layer, the patch grid the model itself shows: the nearest map ``(h, w, c)``
    #: upstream whose ``h * w`` patches are the last tokens (the patch embedding), the leading
    #: ``T - h * w`` tokens extra (class, distillation, registers); set by :class:`LayerGraph`
    model_grid: TokenGrid | None = None

    @property
    def spatial(self) -> bool:
        """Whether the output is an image-like ``(h, w, c)`` map with ``h`` and ``w`` above 1
        (an unknown size counts as spatial)."""
        if self.unusable is not None or self.shape is None or len(self.shape) != 3:
            return False
        return all(d is None or d > 1 for d in self.shape[:2])

    @property
    def token_grid(self) -> TokenGrid | None:
        """For a token layer (output ``(T, C)``, ``T`` or ``T - 1`` a perfect square above 1, as
        in a vision transformer), how its tokens form a patch grid; else ``None``."""
        return grid_of(self)

    @property
    def label(self) -> str:
        return self.path if self.call == 0 else f"{self.path}#{self.call}"


def grid_of(node: GraphNode, token_grid: object = None) -> TokenGrid | None:
    """The patch grid of ``node``'s ``(T, C)`` token output: inferred from ``T`` (see
    :func:`camlens.tokens.guess_grid`), or ``token_grid=(gh, gw)`` with ``T - gh * gw >= 0``
    leading extra tokens. ``None`` for other shapes."""
    if (node.is_input or node.unusable is not None or node.shape is None or len(node.shape) != 2
            or node.shape[0] is None):
        return None
    if token_grid is None:
        return node.model_grid or guess_grid(node.shape[0])
    gh, gw = check_grid(token_grid, "token_grid")
    if gh * gw > node.shape[0] or gh * gw < 2:
        return None
    return infer_grid(node.shape[0], (gh, gw))


@dataclass
class LayerGraph:
    """Nodes in run order (a topological order), the model's input and output nodes."""

    nodes: list[GraphNode]
    inputs: list[int]
    outputs: list[int]
    output_names: list[str]
    input_names: list[str]
    readable: bool = True
    #: the edges over-approximate what each node reads (values computed between layers, seen
    #: by a recorded run): every path of the model is a path of the graph, so a node on every
    #: path of the graph is on every path of the model, but not the other way round
    approximate: bool = False
    #: nested models by path, with the node that gives their output at each call
    aliases: dict[str, list[int]] = field(default_factory=dict)
    #: what is computed from the graph alone (the input ancestry, layer choices), kept with
    #: it: adapters keep a model's graph between explain calls, and a graph is not changed
    #: once built
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_model_grids(self.nodes)

    def successors(self) -> dict[int, list[int]]:
        succ: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for p in n.inputs:
                succ[p].append(n.id)
        return succ

    def input_ancestry(self) -> dict[int, frozenset[int]]:
        """For every node, the indices of the model inputs it depends on."""
        kept = self._memo.get("ancestry")
        if kept is None:
            kept = self._memo["ancestry"] = self._input_ancestry()
        return dict(kept)

    def _input_ancestry(self) -> dict[int, frozenset[int]]:
        anc: dict[int, frozenset[int]] = {}
        for n in self.nodes:
            if n.is_input:
                anc[n.id] = frozenset({n.input_index}) if n.input_index is not None else frozenset()
            else:
                anc[n.id] = frozenset().union(*(anc[p] for p in n.inputs)) if n.inputs else frozenset()
        return anc

    def paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for n in self.nodes:
            seen.setdefault(n.path, None)
        return list(seen)


#: the most leading extra tokens a patch grid is read with (a class token, a distillation
#: token, register tokens); more, and the tokens are not taken for that map's patches
_MAX_EXTRA_TOKENS = 16


def _set_model_grids(nodes: Sequence[GraphNode]) -> None:
    """Give each token node ``(T, C)`` the grid of the nearest usable map ``(h, w, c)`` upstream
    when ``0 <= T - h * w <= _MAX_EXTRA_TOKENS``: a ViT's tokens are its patch embedding's map
    flattened, with the extra tokens put in front. Nodes in run order, so one pass finds the
    nearest map (the latest one) above every node."""
    by_id = {n.id: n for n in nodes}
    nearest: dict[int, int | None] = {}
    for n in nodes:
        above = [p if (by_id[p].spatial and not by_id[p].is_input) else nearest.get(p)
                 for p in n.inputs if p in by_id]
        found = [a for a in above if a is not None]
        nearest[n.id] = max(found) if found else None
        src = nearest[n.id]
        if (n.model_grid is None and src is not None and n.unusable is None and n.shape is not None
                and len(n.shape) == 2 and n.shape[0] is not None):
            h, w = by_id[src].shape[:2]
            if h is not None and w is not None and 0 <= n.shape[0] - h * w <= _MAX_EXTRA_TOKENS:
                n.model_grid = TokenGrid(int(h), int(w), int(n.shape[0] - h * w))


def grid_arg(node: GraphNode, token_grid: object = None) -> object:
    """The ``grid=`` to read ``node``'s tokens with: the caller's ``token_grid``, else the grid
    the model shows (:attr:`GraphNode.model_grid`), else ``None`` (inferred from ``T``)."""
    if token_grid is not None or node.model_grid is None:
        return token_grid
    return (node.model_grid.height, node.model_grid.width)


def _dominators(graph: LayerGraph, roots: Iterable[int], sinks: Sequence[int]) -> dict[int, int | None]:
    """Immediate dominators from a virtual root over ``roots`` (Cooper, Harvey and Kennedy,
    "A Simple, Fast Dominance Algorithm"). The graph is a DAG listed in topological order, so one
    pass in that order is enough. ``None`` stands for the virtual root. A virtual sink, id -1, is
    added over ``sinks`` when there are several."""
    order: dict[int, int] = {}
    reach: set[int] = set(roots)
    idom: dict[int, int | None] = {}

    def intersect(a: int | None, b: int | None) -> int | None:
        while a != b:
            if a is None or b is None:
                return None
            while a is not None and b is not None and order[a] > order[b]:
                a = idom[a]
            while a is not None and b is not None and order[b] > order[a]:
                b = idom[b]
        return a

    for n in graph.nodes:
        if n.id in reach and n.id in roots:
            order[n.id] = len(order)
            idom[n.id] = None
            continue
        preds = [p for p in n.inputs if p in reach]
        if not preds:
            continue
        reach.add(n.id)
        order[n.id] = len(order)
        d: int | None = preds[0]
        for p in preds[1:]:
            d = intersect(d, p)
        idom[n.id] = d
    live = [s for s in sinks if s in reach]
    if len(sinks) > 1 and live:
        d = live[0]
        for s in live[1:]:
            d = intersect(d, s)
        order[-1] = len(order)
        idom[-1] = d
    return idom


@dataclass
class LayerChoice:
    """The chosen nodes (one per call site that should be explained) and why."""

    nodes: list[GraphNode]
    reason: str

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(n.path for n in self.nodes))


def _shape_str(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


def _chain(idom: dict[int, int | None], sink: int) -> list[int]:
    out = []
    n: int | None = sink
    while n is not None:
        out.append(n)
        n = idom.get(n)
    return out


# How a choice came about: a pooling layer it feeds ("pool"), the last token mixer after a token
# layer ("mix"), a pooling over the tokens ("tokens"); None for a plain dominator.
_Via = tuple[str, GraphNode] | None


def choose_layers(
    graph: LayerGraph, outputs: Sequence[int] | None = None, token_grid: object = None
) -> LayerChoice:
    """Pick the layer(s) to explain for the given output indices (default: output 0).

    ``token_grid``: ``(gh, gw)`` patches for token layers whose grid cannot be inferred (extra
    tokens other than one class token). Raises ``ValueError`` when no spatial layer qualifies.
    """
    if token_grid is not None:
        check_grid(token_grid, "token_grid")
    key = ("choice", None if outputs is None else tuple(outputs), repr(token_grid))
    kept = graph._memo.get(key)
    if kept is None:
        kept = graph._memo[key] = _choose_layers(graph, outputs, token_grid)
    return LayerChoice(list(kept.nodes), kept.reason)


def _choose_layers(graph: LayerGraph, outputs: Sequence[int] | None, token_grid: object) -> LayerChoice:
    if not graph.readable:
        return _fallback_choice(graph)
    if not graph.approximate:
        return _choose(graph, outputs, token_grid)
    try:
        choice = _choose(graph, outputs, token_grid)
    except _NoDominator:
        return _fallback_choice(graph, _APPROXIMATE)
    choice.reason += (
        " (the model computes between its layers, so its graph has more paths than the model: "
        "a deeper layer may be on every path too)"
    )
    return choice


_APPROXIMATE = (
    "the model computes between its layers (x + y, keras.ops.relu(x)) and no spatial layer is "
    "known to lie on every path"
)


class _NoDominator(ValueError):
    """No spatial layer lies on every path of the graph."""


def _choose(graph: LayerGraph, outputs: Sequence[int] | None, token_grid: object) -> LayerChoice:
    out_idx = list(outputs) if outputs else [0]
    sinks = [graph.outputs[i] for i in out_idx]
    sink = sinks[0] if len(sinks) == 1 else -1
    by_id = {n.id: n for n in graph.nodes}
    anc = graph.input_ancestry()
    out_name = ", ".join(repr(graph.output_names[i]) for i in out_idx)
    succ = graph.successors()
    upstream = _ancestors(graph, sinks)

    def mixes_tokens(n: GraphNode) -> bool:
        kind = n.kind.lower()
        if "attention" in kind or kind in _TOKEN_PRODUCTS:
            # a product of per-sample vectors (a projection after the class token) mixes nothing
            return any(len(by_id[p].shape or ()) >= 2 for p in n.inputs)
        if kind in _TOKEN_POOLING:
            return len(n.shape or ()) == 1 and any(grid_of(by_id[p], token_grid) for p in n.inputs)
        if kind in _TOKEN_POOLING_1D:
            # tokens turned (C, T) and pooled over T (Hugging Face Swin's pooler)
            return any(by_id[p].kind.lower() in ("transpose", "permute")
                       and any(grid_of(by_id[q], token_grid) for q in by_id[p].inputs) for p in n.inputs)
        return False

    def token_pick(node: GraphNode, only: frozenset[int] | None) -> tuple[GraphNode, _Via] | None:
        # Only a token layer whose tokens are combined later has a gradient at the patches.
        seen, stack = set(), list(succ[node.id])
        while stack:
            m = stack.pop()
            if m not in seen and m in upstream:
                seen.add(m)
                stack.extend(succ[m])
        mixers = [n for n in graph.nodes if n.id in seen and mixes_tokens(n)]
        if not mixers:
            return None
        mixer_ids = {n.id for n in mixers}
        idom = _dominators(graph, [node.id], [n.id for n in mixers])
        for nid in _chain(idom, mixers[0].id if len(mixers) == 1 else -1):
            cand = by_id.get(nid)
            if cand is None or nid in mixer_ids or cand.shape != node.shape or cand.unusable:
                continue
            if only is None or anc[nid] == only:
                last = mixers[-1]
                return cand, ("tokens" if last.kind.lower() in _TOKEN_POOLING | _TOKEN_POOLING_1D else "mix", last)
        return None

    equivalent = _output_equivalent(graph, sinks, upstream, succ)

    def pick(chain: list[int], only: frozenset[int] | None) -> tuple[GraphNode, _Via] | None:
        # The output itself is a last resort: the gradient of a score with respect to the output
        # is only the target's own selection (a mask, a one-hot), not the model's evidence. So
        # are the layers that give the output up to a resize (a segmenter's logits before they
        # are upsampled to the image).
        hidden = [nid for nid in chain if nid not in equivalent]
        found = _pick(hidden, only)
        return found if found is not None else _pick([nid for nid in chain if nid in equivalent], only)

    def _pick(chain: list[int], only: frozenset[int] | None) -> tuple[GraphNode, _Via] | None:
        for nid in chain:
            node = by_id.get(nid)
            if node is None or node.is_input:
                continue
            if only is not None and anc[nid] != only:
                continue
            if not node.spatial:
                found = token_pick(node, only) if grid_of(node, token_grid) else None
                if found is not None:
                    return found
                continue
            if node.kind in _POOLING and len(node.inputs) == 1:
                prev = by_id[node.inputs[0]]
                if prev.spatial and not prev.is_input and (only is None or anc[prev.id] == only):
                    return prev, ("pool", node)
            return node, None
        return None

    chosen: list[GraphNode] = []
    why: dict[str, tuple[GraphNode, _Via, list[str], list[str]]] = {}
    missing: list[int] = []
    image_inputs = [i for i, nid in enumerate(graph.inputs) if by_id[nid].spatial]
    if not image_inputs:
        raise ValueError(
            "the model has no image-like input (batch, height, width, channels); "
            f"inputs: {', '.join(f'{graph.input_names[i]} {_shape_str(by_id[n].shape)}' for i, n in enumerate(graph.inputs))}"
        )
    for i in image_inputs:
        idom = _dominators(graph, [graph.inputs[i]], sinks)
        if sink not in idom:
            continue  # this input does not reach the explained output
        found = pick(_chain(idom, sink), frozenset({i}) if len(graph.inputs) > 1 else None)
        if found is None:
            missing.append(i)
            continue
        chosen.append(found[0])
        entry = why.setdefault(found[0].path, (*found, [], []))
        entry[2].append(repr(graph.input_names[i]))
        entry[3].append(found[0].label)
    if missing and not chosen:
        idom = _dominators(graph, graph.inputs, sinks)
        found = pick(_chain(idom, sink), None) if sink in idom else None
        if found is not None:
            chosen.append(found[0])
            why[found[0].path] = (*found, ["all inputs together"], [found[0].label])
    if not chosen:
        raise _NoDominator(
            f"no layer with a spatial output lies on every path to output {out_name}: "
            "the model has no layer a CAM can be computed at. Give a layer explicitly with "
            "layer=..., or use a pixel-attribution method."
        )
    reasons = [
        _reason(node, via, " and ".join(src), out_name, ", ".join(labels), grid_of(node, token_grid))
        for node, via, src, labels in why.values()
    ]
    return LayerChoice(chosen, "; ".join(reasons))


#: operations that change a map's size or squash its values but mix nothing: a layer whose
#: output reaches the explained output only through them is the output itself, resized
_PASS_THROUGH = {
    "interpolate", "upsample", "upsamplingbilinear2d", "upsamplingnearest2d", "upsample_bilinear2d",
    "upsample_nearest2d", "upsampling2d", "resizing", "resize", "softmax", "log_softmax", "sigmoid",
    "identity", "dropout", "activation", "contiguous", "getitem",
}


def _output_equivalent(
    graph: LayerGraph, sinks: Sequence[int], upstream: set[int], succ: dict[int, list[int]]
) -> set[int]:
    """The explained outputs and the nodes whose every path to them runs only through
    :data:`_PASS_THROUGH` operations (a segmentation head's logits, upsampled to the image)."""
    by_id = {n.id: n for n in graph.nodes}
    equivalent = set(sinks)
    for n in reversed(graph.nodes):
        if n.id in equivalent or n.id not in upstream or n.is_input:
            continue
        after = [m for m in succ[n.id] if m in upstream]
        if after and all(m in equivalent and by_id[m].kind.lower() in _PASS_THROUGH for m in after):
            equivalent.add(n.id)
    return equivalent


def _ancestors(graph: LayerGraph, sinks: Sequence[int]) -> set[int]:
    by_id = {n.id: n for n in graph.nodes}
    seen: set[int] = set()
    stack = [s for s in sinks if s in by_id]
    while stack:
        nid = stack.pop()
        if nid not in seen:
            seen.add(nid)
            stack.extend(by_id[nid].inputs)
    return seen


def _reason(
    node: GraphNode, via: _Via, source: str, out_name: str, labels: str, grid: TokenGrid | None
) -> str:
    shape = _shape_str(node.shape)
    if grid is not None:
        extra = f"{grid.extra} extra + " if grid.extra else ""
        shape += f" tokens = {extra}{grid.height}x{grid.width} patches"
    if via is None:
        return (
            f"{labels} ({node.kind}, {shape}): the deepest layer with a "
            f"spatial output that every path from {source} to output {out_name} passes through"
        )
    how, other = via
    if how == "mix":
        return (
            f"{labels} ({node.kind}, {shape}): the input of {other.path} ({other.kind}), the last "
            f"layer that mixes tokens on the way from {source} to output {out_name}; every path "
            "from the patch tokens to the output passes through it, while later token layers "
            "reach the output only through the class token (their gradient is zero at the patches)"
        )
    if how == "tokens":
        return (
            f"{labels} ({node.kind}, {shape}): the deepest token layer on every path from "
            f"{source} to output {out_name}; {other.path} ({other.kind}) pools its tokens"
        )
    return (
        f"{labels} ({node.kind}, {shape}): feeds the pooling layer "
        f"{other.path} ({_shape_str(other.shape)}), the deepest spatial layer on every path "
        f"from {source} to output {out_name}; same content at a finer resolution"
    )


def _parts(path: str) -> list[str]:
    return path.replace("/", ".").split(".")


def _fallback_choice(graph: LayerGraph, why: str = "the model's graph cannot be read") -> LayerChoice:
    spatial = [n for n in graph.nodes if n.spatial and not n.is_input]
    if not spatial:
        raise ValueError("no layer of this model has a spatial output (batch, h, w, channels)")
    # A model with a backbone (detectors, segmenters) reads its heads from the backbone: its
    # deepest stage before a feature pyramid (torchvision's ``backbone.body``) feeds every
    # pyramid level, so every box's score depends on it; a later layer (one pyramid level, a
    # head's convolution) sees only some boxes or one head.
    inside = [n for n in spatial if "backbone" in _parts(n.path)]
    body = [n for n in inside if "body" in _parts(n.path)[_parts(n.path).index("backbone"):]]
    pool = body or inside
    last = (pool or spatial)[-1]
    where = (
        "the last spatial layer of the backbone's body (before the feature pyramid: every "
        "level, and so every box's score, depends on it)" if body else
        "the last spatial layer of the backbone, which the heads read" if inside else
        "the last layer with a spatial output"
    )
    warn(
        f"{why}, so the layer was chosen as {where}: {last.path}; check it, or pass layer=...",
        RuntimeWarning
    )
    same = [n for n in spatial if n.path == last.path]
    note = "graph not readable" if graph.approximate is False else "values computed between layers"
    return LayerChoice(same, f"{last.path}: {where} ({note})")


def find_nodes(graph: LayerGraph, name: str) -> list[GraphNode]:
    """All call sites of the layer called ``name``: a full path (``"encoder/conv2d_5"``), or a
    plain name that is unique among the paths (``"conv2d_5"``). ``"path#k"`` picks call ``k``.
    Raises ``ValueError`` with suggestions when there is no such layer."""
    call: int | None = None
    base = name
    if "#" in name:
        base, _, k = name.rpartition("#")
        if not k.isdigit():
            raise ValueError(f"bad call index in layer {name!r}; write 'path#0', 'path#1', ...")
        call = int(k)
    nodes = [n for n in graph.nodes if n.path == base]
    if not nodes and base in graph.aliases:
        by_id = {n.id: n for n in graph.nodes}
        nodes = [by_id[i] for i in graph.aliases[base]]
    if not nodes:
        tail = [n for n in graph.nodes if n.path.rsplit("/", 1)[-1] == base]
        paths = list(dict.fromkeys(n.path for n in tail))
        if len(paths) > 1:
            raise ValueError(
                f"layer name {base!r} is ambiguous: {', '.join(paths)}; give the full path"
            )
        nodes = tail
    if not nodes:
        all_paths = graph.paths() + list(graph.aliases)
        names = all_paths + [p.rsplit("/", 1)[-1] for p in all_paths]
        close = list(dict.fromkeys(difflib.get_close_matches(base, names, n=3, cutoff=0.6)))
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"no layer {base!r} in the model.{hint} `camlens.layers(model)` (or `camlens layers "
            "MODEL_FILE`) lists them."
        )
    if call is not None:
        picked = [n for n in nodes if n.call == call]
        if not picked:
            raise ValueError(
                f"layer {base!r} runs {len(nodes)} time(s); call #{call} does not exist"
            )
        nodes = picked
    return nodes


#: what the index column of a :class:`LayerReport` counts, by the kind of model
ORDER_KERAS = ("#: index in model.layers, as layer=<int> takes it (a/b: model.layers[a].layers[b]); "
               "rows in graph order (each layer after the layers it reads)")
ORDER_TORCH = ("#: position in model.named_modules() (0: its first submodule); rows in graph order "
               "(each layer after the layers it reads)")
ORDER_RUN = "#: position in graph order (each layer after the layers it reads)"


def _is_keras(model: Any) -> bool:
    # a Keras model on the torch backend is a torch.nn.Module too: its model.layers counts
    return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)


def model_order(model: Any) -> tuple[str, dict[str, str]]:
    """How a user counts the layers of ``model``, as ``(header, {path: index})``: a Keras
    model's ``model.layers`` (nested models' layers as ``"a/b"``, ``model.layers[a].layers[b]``,
    keyed by the path ``"outer/inner"`` the graph uses), or a torch module's
    ``named_modules()`` (the root left out). Read by duck typing, so no framework is imported;
    ``("", {})`` for any other model, and paths it does not name are left out."""
    found: dict[str, str] = {}
    if _is_keras(model) or not hasattr(model, "named_modules"):
        def walk(holder: Any, prefix: str, at: str) -> None:
            kids = getattr(holder, "layers", None)
            if not isinstance(kids, (list, tuple)):
                return
            for i, layer in enumerate(kids):
                name = getattr(layer, "name", None)
                if not isinstance(name, str):
                    continue
                path, index = prefix + name, f"{at}{i}"
                found.setdefault(path, index)
                if layer is not holder:
                    walk(layer, path + "/", index + "/")

        walk(model, "", "")
        return (ORDER_KERAS, found) if found else ("", {})
    try:
        names = [n for n, _ in model.named_modules() if n]
    except Exception:  # a module whose named_modules() fails still gets its table
        return "", {}
    return ORDER_TORCH, {n: str(i) for i, n in enumerate(names)}


def _index_key(index: str) -> tuple[int, ...]:
    return tuple(int(p) for p in index.split("/"))


@dataclass
class LayerRow:
    path: str
    calls: int
    kind: str
    shape: str
    spatial: bool
    dominates: bool
    chosen: bool
    #: the layer's index as the user counts it (see :attr:`LayerReport.order`); for Keras
    #: ``"299"`` is ``model.layers[299]`` and ``"3/4"`` is ``model.layers[3].layers[4]``; for
    #: layers of a run with no such index (a torch function call), its position in run order
    #: is not given: ``""``
    index: str = ""


@dataclass
class LayerReport:
    """What ``camlens.layers(model)`` returns: every layer with its output shape, whether it
    lies on every path to the output, which one ``layer="auto"`` picks and why.

    Rows are in graph order (every layer after the layers it reads; for a functional Keras
    model this can differ from ``model.layers``, which Keras sorts by depth); :attr:`order` says what the ``#`` column counts
    (``model.layers`` for Keras, ``named_modules()`` for torch).
    """

    rows: list[LayerRow]
    #: the chosen call sites, as ``layer=`` takes them (``"path"``, ``"path#1"`` for a 2nd call)
    chosen: list[str]
    reason: str
    #: the last convolution by index (``model.layers`` for Keras, ``named_modules()`` for torch;
    #: graph order where the model has no index): "the last conv layer" as users pick it by hand
    naive: str | None = None
    notes: list[str] = field(default_factory=list)
    #: what the ``#`` column counts; :data:`ORDER_RUN` where the model gives no index of its own
    order: str = ORDER_RUN
    #: the last convolution in graph order (may differ from :attr:`naive`: Keras lists a
    #: functional model's layers by depth; InceptionV3: conv2d_85 here, conv2d_93 by index)
    last_graph_conv: str | None = None

    @property
    def candidates(self) -> list[LayerRow]:
        """Spatial layers on every path to the output, deepest last."""
        return [r for r in self.rows if r.spatial and r.dominates]

    def index_of(self, path: str) -> str:
        """The ``#`` column of the layer ``path`` (``""`` when the model gives none)."""
        for r in self.rows:
            if r.path == path:
                return r.index
        raise KeyError(f"no layer {path!r} in this report")

    def __str__(self) -> str:
        w = max([len(r.path) for r in self.rows] + [5])
        iw = max([len(r.index) for r in self.rows] + [1])
        lines = [self.order,
                 f"{'#':>{iw}}  {'layer':<{w}}  {'type':<22} {'output':<14} calls  on every path"]
        for r in self.rows:
            mark = "  <- chosen" if r.chosen else ""
            dom = "yes" if r.dominates else ""
            lines.append(f"{r.index:>{iw}}  {r.path:<{w}}  {r.kind:<22} {r.shape:<14} {r.calls:>5}  "
                         f"{dom:<3}{mark}")
        lines.append("")
        at = {r.path: r.index for r in self.rows}
        lines.append("chosen: " + ", ".join(
            f"{c} (#{at[c.split('#')[0]]})" if at.get(c.split("#")[0]) else c for c in self.chosen))
        lines.append(f"why: {self.reason}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(str(self))


def layer_report(
    graph: LayerGraph, outputs: Sequence[int] | None = None, token_grid: object = None,
    order: tuple[str, dict[str, str]] | None = None,
) -> LayerReport:
    """Build the :class:`LayerReport` for ``graph`` (``token_grid`` as in :func:`choose_layers`).

    ``order``: what :func:`model_order` gives for the model, the index the user counts layers
    by; without it rows are numbered in graph order (paths it does not name get no index)."""
    notes: list[str] = []
    try:
        choice = choose_layers(graph, outputs, token_grid)
        chosen_paths, reason = choice.paths, choice.reason
        chosen_labels = [n.label for n in choice.nodes]
    except ValueError as exc:
        chosen_paths, chosen_labels, reason = [], [], str(exc)
    out_idx = list(outputs) if outputs else [0]
    sinks = [graph.outputs[i] for i in out_idx] if graph.readable else []
    dominating: set[int] = set()
    if graph.readable:
        sink = sinks[0] if len(sinks) == 1 else -1
        for root in graph.inputs:
            idom = _dominators(graph, [root], sinks)
            if sink in idom:
                dominating.update(_chain(idom, sink))
    header, indices = order if order is not None and order[1] else (ORDER_RUN, {})
    rows: dict[str, LayerRow] = {}
    for n in graph.nodes:
        if n.is_input:
            continue
        row = rows.get(n.path)
        if row is None:
            rows[n.path] = LayerRow(
                n.path, 1, n.kind, _shape_str(n.shape),
                n.spatial or grid_of(n, token_grid) is not None, n.id in dominating,
                n.path in chosen_paths, indices.get(n.path, ""),
            )
        else:
            row.calls += 1
            row.dominates = row.dominates or n.id in dominating
    if not indices:
        for k, row in enumerate(rows.values()):
            row.index = str(k)
    convs = [n for n in graph.nodes if "Conv" in n.kind and n.spatial]
    last_run = convs[-1].path if convs else None
    indexed = [n for n in convs if rows[n.path].index]
    naive = (max(indexed, key=lambda n: _index_key(rows[n.path].index)).path if indexed
             else last_run)
    if naive and chosen_paths and naive not in chosen_paths and not rows[naive].dominates:
        notes.append(_naive_note(rows, naive, last_run, chosen_paths, header))
    return LayerReport(list(rows.values()), chosen_labels, reason, naive, notes, header, last_run)


def _naive_note(rows: dict[str, LayerRow], naive: str, last_run: str | None,
                chosen: list[str], header: str) -> str:
    def at(path: str) -> str:
        index = rows[path].index
        if not index:
            return path
        if header == ORDER_KERAS:
            return path + " (model.layers" + "".join(
                f"[{p}]" if k == 0 else f".layers[{p}]" for k, p in enumerate(index.split("/"))) + ")"
        return f"{path} (#{index})"

    if header == ORDER_RUN:
        return (f"note: the last convolution in graph order, {at(naive)}, is not on every path to "
                "the output (it is one branch), so it would explain only part of the evidence.")
    text = f"note: the last convolution by index, {at(naive)}"
    off = [naive]
    if last_run and last_run != naive:
        text += f", and the last one in graph order, {at(last_run)},"
        if not rows[last_run].dominates:
            off.append(last_run)
    verb = "are" if len(off) > 1 else "is"
    them = "each is one branch" if len(off) > 1 else "it is one branch"
    return (
        f"{text} {verb} not on every path to the output ({them} that a later layer merges), so "
        f"{'either' if len(off) > 1 else 'it'} would explain only part of the evidence; "
        f"{', '.join(at(p) for p in chosen)} is on every path, the deepest such spatial layer."
    )
