"""The layer graph of a Keras model whose graph has no nodes to read: a subclassed
``keras.Model`` (``call`` written in Python), or a Functional/Sequential model holding one or
a custom layer with sublayers of its own. It is read from one recorded eager call.

Layers are found through Keras' own tracking (``_flatten_layers``, a Functional's
``operations``) and named by path, ``backbone/conv2``. While the model runs once, every leaf
layer's ``call`` and every container's ``call`` is wrapped on the instance (put back after,
whatever happens): each leaf call is a graph node, in the order the calls end, with its output
shape; the inputs of a call are traced to the calls that produced them by tensor identity
(every tensor is kept alive to the end, so no identity is reused).

A value computed between layers (``x + y``, ``keras.ops.relu(x)``) has no producer. What it
may depend on is bounded: a ``call`` computes only from its arguments, so the value depends on
nothing but the inputs of the innermost call running and the nodes recorded inside it so far.
Those become its producers, an over-approximation: every path of the real model is still a
path of the graph, so a layer found on every path of the graph is on every path of the model
(``LayerGraph.approximate``; where none is found the choice falls back with a warning). A
container whose output is such a value (a residual block ending in ``relu(x + shortcut)``)
is itself a node, a call site that can be probed, with the same bounded producers; a container
whose output is a leaf's output is an alias of that leaf, as nested Functional models are.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ...graph import GraphNode, LayerGraph
from .patches import instance_attrs

__all__ = ["Recording", "children", "is_container", "needs_recording", "record"]

#: layers of these packages are leaves even when they hold sublayers (MultiHeadAttention holds
#: EinsumDense layers): as in the Functional graph, they are one call each
_LIBRARIES = ("keras.", "tf_keras.")


def _is_graph_model(op: Any) -> bool:
    import keras
    from keras.src.models.functional import Functional

    return isinstance(op, (Functional, keras.Sequential))


def is_container(op: Any) -> bool:
    """Whether ``op`` is expanded into its layers: any ``keras.Model``, or a layer of the
    user's own (not of a library) that tracks sublayers."""
    import keras

    if not isinstance(op, keras.layers.Layer):
        return False
    if isinstance(op, keras.Model):
        return True
    if type(op).__module__.startswith(_LIBRARIES):
        return False
    return bool(op._flatten_layers(include_self=False, recursive=False))


def children(op: Any) -> list[Any]:
    """The layers (and, for a Functional, operations) ``op`` holds, as Keras tracks them."""
    import keras
    from keras.src.models.functional import Functional

    if isinstance(op, keras.Sequential):
        return list(op.layers)
    if isinstance(op, Functional):
        return [o for o in op.operations if not isinstance(o, keras.layers.InputLayer)]
    return list(op._flatten_layers(include_self=False, recursive=False))


def needs_recording(model: Any) -> bool:
    """Whether a Functional or Sequential ``model`` holds, at any depth of nested Functional
    models, a layer whose inside its nodes do not show (a subclassed model, a custom layer
    with sublayers)."""
    for op in children(model):
        if _is_graph_model(op):
            if needs_recording(op):
                return True
        elif is_container(op):
            return True
    return False


@dataclass
class Recording:
    """What one recorded call gives: the graph and, per graph node, its layer."""

    graph: LayerGraph
    ops: dict[int, Any]
    #: how many times each layer ran (by id): a probed run must see the same
    op_calls: dict[int, int]
    #: whether values were computed between layers anywhere (inside containers too)
    raw_ops: bool
    channels_first: set[int] = field(default_factory=set)


def _paths(model: Any) -> tuple[dict[int, str], dict[int, Any]]:
    """A path for every layer under ``model`` (first found wins for shared layers; a repeated
    name gets ``_1``, ``_2``...) and which of them are containers."""
    paths: dict[int, str] = {}
    containers: dict[int, Any] = {}
    used: set[str] = set()

    def walk(op: Any, prefix: str) -> None:
        for child in children(op):
            if id(child) in paths:
                continue
            base = path = prefix + child.name
            k = 0
            while path in used:
                k += 1
                path = f"{base}_{k}"
            used.add(path)
            paths[id(child)] = path
            if is_container(child):
                containers[id(child)] = child
                walk(child, path + "/")

    walk(model, "")
    return paths, containers


