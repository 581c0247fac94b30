"""Keras 3 adapter: Functional and Sequential models, nested and shared submodels.

The layer graph is read from the model's own node lists, in the order Keras runs them
(``Functional._run_through_graph``: depth by depth, deepest first), so the k-th time a probed
layer runs is the k-th call site of the graph. Nested models are expanded into their layers.

Probing replaces a layer's ``call`` on the instance for the duration of one explanation; the
gradient of the score with respect to each call site comes from a small per-backend function.
Only the TensorFlow backend is wired so far; the graph, probes and checks are backend-free.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import weakref
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..graph import GraphNode, LayerGraph, linear_head_after
from ..targets import Target
from .base import Capture, InputSpec, SiteCapture, check_inputs, descendants, glorot_uniform

__all__ = ["KerasAdapter", "is_keras_model"]

_MISSING = object()

Source = tuple[int, int]  # (graph node id, which of its outputs)


def is_keras_model(model: Any) -> bool:
    try:
        import keras
    except ImportError:  # pragma: no cover - keras is what this adapter is for
        return False
    return isinstance(model, keras.Model)


def _is_functional(op: Any) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(op, Functional)


def _inner_graph(op: Any) -> Any | None:
    """The Functional that runs when ``op`` is called, for nested models; else ``None``."""
    import keras

    if isinstance(op, keras.Sequential):
        return op._functional
    if _is_functional(op):
        return op
    return None


def _channels_last_shape(shape: Sequence[int | None], op: Any) -> tuple[int | None, ...]:
    dims = tuple(shape[1:])
    if len(dims) == 3 and getattr(op, "data_format", None) == "channels_first":
        return (dims[1], dims[2], dims[0])
    return dims


class KerasAdapter:
    """Adapter for a ``keras.Model`` built with the functional API or ``keras.Sequential``."""

    framework = "keras"
    needs_input_size = False

    def __init__(self, model: Any) -> None:
        import keras

        if not isinstance(model, keras.Model):
            raise TypeError(f"expected a keras.Model; got {type(model).__name__}")
        self.model = model
        self.backend = keras.backend.backend()
        self._graph: LayerGraph | None = None
        self._ops: dict[int, Any] = {}
        self._channels_first: set[int] = set()
        # for each graph node that is a call: the Keras node and where its input tensors come from
        self._calls: dict[int, tuple[Any, list[Source]]] = {}
        self._output_srcs: list[Source] = []

    # ------------------------------------------------------------------ graph
    def _top(self) -> Any:
        import keras

        model = self.model
        if isinstance(model, keras.Sequential):
            if model._functional is None:
                raise ValueError(
                    "this Sequential model has no known input shape yet; start it with "
                    "keras.Input(shape=...) or call model.build((None, H, W, C)) before explaining"
                )
            return model._functional
        if not _is_functional(model):
            raise TypeError(
                f"{type(model).__name__} is a subclassed keras.Model, whose layer graph cannot be "
                "read; rebuild it with the functional API (keras.Model(inputs, outputs)) or "
                "keras.Sequential, which keep the graph camlens needs"
            )
        return model

    def graph(self) -> LayerGraph:
        if self._graph is None:
            self._graph = self._build_graph()
        return self._graph

    def _build_graph(self) -> LayerGraph:
        top = self._top()
        nodes: list[GraphNode] = []
        aliases: dict[str, list[int]] = defaultdict(list)
        calls: dict[int, int] = defaultdict(int)

        def add(path: str, op: Any, shape: Sequence[int | None] | None, preds: list[int], **kw: Any) -> int:
            nid = len(nodes)
            dims = None if shape is None else _channels_last_shape(shape, op)
            nodes.append(GraphNode(nid, path, calls[id(op)], type(op).__name__, dims, preds, **kw))
            calls[id(op)] += 1
            self._ops[nid] = op
            if getattr(op, "data_format", None) == "channels_first" and dims is not None and len(dims) == 3:
                self._channels_first.add(nid)
            return nid

        # Each Keras tensor is known as (graph node, which of its outputs): the pairs let
        # ``_run_nodes`` replay any part of the expanded graph.
        def walk(fmodel: Any, prefix: str, sources: list[Source]) -> list[Source]:
            tensor_src: dict[int, Source] = {id(x): s for x, s in zip(fmodel.inputs, sources)}
            for depth in sorted(fmodel._nodes_by_depth, reverse=True):
                for node in fmodel._nodes_by_depth[depth]:
                    if not node.operation or node.is_input:
                        continue
                    if any(id(x) not in tensor_src for x in node.input_tensors):
                        continue
                    op = fmodel._get_operation_for_node(node)
                    srcs = [tensor_src[id(x)] for x in node.input_tensors]
                    inner = _inner_graph(op)
                    if inner is not None:
                        outs = walk(inner, f"{prefix}{op.name}/", srcs)
                        aliases[prefix + op.name].append(outs[0][0])
                    else:
                        shape = node.outputs[0].shape if node.outputs else None
                        nid = add(prefix + op.name, op, shape, list(dict.fromkeys(s[0] for s in srcs)))
                        self._calls[nid] = (node, srcs)
                        outs = [(nid, k) for k in range(len(node.outputs))]
                    for x, o in zip(node.outputs, outs):
                        tensor_src[id(x)] = o
            return [tensor_src[id(x)] for x in fmodel.outputs]

        input_ids = []
        input_names = []
        for i, x in enumerate(top.inputs):
            op = x._keras_history.operation
            input_names.append(op.name)
            input_ids.append(add(op.name, op, x.shape, [], is_input=True, input_index=i))
        self._output_srcs = walk(top, "", [(i, 0) for i in input_ids])
        return LayerGraph(
            nodes,
            input_ids,
            [s[0] for s in self._output_srcs],
            self.output_names(),
            input_names,
            aliases=dict(aliases),
        )

    def input_specs(self) -> list[InputSpec]:
        top = self._top()
        return [
            InputSpec(x._keras_history.operation.name, tuple(x.shape)) for x in top.inputs
        ]

    def output_names(self) -> list[str]:
        """Keys for dict outputs, else the producing layers' names (``name_1`` for repeats)."""
        import keras

        top = self._top()
        struct = getattr(top, "_outputs_struct", None)
        if isinstance(struct, dict):
            return [".".join(map(str, p)) for p, _ in keras.tree.flatten_with_path(struct)]
        names: list[str] = []
        for x in top.outputs:
            base = name = x._keras_history.operation.name
            k = 0
            while name in names:
                k += 1
                name = f"{base}_{k}"
            names.append(name)
        return names

    def prepare(self, inputs: Any) -> list[np.ndarray]:
        return check_inputs(inputs, self.input_specs())

    def can_probe(self, node: GraphNode) -> bool:
        return True

    def native_inputs(self, arrays: Sequence[np.ndarray]) -> Any:
        return list(arrays)

    # ------------------------------------------------------------------ copies
    def twin(self) -> "KerasAdapter":
        import keras

        try:
            clone = keras.models.clone_model(self.model)
        except Exception as exc:  # clone_model raises many types for custom layers
            raise ValueError(
                f"camlens works on a copy of the model here, and keras.models.clone_model cannot "
                f"copy this one ({type(exc).__name__}: {exc}); make its custom layers "
                "serialisable (get_config/from_config)"
            ) from exc
        clone.set_weights(self.model.get_weights())
        return KerasAdapter(clone)

    def kernel_layers(self, inputs: Any = None) -> list[tuple[str, Any]]:
        import keras

        found: list[tuple[str, Any]] = []
        seen: set[int] = set()

        def walk(m: Any, prefix: str) -> None:  # nested models expanded, in model order
            for layer in m.layers:
                if id(layer) in seen:
                    continue
                seen.add(id(layer))
                if isinstance(layer, keras.Model):
                    walk(layer, f"{prefix}{layer.name}/")
                elif any(len(w.shape) >= 2 for w in layer.weights):
                    found.append((prefix + layer.name, layer))

        walk(self.model, "")
        return found

    def reinitialize(self, layer: Any, rng: np.random.Generator) -> None:
        for w in layer.weights:
            if len(w.shape) >= 2:
                w.assign(glorot_uniform(tuple(int(d) for d in w.shape), False, rng).astype(w.dtype))

    def node_op(self, node: GraphNode) -> Any:
        return self._ops[node.id]

    # ------------------------------------------------------------------ running
    def _call(self, inputs: list[np.ndarray]) -> list[Any]:
        import keras

        x = inputs[0] if len(inputs) == 1 else list(inputs)
        return keras.tree.flatten(self.model(x, training=False))

    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import keras

        return [keras.ops.convert_to_numpy(y) for y in self._call(inputs)]

    def score(self, inputs: list[np.ndarray], target: Target) -> np.ndarray:
        """``(N,)`` target scores, no gradient: for methods that rerun the model."""
        import keras

        graph = self.graph()
        if self.backend in _SCORE_COMPILERS:
            compiled = _compiled_score(self, inputs, target)
            if compiled is not None:
                return compiled
        with _no_grad(self.backend), (
            self._logit_patch(target) if target.wants_logits else contextlib.nullcontext()
        ):
            values = self._input_values(inputs)
            self._run_nodes(values, [n.id for n in graph.nodes if not n.is_input], lean=True)
            outs = [_pick(values[n], k) for n, k in self._output_srcs]
            scores = target.score(outs, graph.output_names, keras.ops)
        return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)

    def capture(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        need_gradients: bool = True,
    ) -> Capture:
        if need_gradients and self.backend in _COMPILERS:
            compiled = _compiled_capture(self, inputs, nodes, target)
            if compiled is not None:
                outs, scores, acts, grads = compiled
                return self._capture_result(inputs, nodes, target, outs, scores, acts, grads, True)
        grad_fn = self._gradient_function()

        def run(make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
            return self._probed_run(inputs, nodes, target, make_probe)

        outs, scores, acts, grads = grad_fn(run, need_gradients)
        return self._capture_result(inputs, nodes, target, outs, scores, acts, grads, need_gradients)

    def _probed_run(
        self, inputs: Sequence[Any], nodes: Sequence[GraphNode], target: Target, make_probe: MakeProbe
    ) -> tuple[list[Any], Any, dict[Key, Any]]:
        """Run the model with ``make_probe(key, y)`` applied to the output ``y`` of each call
        site in ``nodes``; ``(outputs, scores, activations by call site)``."""
        import keras

        graph = self.graph()
        wanted: dict[int, Any] = {}
        for n in nodes:
            wanted.setdefault(id(self._ops[n.id]), self._ops[n.id])
        expected = {
            key: sum(1 for m in graph.nodes if id(self._ops[m.id]) == key) for key in wanted
        }
        # Only the call sites asked for get a probe: a layer that also runs early in the
        # network would otherwise pull the backward pass through the whole network.
        sites = {(id(self._ops[n.id]), n.call) for n in nodes}
        records: dict[int, list[Any]] = defaultdict(list)

        def on_call(op: Any, y: Any) -> Any:
            if not keras.ops.is_tensor(y):
                raise TypeError(
                    f"layer {op.name!r} returns {type(y).__name__}, not one tensor; choose "
                    "another layer"
                )
            key = (id(op), len(records[id(op)]))
            records[id(op)].append(y)
            return make_probe(key, y) if key in sites else y

        # a fresh logit patch each run: jax runs the model twice
        with _probes(list(wanted.values()), on_call), (
            self._logit_patch(target) if target.wants_logits else contextlib.nullcontext()
        ):
            outs = self._call(inputs)
            scores = target.score(outs, graph.output_names, keras.ops)
        for key, op in wanted.items():
            if len(records[key]) != expected[key]:
                raise RuntimeError(
                    f"layer {op.name!r} ran {len(records[key])} time(s) but the model's graph "
                    f"calls it {expected[key]} time(s); camlens cannot tell the call sites apart"
                )
        acts = {(k, i): y for k, ys in records.items() for i, y in enumerate(ys) if (k, i) in sites}
        return outs, scores, acts

    def _capture_result(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        outs: list[Any],
        scores: Any,
        acts: dict[Key, Any],
        grads: dict[Key, Any],
        need_gradients: bool,
    ) -> Capture:
        import keras

        sites = []
        for n in nodes:
            key = (id(self._ops[n.id]), n.call)
            a = keras_to_numpy(acts[key]).astype(np.float32)
            g = np.asarray(grads[key], dtype=np.float32) if need_gradients else None
            if n.id in self._channels_first:
                a = np.moveaxis(a, 1, -1)
                g = None if g is None else np.moveaxis(g, 1, -1)
            sites.append(SiteCapture(n, a, g))
        out_np = [keras.ops.convert_to_numpy(y) for y in outs]
        score_np = np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)
        if score_np.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                f"the target {target.describe()!r} gave {score_np.shape[0]} scores for "
                f"{inputs[0].shape[0]} samples; a target must give one score per sample"
            )
        return Capture(out_np, score_np, sites)

    def input_gradients(
        self, inputs: list[np.ndarray], which: int, target: Target, guided: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[which] (N, H, W, c))``. With ``guided`` every
        ReLU of the model passes back only positive gradients at positive inputs (Guided
        Backpropagation) while this call runs."""
        if self.backend in _INPUT_GRADIENT_COMPILERS:
            compiled = _compiled_input_gradients(self, inputs, which, target, guided)
            if compiled is not None:
                return compiled
        grad_fn = self._gradient_function()
        run = functools.partial(self._input_run, inputs, which, target, guided)
        _, scores, _, grads = grad_fn(run, True)
        g = np.asarray(grads[(-1, which)], dtype=np.float32)
        return np.asarray(keras_to_numpy(scores), np.float32).reshape(-1), g

    def _input_run(
        self, inputs: Sequence[Any], which: int, target: Target, guided: bool, make_probe: MakeProbe
    ) -> tuple[list[Any], Any, dict[Key, Any]]:
        """The model on ``inputs`` with ``make_probe((-1, which), x)`` applied to input
        ``which`` (and the guided rule on its ReLUs): ``(outputs, scores, {key: input})``."""
        import keras

        key: Key = (-1, which)
        xs = [keras.ops.convert_to_tensor(a) for a in inputs]
        xs[which] = make_probe(key, xs[which])
        with contextlib.ExitStack() as patches:
            if target.wants_logits:
                patches.enter_context(self._logit_patch(target))
            if guided:
                patches.enter_context(_guided_relus(self.backend, self._ops.values()))
            outs = self._call(xs)
            scores = target.score(outs, self.graph().output_names, keras.ops)
        return outs, scores, {key: xs[which]}

    def _gradient_function(self) -> Callable[..., Any]:
        grad_fn = _GRADIENT_FUNCTIONS.get(self.backend)
        if grad_fn is None:
            raise NotImplementedError(
                f"the Keras {self.backend!r} backend is not supported; use tensorflow, jax or torch"
            )
        return grad_fn

    def site_scorer(
        self, inputs: list[np.ndarray], node: GraphNode, target: Target
    ) -> Callable[[np.ndarray], np.ndarray]:
        """For one sample (``inputs`` with batch 1): a function from replacement activations
        ``(B, h, w, C)`` at ``node`` to the target scores ``(B,)``.

        Only the layers after ``node`` run on the replacements: the values they need from
        elsewhere (another input's branch) are computed once here, at batch 1, and repeated.
        Layers are replayed from the model's own nodes, so the result is what the whole model
        gives with ``node``'s output replaced.
        """
        import keras

        graph = self.graph()
        if node.id not in self._calls:
            raise ValueError(f"{node.path!r} is not a layer call that can be replaced")
        after = descendants(graph, node.id)
        needed = {p for d in after for p in graph.nodes[d].inputs if p not in after and p != node.id}
        before = [n.id for n in graph.nodes if not n.is_input and n.id not in after and n.id != node.id]
        with _no_grad(self.backend):
            values = self._input_values(inputs)
            self._run_nodes(values, before)
        cached = {p: values[p] for p in needed}
        names = graph.output_names
        order = sorted(after)
        channels_first = node.id in self._channels_first

        def score(acts: np.ndarray) -> np.ndarray:
            a = np.asarray(acts, dtype=np.float32)
            if channels_first:
                a = np.moveaxis(a, -1, 1)
            b = a.shape[0]
            vals: dict[int, Any] = {p: _repeat(v, b) for p, v in cached.items()}
            vals[node.id] = keras.ops.convert_to_tensor(a)
            with _no_grad(self.backend), (
                self._logit_patch(target) if target.wants_logits else contextlib.nullcontext()
            ):
                self._run_nodes(vals, order, lean=True)
                outs = [_pick(vals[n], k) for n, k in self._output_srcs]
                s = target.score(outs, names, keras.ops)
            return np.asarray(keras_to_numpy(s), np.float32).reshape(-1)

        return score

    def _input_values(self, inputs: Sequence[np.ndarray]) -> dict[int, Any]:
        import keras

        graph = self.graph()
        return {nid: keras.ops.convert_to_tensor(a) for nid, a in zip(graph.inputs, inputs)}

    def _run_nodes(self, values: dict[int, Any], todo: Sequence[int], lean: bool = False) -> None:
        """Call the layers of the graph nodes ``todo`` (in graph order) as the model calls
        them, reading their inputs from ``values`` and writing their outputs there.

        ``lean``: drop each value once its last reader has run (the model outputs stay), so
        memory holds a few layers' activations instead of all of them, as Keras' own run
        keeps them to the end."""
        import keras

        last: dict[int, int] = {}
        if lean:
            keep = {n for n, _ in self._output_srcs}
            for nid in todo:
                for p, _ in self._calls[nid][1]:
                    if p not in keep:
                        last[p] = nid
        for nid in todo:
            knode, srcs = self._calls[nid]
            op = self._ops[nid]
            tensors = {id(x): _pick(values[p], k) for x, (p, k) in zip(knode.input_tensors, srcs)}
            args, kwargs = knode.arguments.fill_in(tensors)
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = False
            flat = keras.tree.flatten(op(*args, **kwargs))
            values[nid] = flat[0] if len(flat) == 1 else flat
            del tensors, args, kwargs
            for p, _ in self._calls[nid][1]:
                if last.get(p) == nid:
                    values.pop(p, None)

    # ------------------------------------------------------------------ heads
    def _logit_patch(self, target: Target) -> contextlib.AbstractContextManager[None]:
        """Skip the final softmax/sigmoid of the explained output(s) while explaining."""
        graph = self.graph()
        ops = []
        for i in target.output_indices(graph.output_names):
            ops.append(self._ops[graph.outputs[i]])
        return _without_final_activation(ops)

    def head_weights(self, node: GraphNode, output_index: int) -> np.ndarray:
        """Kernel ``(C, classes)`` of the Dense layer that follows ``node`` through global
        average pooling, for CAM. Raises ``ValueError`` when the model has no such head."""
        graph = self.graph()
        dense = linear_head_after(
            graph,
            node,
            is_pool=lambda n: n.kind == "GlobalAveragePooling2D",
            passes=lambda n: n.kind == "Dropout",
            is_dense=lambda n: n.kind == "Dense",
        )
        kernel = keras_to_numpy(self._ops[dense.id].kernel)
        if kernel.shape[0] != (node.shape or (None,))[-1]:
            raise ValueError(
                f"CAM: the Dense layer {dense.path!r} takes {kernel.shape[0]} features; "
                f"{node.path!r} has {(node.shape or (None,))[-1]} channels"
            )
        by_id = {n.id: n for n in graph.nodes}
        if not self._feeds_output(dense.id, graph.outputs[output_index], by_id, graph.successors()):
            raise ValueError(
                f"CAM: the Dense layer {dense.path!r} after {node.path!r} does not produce "
                f"output {graph.output_names[output_index]!r}"
            )
        return kernel

    @staticmethod
    def _feeds_output(nid: int, out: int, by_id: dict[int, GraphNode], succ: dict[int, list[int]]) -> bool:
        while nid != out:
            nxt = succ[nid]
            if len(nxt) != 1 or by_id[nxt[0]].kind not in ("Activation", "Softmax", "Dropout"):
                return False
            nid = nxt[0]
        return True


def _pick(value: Any, k: int) -> Any:
    return value[k] if isinstance(value, list) else value


def _repeat(value: Any, n: int) -> Any:
    import keras

    if isinstance(value, list):
        return [_repeat(v, n) for v in value]
    return keras.ops.repeat(value, n, axis=0) if n != 1 else value


def _no_grad(backend: str) -> contextlib.AbstractContextManager[Any]:
    """No autograd graph for runs that need no gradient (only the torch backend builds one)."""
    if backend == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def keras_to_numpy(x: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


@contextlib.contextmanager
def _instance_attrs(changes: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set ``obj.attr = value`` on each instance while the block runs; always put back what
    was there (an instance attribute the user had set comes back as it was, one that was not
    set is removed again). ``object.__setattr__`` keeps Keras' attribute tracking out of it."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for obj, attr, value in changes:
            saved.append((obj, attr, obj.__dict__.get(attr, _MISSING)))
            object.__setattr__(obj, attr, value)
        yield
    finally:
        for obj, attr, old in reversed(saved):
            if old is _MISSING:  # pop: an interrupt may have come before the swap itself
                obj.__dict__.pop(attr, None)
            else:
                object.__setattr__(obj, attr, old)


def _probes(ops: Sequence[Any], on_call: Callable[[Any, Any], Any]) -> contextlib.AbstractContextManager[None]:
    """Route each op's output through ``on_call`` while the block runs: a wrapper set on the
    instance shadows the class's ``call``."""

    def wrap(op: Any) -> Callable[..., Any]:
        original = op.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return on_call(op, original(*args, **kwargs))

        return wrapper

    return _instance_attrs([(op, "call", wrap(op)) for op in ops])


def _guided_relus(backend: str, ops: Any) -> contextlib.AbstractContextManager[None]:
    """Swap every ReLU of the model (``activation="relu"``/``"relu6"`` of any layer, an
    ``Activation`` layer, a plain ``ReLU`` layer) for one with the Guided Backpropagation
    gradient, on the instances, while the block runs."""
    changes: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()
    for op in ops:
        if id(op) in seen:
            continue
        seen.add(id(op))
        act = getattr(op, "activation", None)
        name = getattr(act, "__name__", "")
        if type(op).__name__ == "ReLU":
            if float(getattr(op, "negative_slope", 0) or 0) == 0 and float(getattr(op, "threshold", 0) or 0) == 0:
                top = getattr(op, "max_value", None)
                fn = guided_relu(backend, None if top is None else float(top))
                changes.append((op, "call", lambda x, *a, __fn=fn, **k: __fn(x)))
        elif name in ("relu", "relu6") and callable(act):
            changes.append((op, "activation", guided_relu(backend, 6.0 if name == "relu6" else None)))
    return _instance_attrs(changes)


def guided_relu(backend: str, max_value: float | None = None) -> Callable[[Any], Any]:
    """``min(max(x, 0), max_value)`` whose gradient passes only positive gradients at inputs
    inside ``(0, max_value)`` (Springenberg et al., "Striving for Simplicity", 2015)."""
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.custom_gradient
        def tf_guided(x: Any) -> Any:
            y = tf.nn.relu(x) if max_value is None else tf.clip_by_value(x, 0.0, max_value)

            def grad(dy: Any) -> Any:
                gate = tf.logical_and(x > 0, dy > 0)
                if max_value is not None:
                    gate = tf.logical_and(gate, x < max_value)
                return dy * tf.cast(gate, dy.dtype)

            return y, grad

        return tf_guided
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.custom_vjp
        def jax_guided(x: Any) -> Any:
            return jnp.maximum(x, 0) if max_value is None else jnp.clip(x, 0, max_value)

        def fwd(x: Any) -> tuple[Any, Any]:
            return jax_guided(x), x

        def bwd(x: Any, dy: Any) -> tuple[Any]:
            gate = (x > 0) & (dy > 0)
            if max_value is not None:
                gate = gate & (x < max_value)
            return (dy * gate.astype(dy.dtype),)

        jax_guided.defvjp(fwd, bwd)
        return jax_guided
    if backend == "torch":
        from .torch import guided_relu_torch

        return lambda x: guided_relu_torch(x, max_value)
    raise NotImplementedError(f"Guided Backpropagation on the Keras {backend!r} backend")


_SQUASHING = ("softmax", "sigmoid", "log_softmax")


def _without_final_activation(ops: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
    import keras

    changes: list[tuple[Any, str, Any]] = []
    for op in ops:
        name = getattr(getattr(op, "activation", None), "__name__", "")
        if type(op).__name__ == "Softmax" or (type(op).__name__ == "Activation" and name in _SQUASHING):
            changes.append((op, "call", lambda x, *a, **k: x))
        elif name in _SQUASHING:
            changes.append((op, "activation", keras.activations.linear))
    return _instance_attrs(changes)


Key = tuple[int, int]  # (id of the probed op, call index)
MakeProbe = Callable[[Key, Any], Any]
Runner = Callable[[MakeProbe], tuple[list[Any], Any, dict[Key, Any]]]


# Each backend's gradient function runs the model through ``run`` once with probes that add a
# zero tensor at every call site, and returns (outputs, scores, activations, gradients) with
# activations and gradients keyed by call site. Only the probes are differentiated: no
# gradient with respect to the weights is computed.


def _tf_gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
    import tensorflow as tf

    probes: dict[Key, Any] = {}
    with tf.GradientTape(watch_accessed_variables=False) as tape:

        def make_probe(key: Key, y: Any) -> Any:
            if not need_gradients:
                return y
            z = probes[key] = tf.zeros_like(y)
            tape.watch(z)
            return y + z

        outs, scores, acts = run(make_probe)
        total = tf.reduce_sum(scores)
    grads: dict[Key, Any] = {}
    if need_gradients:
        keys = list(probes)
        values = tape.gradient(
            total, [probes[k] for k in keys], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        grads = {k: v.numpy() for k, v in zip(keys, values)}
    return outs, scores, acts, grads


def _jax_gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
    import jax
    import jax.numpy as jnp

    if not need_gradients:
        outs, scores, acts = run(lambda key, y: y)
        return outs, scores, acts, {}
    # jax differentiates functions of their arguments, so the probes must exist before the
    # model runs: their shapes come from an abstract run (no computation, no compilation).
    shapes = jax.eval_shape(lambda: run(lambda key, y: y)[2])
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}

    def total(zs: dict[Key, Any]) -> tuple[Any, tuple[list[Any], Any, dict[Key, Any]]]:
        outs, scores, acts = run(lambda key, y: y + zs[key])
        return jnp.sum(scores), (outs, scores, acts)

    grads, (outs, scores, acts) = jax.grad(total, has_aux=True)(zeros)
    return outs, scores, acts, {k: np.asarray(v) for k, v in grads.items()}


def _torch_gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
    import torch

    probes: dict[Key, Any] = {}

    def make_probe(key: Key, y: Any) -> Any:
        if not need_gradients:
            return y
        # Autograd records from the first probe on: the layers before it run as under
        # no_grad (Keras variables require grad, so they would otherwise record the whole
        # network); the mode set here ends with the no_grad block below.
        torch.set_grad_enabled(True)
        z = probes[key] = torch.zeros_like(y, requires_grad=True)
        return y + z

    with torch.no_grad():
        outs, scores, acts = run(make_probe)
    grads: dict[Key, Any] = {}
    if need_gradients:
        keys = list(probes)
        values: Sequence[Any] = [None] * len(keys)
        if scores.requires_grad:  # else no probe is upstream of the score
            values = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
        grads = {
            k: (np.zeros(tuple(probes[k].shape), np.float32) if v is None
                else v.detach().cpu().numpy())
            for k, v in zip(keys, values)
        }
    acts = {k: v.detach() for k, v in acts.items()}
    outs = [o.detach() for o in outs]
    return outs, scores.detach(), acts, grads


# Keras runs eagerly on TensorFlow and JAX, one operation at a time, with Python and dispatch
# costs for every operation (and jax.grad over that pays them again). For class targets,
# ``capture`` instead compiles the whole probed run (model, score, gradient at the probes) once
# per model, set of call sites and kind of target, with tf.function or jax.jit; they keep one
# compiled program per input shape. Weights are read at run time, not baked in: tf.function
# captures the variables themselves, and the jax function takes their values as arguments
# (mapped in a StatelessScope). The class indices are arguments too, so a new class does not
# compile again. A compiled function holds its model only weakly; its cache entry goes with
# the model.
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def clear_compiled_cache() -> None:
    """Forget every compiled capture, e.g. after changing what a model's layers do."""
    _COMPILED.clear()


def _traceable(target: Target, n: int) -> tuple[tuple[Any, ...], Callable[[Any], Target], np.ndarray] | None:
    """How ``target`` enters a compiled run: ``(key, make, idx)``, where ``make(idx)`` gives the
    target to use inside the trace and ``idx`` is the ``(n,)`` int32 argument passed with the
    inputs; ``None`` where the target cannot be compiled (the eager path runs instead).

    Class targets take their class indices as the argument, so that a new class does not
    compile again. Regression, similarity and segmentation targets are frozen into the trace:
    the key holds their fields (arrays by content), so an equal target reuses the program. A
    callable target, or any subclass, may hold Python that a trace would freeze: never compiled.
    """
    import keras

    from ..targets import ClassScore, Logit

    kind = type(target)
    if kind in (ClassScore, Logit):
        index = target.index  # type: ignore[attr-defined]
        if isinstance(index, list) and len(index) != n:
            return None  # the eager path raises the error that says so
        output, has_index = target.output, index is not None

        def make(idx: Any) -> Target:
            class Traced(kind):  # type: ignore[misc, valid-type]
                def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
                    if not has_index:
                        return super().score(outputs, names, xp)
                    y = self.select(outputs, names)
                    k = self._check(y)
                    picked = keras.ops.take_along_axis(y, keras.ops.expand_dims(idx % k, -1), axis=-1)
                    return picked[:, 0]

            return Traced(None, output)

        idx = np.broadcast_to(np.asarray(0 if index is None else index, dtype=np.int64), (n,))
        return (kind, output, has_index), make, idx.astype(np.int32)
    fields = kind.__dict__.get("trace_fields")  # declared by the class itself, not inherited
    if fields is None:
        return None
    key: list[Any] = [kind, target.output]
    for name in fields:
        value = getattr(target, name)
        if isinstance(value, np.ndarray):
            value = (value.shape, str(value.dtype), hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest())
        try:
            hash(value)
        except TypeError:
            return None
        key.append(value)
    frozen = copy.copy(target)
    return tuple(key), (lambda idx: frozen), np.zeros(n, np.int32)


def _compiled_program(
    adapter: KerasAdapter,
    inputs: list[np.ndarray],
    target: Target,
    kind: tuple[Any, ...],
    build: Callable[[Any, Callable[[Any], Target]], Callable[..., Any]],
) -> tuple[Callable[..., Any], np.ndarray] | None:
    """The compiled program of ``kind`` (what it computes) for ``target`` on ``adapter``'s
    model, built by ``build(model_ref, make)`` on first use and kept in :data:`_COMPILED`, and
    the index argument to call it with; ``None`` where the target cannot be compiled."""
    traced = _traceable(target, inputs[0].shape[0])
    if traced is None:
        return None
    target_key, make, idx = traced
    per_model = _COMPILED.setdefault(adapter.model, {})
    key = (*kind, target_key, len(inputs))
    fn = per_model.get(key)
    if fn is None:
        fn = per_model[key] = build(weakref.ref(adapter.model), make)
    return fn, idx


def _compiled_capture(
    adapter: KerasAdapter, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target
) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]] | None:
    """``(outputs, scores, activations, gradients)`` from the compiled capture, or ``None``
    where the target cannot be compiled (the eager path runs instead)."""
    import keras

    ids = [nd.id for nd in nodes]
    found = _compiled_program(adapter, inputs, target, ("capture", tuple(ids)),
                              lambda ref, make: _COMPILERS[adapter.backend](ref, ids, make))
    if found is None:
        return None
    fn, idx = found
    grads, outs, acts = fn(adapter.model, list(inputs), idx)
    # the target's own score of the outputs: its checks (a class out of range) and the scores
    scores = target.score(outs, adapter.graph().output_names, keras.ops)
    return outs, scores, acts, grads