def _leaves(model: Any, paths: dict[int, str], containers: dict[int, Any]) -> list[Any]:
    found: dict[int, Any] = {}

    def walk(op: Any) -> None:
        for child in children(op):
            if id(child) in found or id(child) == id(model):
                continue
            found[id(child)] = child
            if id(child) in containers:
                walk(child)

    walk(model)
    return [op for key, op in found.items() if key not in containers]


def _channels_last(shape: Sequence[int | None], op: Any) -> tuple[int | None, ...]:
    dims = tuple(shape[1:])
    if len(dims) == 3 and getattr(op, "data_format", None) == "channels_first":
        return (dims[1], dims[2], dims[0])
    return dims


def _tensors(value: Any) -> list[Any]:
    import keras

    return [t for t in keras.tree.flatten(value) if keras.ops.is_tensor(t)]


class _Scope:
    """One running ``call``: the nodes its values can depend on so far."""

    def __init__(self, seen: set[int]) -> None:
        self.seen = set(seen)


def record(model: Any, run: Callable[[], Any], input_names: Sequence[str]) -> Recording:
    """Run ``run()`` (the model called once on example inputs) with every layer's ``call``
    wrapped, and build the graph from what ran. ``input_names`` name the model's inputs, in
    the order the model's ``call`` gets them."""
    import keras

    paths, containers = _paths(model)
    leaves = _leaves(model, paths, containers)
    unbuilt = [paths[id(op)] for op in leaves if isinstance(op, keras.layers.Layer) and not op.built]
    if unbuilt or not model.built:
        raise ValueError(
            f"{type(model).__name__} is not built yet (layers {', '.join(unbuilt[:3]) or 'all'}"
            " have no weights): call it once on a batch, model(x), or load its weights, before "
            "explaining; camlens leaves the model as it was and does not build it"
        )
    nodes: list[GraphNode] = []
    ops: dict[int, Any] = {}
    calls: dict[int, int] = defaultdict(int)
    aliases: dict[str, list[int]] = defaultdict(list)
    src: dict[int, int] = {}  # id(tensor) -> the node whose output it is
    loose: dict[int, frozenset[int]] = {}  # id(tensor) made between layers -> what it may use
    keep: list[Any] = []  # every tensor seen, alive until the end: no identity is reused
    scopes: list[_Scope] = []
    outputs: list[int] = []
    output_paths: list[str] = []
    state = {"raw": False}  # a value made between layers was seen: edges over-approximate
    channels_first: set[int] = set()

    def add(path: str, op: Any, value: Any, preds: set[int], **kw: Any) -> int:
        nid = len(nodes)
        flat = _tensors(value)
        dims = _channels_last(tuple(flat[0].shape), op) if len(flat) == 1 else None
        call = kw.pop("call", None)
        kind = kw.pop("kind", type(op).__name__)
        nodes.append(GraphNode(nid, path, 0 if call is None else call, kind, dims, sorted(preds), **kw))
        ops[nid] = op
        if dims is not None and len(dims) == 3 and getattr(op, "data_format", None) == "channels_first":
            channels_first.add(nid)
        for scope in scopes:
            scope.seen.add(nid)
        keep.extend(flat)
        for t in flat:
            src[id(t)] = nid
        return nid

    def producers(tensors: list[Any]) -> set[int]:
        """The nodes ``tensors`` come from; a value made between layers may come from anything
        the running call has seen."""
        keep.extend(tensors)
        out: set[int] = set()
        for t in tensors:
            if id(t) in src:
                out.add(src[id(t)])
                continue
            s = loose.get(id(t))
            if s is None:  # first seen here: made inside the running call, from what it saw
                s = loose[id(t)] = frozenset(scopes[-1].seen)
                state["raw"] = True
            out |= s
        return out

    def run_in_scope(op: Any, original: Callable[..., Any], args: Any, kwargs: Any) -> tuple[set[int], Any, Any, int]:
        """Run one call of ``op`` in a scope of its own: the producers of its inputs, its
        output, the scope, and which call of ``op`` it was."""
        preds = producers(_tensors((args, kwargs)))
        scope = _Scope(preds)
        scopes.append(scope)
        try:
            y = original(*args, **kwargs)
        finally:
            scopes.pop()
        call = calls[id(op)]
        calls[id(op)] += 1
        return preds, y, scope, call

    def wrap_leaf(op: Any) -> Callable[..., Any]:
        original = op.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            preds, y, _, call = run_in_scope(op, original, args, kwargs)
            add(paths[id(op)], op, y, preds, call=call)
            return y

        return wrapper

    def wrap_container(op: Any) -> Callable[..., Any]:
        original = op.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            preds, y, scope, call = run_in_scope(op, original, args, kwargs)
            flat = _tensors(y)
            known = [src.get(id(t)) for t in flat]
            if len(flat) == 1 and known[0] is not None:
                aliases[paths[id(op)]].append(known[0])
            elif flat and known[0] is not None:
                # a layer's output first, values made inside after it (keras-hub's encoders
                # return (hidden states, empty placeholders)): the container's path names the
                # first; the others may come from anything the call saw, and a consumer of the
                # first keeps its one exact producer
                aliases[paths[id(op)]].append(known[0])
                for t, s in zip(flat, known):
                    if s is None:
                        state["raw"] = True
                        keep.append(t)
                        loose[id(t)] = frozenset(scope.seen)
            elif any(s is None for s in known):
                state["raw"] = True
                add(paths[id(op)], op, y, scope.seen, call=call)
            return y

        return wrapper

    def wrap_top(op: Any) -> Callable[..., Any]:
        original = op.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            xs = _tensors(args[0] if args else next(iter(kwargs.values()), None))
            if len(xs) != len(input_names):
                raise ValueError(
                    f"{type(model).__name__}.call got {len(xs)} input tensor(s); camlens gave it "
                    f"{len(input_names)}"
                )
            keep.extend(xs)
            ids = []
            for i, (x, name) in enumerate(zip(xs, input_names)):
                if id(x) in src:  # the same array passed twice
                    raise ValueError("give each model input its own array")
                ids.append(add(name, op, x, set(), kind="InputLayer", is_input=True, input_index=i))
            scope = _Scope(set(ids))
            scopes.append(scope)
            try:
                y = original(*args, **kwargs)
            finally:
                scopes.pop()
            flat = keras.tree.flatten_with_path(y) if isinstance(y, dict) else [
                ((), t) for t in keras.tree.flatten(y)
            ]
            for p, t in flat:
                nid = src.get(id(t)) if keras.ops.is_tensor(t) else None
                if nid is None or nodes[nid].is_input:
                    # made between layers: the model's own call is the call site (probed
                    # only where it returns one tensor)
                    state["raw"] = True
                    nid = add(model.name, op, t, scope.seen, call=calls[id(op)])
                    calls[id(op)] = 1
                outputs.append(nid)
                output_paths.append(".".join(map(str, p)) if p else "")
            return y

        return wrapper

    changes: list[tuple[Any, str, Any]] = [(model, "call", wrap_top(model))]
    changes += [(c, "call", wrap_container(c)) for c in containers.values() if c is not model]
    changes += [(op, "call", wrap_leaf(op)) for op in leaves]
    try:
        with instance_attrs(changes):
            run()
    finally:
        del keep[:]
    if not outputs:
        raise ValueError(f"{type(model).__name__} returned no tensor")
    names: list[str] = []
    for nid, p in zip(outputs, output_paths):
        base = name = p or getattr(ops[nid], "name", nodes[nid].path)
        k = 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    input_ids = [n.id for n in nodes if n.is_input]
    graph = LayerGraph(nodes, input_ids, outputs, names, list(input_names),
                       aliases=dict(aliases), approximate=state["raw"])
    op_calls = dict(calls)
    return Recording(graph, ops, op_calls, state["raw"], channels_first)