def _compiled_score(adapter: KerasAdapter, inputs: list[np.ndarray], target: Target) -> np.ndarray | None:
    """``(N,)`` scores from the compiled forward pass, or ``None`` (the eager path runs
    instead). The methods that rerun the model call it once per batch of masked or perturbed
    copies: Score-CAM's 1280 channels of EfficientNet-Lite0 are 160 calls."""
    import keras

    found = _compiled_program(adapter, inputs, target, ("score",), _SCORE_COMPILERS[adapter.backend])
    if found is None:
        return None
    fn, idx = found
    outs = fn(adapter.model, list(inputs), idx)
    scores = target.score(outs, adapter.graph().output_names, keras.ops)
    return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)


def _compiled_input_gradients(
    adapter: KerasAdapter, inputs: list[np.ndarray], which: int, target: Target, guided: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scores, d score / d inputs[which])`` from a compiled run, or ``None`` (the eager path
    runs instead). Pixel attributions call it once per batch of noisy copies (SmoothGrad) or
    path points (Integrated Gradients)."""
    import keras

    found = _compiled_program(
        adapter, inputs, target, ("input", which, guided),
        lambda ref, make: _INPUT_GRADIENT_COMPILERS[adapter.backend](ref, which, guided, make),
    )
    if found is None:
        return None
    fn, idx = found
    outs, grads = fn(adapter.model, list(inputs), idx)
    scores = target.score(outs, adapter.graph().output_names, keras.ops)
    return (np.asarray(keras.ops.convert_to_numpy(scores), np.float32).reshape(-1),
            np.asarray(grads, dtype=np.float32))


def _traced_parts(
    model: Any, node_ids: list[int], make: Callable[[Any], Target], idx: Any
) -> tuple[KerasAdapter, list[GraphNode], Target]:
    """A fresh adapter of ``model``, the probed nodes, and the target of the trace (its class
    indices, if any, the traced tensor ``idx``)."""
    adapter = KerasAdapter(model)
    graph = adapter.graph()
    return adapter, [graph.nodes[i] for i in node_ids], make(idx)


def _tf_capture_function(
    model_ref: Callable[[], Any], node_ids: list[int], make: Callable[[Any], Target]
) -> Callable[..., Any]:
    import tensorflow as tf

    @tf.function(autograph=False)
    def capture(xs: list[Any], idx: Any) -> tuple[Any, ...]:
        adapter, nodes, target = _traced_parts(model_ref(), node_ids, make, idx)
        probes: dict[Key, Any] = {}
        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def make_probe(key: Key, y: Any) -> Any:
                z = probes[key] = tf.zeros_like(y)
                tape.watch(z)
                return y + z

            outs, scores, acts = adapter._probed_run(xs, nodes, target, make_probe)
            total = tf.reduce_sum(scores)
        keys = list(probes)
        values = tape.gradient(
            total, [probes[k] for k in keys], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return dict(zip(keys, values)), outs, acts

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        # tensors, not arrays: a trace per shape and dtype, never per value
        grads, outs, acts = capture([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return {k: v.numpy() for k, v in grads.items()}, outs, acts

    return run


def _jax_capture_function(
    model_ref: Callable[[], Any], node_ids: list[int], make: Callable[[Any], Target]
) -> Callable[..., Any]:
    import jax
    import jax.numpy as jnp
    import keras

    @jax.jit
    def capture(variables: list[Any], xs: list[Any], idx: Any) -> tuple[Any, ...]:
        model = model_ref()
        adapter, nodes, target = _traced_parts(model, node_ids, make, idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):
            # jax differentiates functions of their arguments: the probes' shapes first
            acts = adapter._probed_run(xs, nodes, target, lambda k, y: y)[2]
            zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in acts.items()}

            def total(zs: dict[Key, Any]) -> tuple[Any, tuple[list[Any], dict[Key, Any]]]:
                outs, scores, acts = adapter._probed_run(xs, nodes, target, lambda k, y: y + zs[k])
                return jnp.sum(scores), (outs, acts)

            grads, (outs, acts) = jax.grad(total, has_aux=True)(zeros)
        return grads, outs, acts

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        return capture([v.value for v in model.variables], xs, idx)

    return run


_COMPILERS: dict[str, Callable[..., Callable[..., Any]]] = {
    "tensorflow": _tf_capture_function,
    "jax": _jax_capture_function,
}


def _tf_score_function(model_ref: Callable[[], Any], make: Callable[[Any], Target]) -> Callable[..., Any]:
    import tensorflow as tf

    @tf.function(autograph=False)
    def outputs(xs: list[Any], idx: Any) -> list[Any]:
        adapter, _, target = _traced_parts(model_ref(), [], make, idx)
        return adapter._probed_run(xs, [], target, lambda k, y: y)[0]

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
        outs = outputs([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return [o.numpy() for o in outs]

    return run


def _jax_score_function(model_ref: Callable[[], Any], make: Callable[[Any], Target]) -> Callable[..., Any]:
    import jax
    import keras

    @jax.jit
    def outputs(variables: list[Any], xs: list[Any], idx: Any) -> list[Any]:
        model = model_ref()
        adapter, _, target = _traced_parts(model, [], make, idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):
            return adapter._probed_run(xs, [], target, lambda k, y: y)[0]

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in outputs([v.value for v in model.variables], xs, idx)]

    return run


def _tf_input_gradient_function(
    model_ref: Callable[[], Any], which: int, guided: bool, make: Callable[[Any], Target]
) -> Callable[..., Any]:
    import tensorflow as tf

    @tf.function(autograph=False)
    def gradients(xs: list[Any], idx: Any) -> tuple[list[Any], Any]:
        adapter, _, target = _traced_parts(model_ref(), [], make, idx)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            z = tf.zeros_like(xs[which])
            tape.watch(z)
            outs, scores, _ = adapter._input_run(xs, which, target, guided, lambda k, y: y + z)
            total = tf.reduce_sum(scores)
        return outs, tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        outs, g = gradients([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return [o.numpy() for o in outs], g.numpy()

    return run


def _jax_input_gradient_function(
    model_ref: Callable[[], Any], which: int, guided: bool, make: Callable[[Any], Target]
) -> Callable[..., Any]:
    import jax
    import jax.numpy as jnp
    import keras

    @jax.jit
    def gradients(variables: list[Any], xs: list[Any], idx: Any) -> tuple[list[Any], Any]:
        model = model_ref()
        adapter, _, target = _traced_parts(model, [], make, idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):

            def total(z: Any) -> tuple[Any, list[Any]]:
                outs, scores, _ = adapter._input_run(xs, which, target, guided, lambda k, y: y + z)
                return jnp.sum(scores), outs

            g, outs = jax.grad(total, has_aux=True)(jnp.zeros_like(xs[which]))
        return outs, g

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        outs, g = gradients([v.value for v in model.variables], xs, idx)
        return [np.asarray(o) for o in outs], np.asarray(g)

    return run


#: compiled input gradients for ``KerasAdapter.input_gradients``, per backend
_INPUT_GRADIENT_COMPILERS: dict[str, Callable[..., Callable[..., Any]]] = {
    "tensorflow": _tf_input_gradient_function,
    "jax": _jax_input_gradient_function,
}


#: compiled forward passes for ``KerasAdapter.score`` (no gradient), per backend
_SCORE_COMPILERS: dict[str, Callable[..., Callable[..., Any]]] = {
    "tensorflow": _tf_score_function,
    "jax": _jax_score_function,
}


_GRADIENT_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "tensorflow": _tf_gradients,
    "jax": _jax_gradients,
    "torch": _torch_gradients,
}


def load_keras_file(path: Any) -> Any:
    """A model saved by Keras (``.keras``, ``.h5``), loaded without compiling it."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types here; say which file failed
        raise ValueError(f"{path}: could not load the Keras model: {exc}") from exc
