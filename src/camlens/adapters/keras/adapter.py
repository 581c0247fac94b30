"""Keras 3 adapter: Functional and Sequential models, nested and shared submodels, and
subclassed models.

The layer graph is read from the model's own node lists, in the order Keras runs them
(``Functional._run_through_graph``: depth by depth, deepest first), so the k-th time a probed
layer runs is the k-th call site of the graph. Nested models are expanded into their layers.

Probing replaces a layer's ``call`` on the instance for the duration of one explanation
(``patches.py``); the gradient of the score with respect to each call site comes from the
running backend's module (``backends/``, chosen once per adapter, the same names in each), and
on TensorFlow and JAX from compiled programs (``compiled.py``). This module is backend-free.

A subclassed model (or a Functional one holding one, or a custom layer with sublayers) has no
nodes to read: its graph comes from one recorded eager call (``recorded.py``), and it runs
eagerly: no compiled programs, and the replay from a layer reruns the whole model with that
layer's call returning the replacement.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import weakref
from collections import defaultdict
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from ...graph import GraphNode, LayerGraph
from ...rules import LayerRules, ReluRule, Rescale
from ...targets import Target, scores_of
from ..base import AttentionCapture, Capture, InputSpec, SiteCapture, check_inputs, class_score_as_logit, descendants, glorot_uniform
from . import backends
from .backends._types import Key, MakeProbe
from .compiled import (compiled_capture, compiled_features, compiled_input_outputs,
                       compiled_probe_run, compiled_score)
from .patches import instance_attrs, probes, rule_relus, without_final_activation
from .recorded import children, is_container, needs_recording, record
from ..._args import warn

__all__ = ["KerasAdapter", "clear_graph_cache", "is_keras_model", "keras_to_numpy", "load_keras_file"]

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


def _layer_names(layers: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Every layer's name and ``data_format`` (``None`` where it has none), read by ``map``
    (C): checked on every ``explain`` against the kept graph."""
    dicts = list(map(vars, layers))
    names = tuple(map(_NAME_OF, dicts))
    if None in names:  # a layer whose name is a property of its class
        names = tuple(getattr(op, "name", None) for op in layers)
    return names, tuple(map(_DATA_FORMAT_OF, dicts))


# a Keras layer keeps both in its __dict__
_NAME_OF = operator.methodcaller("get", "name")
_DATA_FORMAT_OF = operator.methodcaller("get", "data_format")


@dataclass(frozen=True)
class _KeptGraph:
    """A Functional model's graph as :meth:`KerasAdapter._build_graph` read it, and what it was
    read from. The layers are held strongly (the model holds them anyway), the model's
    Functional weakly: for a Functional model it is the model, the key of :data:`_GRAPHS`."""

    top: Callable[[], Any]
    layers: tuple[Any, ...]
    names: tuple[tuple[Any, Any], ...]
    graph: LayerGraph
    output_srcs: list[Source]
    ops: dict[int, Any]
    calls: dict[int, tuple[Any, list[Source]]]
    op_calls: dict[int, int]
    channels_first: frozenset[int]


#: per model, the graph read from its nodes, for as long as the model lives
_GRAPHS: weakref.WeakKeyDictionary[Any, _KeptGraph] = weakref.WeakKeyDictionary()


def clear_graph_cache() -> None:
    """Forget every kept layer graph (they are read again from the models' nodes)."""
    _GRAPHS.clear()


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
        self._backend_module: ModuleType | None = None
        self._graph: LayerGraph | None = None
        self._ops: dict[int, Any] = {}
        self._channels_first: set[int] = set()
        # for each graph node that is a call: the Keras node and where its input tensors come from
        self._calls: dict[int, tuple[Any, list[Source]]] = {}
        self._output_srcs: list[Source] = []
        # how many times each layer runs in one call of the model, by id
        self._op_calls: dict[int, int] = {}
        self._recorded: bool | None = None
        self._raw_ops = False  # a recorded model computes between its layers
        self._example: list[np.ndarray] | None = None  # recorded: the inputs the graph is of
        self._warned: set[str] = set()
        #: a subclassed model has no input size of its own (an instance attribute here)
        try:
            self.needs_input_size = self._top() is None
        except ValueError:  # an unbuilt Sequential: said when its graph is asked for
            self.needs_input_size = False

    # ------------------------------------------------------------------ graph
    def _top(self) -> Any | None:
        """The Functional the model runs; ``None`` for a subclassed model."""
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
            return None
        return model

    @property
    def recorded(self) -> bool:
        """Whether the graph is read from a recorded call (``recorded.py``), not from nodes."""
        if self._recorded is None and not (self._graph is None and self._reuse_graph()):
            top = self._top()
            self._recorded = top is None or needs_recording(top)
        return bool(self._recorded)

    def graph(self) -> LayerGraph:
        if self._graph is None:
            if self._reuse_graph():
                return self._graph  # type: ignore[return-value]
            self._graph = self._record_graph() if self.recorded else self._build_graph()
        return self._graph

    def _reuse_graph(self) -> bool:
        """Take the graph read from this model's nodes by an earlier adapter (``explain`` makes
        a new adapter per call, and reading EfficientNet-Lite0's nodes costs about a millisecond,
        a tenth of its forward pass at batch 1) where it still holds: the same Functional runs
        (a Sequential's is rebuilt when a layer is added) and every layer has the name and
        ``data_format`` the graph was read with (the other settings cannot change the nodes).
        A Functional's nodes are fixed when it is built."""
        kept = _GRAPHS.get(self.model)
        if kept is None:
            return False
        top = self._top()
        if top is None or kept.top() is not top or kept.names != _layer_names(kept.layers):
            return False
        self._recorded = False
        self._graph, self._output_srcs = kept.graph, kept.output_srcs
        self._ops, self._calls = dict(kept.ops), dict(kept.calls)
        self._op_calls, self._channels_first = dict(kept.op_calls), set(kept.channels_first)
        return True

    def _record_graph(self) -> LayerGraph:
        example = self._example
        if example is None:
            shapes = self._known_shapes()
            if shapes is None or any(d is None for s in shapes for d in s[1:]):
                raise ValueError(
                    f"{type(self.model).__name__} is a subclassed Keras model, which has no input "
                    "shape of its own: explain a batch first, or call "
                    "camlens.layers(model, input_shape=(1, H, W, C))"
                )
            example = [np.zeros((1, *s[1:]), np.float32) for s in shapes]
        names = [s.name for s in self.input_specs()]
        if len(names) != len(example):
            names = _input_names(len(example))

        def run() -> None:
            with self._no_grad():
                self._call([self._tensor(a) for a in example])

        rec = record(self.model, run, names)
        self._ops, self._op_calls = rec.ops, rec.op_calls
        self._channels_first, self._raw_ops = rec.channels_first, rec.raw_ops
        return rec.graph

    def _known_shapes(self) -> list[tuple[int | None, ...]] | None:
        """The input shapes the model knows: a Functional's inputs, else the shapes a
        subclassed model was built or first called with (batch first)."""
        top = self._top()
        if top is not None:
            return [tuple(x.shape) for x in top.inputs]
        built = getattr(self.model, "_build_shapes_dict", None) or {}
        if len(built) != 1:
            return None
        shape = next(iter(built.values()))
        if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
            return [tuple(s) for s in shape]
        if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
            return [tuple(shape)]
        return None

    @staticmethod
    def _tensor(a: np.ndarray) -> Any:
        import keras

        return keras.ops.convert_to_tensor(a)

    def _build_graph(self) -> LayerGraph:
        top = self._top()
        nodes: list[GraphNode] = []
        aliases: dict[str, list[int]] = defaultdict(list)
        calls: dict[int, int] = defaultdict(int)
        nested: list[Any] = []  # the nested models, whose names are in the paths

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
                        nested.append(op)
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
        assert top is not None
        for i, x in enumerate(top.inputs):
            op = x._keras_history.operation
            input_names.append(op.name)
            input_ids.append(add(op.name, op, x.shape, [], is_input=True, input_index=i))
        self._output_srcs = walk(top, "", [(i, 0) for i in input_ids])
        self._op_calls = dict(calls)
        graph = LayerGraph(
            nodes,
            input_ids,
            [s[0] for s in self._output_srcs],
            self.output_names(),
            input_names,
            aliases=dict(aliases),
        )
        layers = tuple({id(op): op for op in [*self._ops.values(), *nested]}.values())
        _GRAPHS[self.model] = _KeptGraph(
            weakref.ref(top), layers, _layer_names(layers), graph, self._output_srcs, dict(self._ops),
            dict(self._calls), dict(self._op_calls), frozenset(self._channels_first))
        return graph

    def input_specs(self) -> list[InputSpec]:
        top = self._top()
        if top is not None:
            return [
                InputSpec(x._keras_history.operation.name, tuple(x.shape)) for x in top.inputs
            ]
        if self._example is not None:
            names = _input_names(len(self._example))
            return [InputSpec(n, (None, *a.shape[1:])) for n, a in zip(names, self._example)]
        shapes = self._known_shapes()
        if shapes is None:
            return [InputSpec("input", (None, None, None, None))]
        return [InputSpec(n, (None, *s[1:])) for n, s in zip(_input_names(len(shapes)), shapes)]

    def output_names(self) -> list[str]:
        """Keys for dict outputs, else the producing layers' names (``name_1`` for repeats)."""
        import keras

        top = self._top()
        if top is None or self.recorded:
            return self.graph().output_names
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
        if self._top() is not None:
            arrays = check_inputs(inputs, self.input_specs())
        else:
            # a subclassed model takes what its call takes: the ranks it was built with (else
            # images), any size; as many inputs as given
            n = len(inputs) if isinstance(inputs, (list, tuple)) and len(inputs) > 1 and all(
                np.ndim(a) >= 2 for a in inputs) else 1
            shapes = self._known_shapes()
            if shapes is None or len(shapes) != n:
                shapes = [(None, None, None, None)] * n
            names = _input_names(n)
            arrays = check_inputs(inputs, [InputSpec(k, (None,) * len(s)) for k, s in zip(names, shapes)])
        if self.recorded and (
            self._example is None or [a.shape[1:] for a in arrays] != [e.shape[1:] for e in self._example]
        ):
            self._example = [a[:1].copy() for a in arrays]
            self._graph = None  # another input size: record again
        return arrays

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
            for layer in children(m):
                if id(layer) in seen or not isinstance(layer, keras.layers.Layer):
                    continue
                seen.add(id(layer))
                if isinstance(layer, keras.Model) or is_container(layer):
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

        if self.recorded:
            return [keras.ops.convert_to_numpy(y) for y in self._call(inputs)]
        # layer by layer, each activation dropped after its last reader: Keras' own call keeps
        # every one to the end (EfficientNet-Lite0: about 80 MB per image, 2.7 GB for a batch of
        # 32 of a metric's modified copies)
        graph = self.graph()
        with self._no_grad():
            values = self._input_values(inputs)
            self._run_nodes(values, [n.id for n in graph.nodes if not n.is_input], lean=True)
            return [keras.ops.convert_to_numpy(_pick(values[n], k)) for n, k in self._output_srcs]

    def score(self, inputs: list[np.ndarray], target: Target) -> np.ndarray:
        """``(N,)`` target scores, no gradient: for methods that rerun the model."""
        import keras

        graph = self.graph()
        if self._compiles():
            compiled = compiled_score(self, inputs, target)
            if compiled is not None:
                return compiled
        if self.recorded:
            with self._no_grad(), self._logit_patch(target):
                outs = self._call(list(inputs))
                scores = target.score(outs, graph.output_names, keras.ops)
            return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)
        with self._no_grad(), self._logit_patch(target):
            values = self._input_values(inputs)
            self._run_nodes(values, [n.id for n in graph.nodes if not n.is_input], lean=True)
            outs = [_pick(values[n], k) for n, k in self._output_srcs]
            scores = scores_of(target, outs, graph.output_names, keras.ops)
        return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)

    def capture(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        need_gradients: bool = True,
    ) -> Capture:
        if self._compiles():
            if need_gradients:
                compiled = compiled_capture(self, inputs, nodes, target)
                if compiled is not None:
                    outs, scores, acts, grads = compiled
                    return self._capture_result(inputs, nodes, target, outs, scores, acts, grads, True)
            else:
                found = compiled_features(self, inputs, nodes, target)
                if found is not None:
                    outs, scores, acts = found
                    return self._capture_result(inputs, nodes, target, outs, scores, acts, {}, False)
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
        expected = {key: self._op_calls.get(key, 0) for key in wanted}
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
        with probes(list(wanted.values()), on_call), self._logit_patch(target):
            outs = self._call(inputs)
            scores = scores_of(target, outs, graph.output_names, keras.ops)
        for key, op in wanted.items():
            if len(records[key]) != expected[key]:
                raise RuntimeError(
                    f"layer {op.name!r} ran {len(records[key])} time(s) but the model's graph "
                    f"calls it {expected[key]} time(s); camlens cannot tell the call sites apart"
                )
        acts = {(k, i): y for k, ys in records.items() for i, y in enumerate(ys) if (k, i) in sites}
        return outs, scores, acts

    def attentions(
        self, inputs: list[np.ndarray], target: Target, need_gradients: bool = False
    ) -> AttentionCapture:
        """One run with every ``MultiHeadAttention``'s probabilities recorded (and their
        gradients): each is made to take its explicit path (``return_attention_scores``), whose
        softmax output, probed, is what multiplies the values."""
        import keras

        graph = self.graph()
        mhas = [(n.path, self._ops[n.id]) for n in graph.nodes
                if not n.is_input and isinstance(self._ops[n.id], keras.layers.MultiHeadAttention)]
        mhas = list({id(op): (path, op) for path, op in mhas}.values())
        if not mhas:
            raise ValueError(
                f"{self.model.name!r} has no attention camlens can read (keras.layers.MultiHeadAttention "
                "and its subclasses); attention methods need a vision transformer: use a layer method "
                "such as 'gradcam'"
            )
        names = {id(op): path for path, op in mhas}
        order: list[str] = []

        def run(make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
            records: list[Any] = []
            order.clear()

            def explicit(op: Any) -> Callable[..., Any]:
                original = op._compute_attention

                def wrapper(query: Any, key: Any, value: Any, attention_mask: Any = None, training: Any = None,
                            return_attention_scores: bool = False, **kw: Any) -> Any:
                    return original(query, key, value, attention_mask, training, True, **kw)

                return wrapper

            def softmax(op: Any) -> Callable[..., Any]:
                original = op._masked_softmax

                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    y = original(*args, **kwargs)
                    records.append(y)
                    order.append(names[id(op)])
                    return make_probe(len(records) - 1, y)

                return wrapper

            changes = [(op, "_compute_attention", explicit(op)) for _, op in mhas]
            changes += [(op, "_masked_softmax", softmax(op)) for _, op in mhas]
            with instance_attrs(changes), self._logit_patch(target):
                outs = self._call(inputs)
                scores = scores_of(target, outs, graph.output_names, keras.ops)
            return outs, scores, dict(enumerate(records))

        outs, scores, probs, grads = self._gradient_function()(run, need_gradients)
        keys = sorted(probs)
        return AttentionCapture(
            [keras_to_numpy(o) for o in outs], keras_to_numpy(scores).astype(np.float32).reshape(-1), None,
            [keras_to_numpy(probs[k]).astype(np.float32) for k in keys],
            [np.asarray(grads[k], np.float32) for k in keys] if need_gradients else None, list(order),
        )

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
        out_np = [y if isinstance(y, np.ndarray) else keras.ops.convert_to_numpy(y) for y in outs]
        score_np = np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)
        if score_np.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                f"the target {target.describe()!r} gave {score_np.shape[0]} scores for "
                f"{inputs[0].shape[0]} samples; a target must give one score per sample"
            )
        return Capture(out_np, score_np, sites)

    def input_gradients(
        self, inputs: list[np.ndarray], which: int, target: Target, rule: ReluRule | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[which] (N, H, W, c))``. With a ``rule``
        (:mod:`camlens.rules`) every ReLU of the model passes gradients back by it while this
        call runs."""
        if isinstance(rule, Rescale):
            return self._rescale(inputs, which, class_score_as_logit(target), rule)
        if isinstance(rule, LayerRules):
            return self._lrp(inputs, which, class_score_as_logit(target), rule)
        _, scores, g = self._input_outputs(inputs, which, target, rule)
        return np.asarray(keras_to_numpy(scores), np.float32).reshape(-1), g

    def input_capture(self, inputs: list[np.ndarray], which: int, target: Target,
                      rule: Any = None) -> tuple[Capture, np.ndarray] | None:
        """:meth:`capture` with no call site and the plain input gradient ``d score /
        d inputs[which]`` in one run: saliency then costs one forward and one backward pass,
        not one more forward. On TensorFlow and JAX one compiled run (the program
        :meth:`input_gradients` then reuses for each image's pinned class: the first call
        compiles one program, not a forward one and a gradient one); eagerly on the torch
        backend, for subclassed models and for targets that are not compiled. ``None`` for a
        rule (LRP, DeepLIFT: their runs are traced per image), and ``explain`` runs its usual
        pass."""
        if rule is not None:
            return None
        outs, scores, grads = self._input_outputs(inputs, which, target, None)
        return self._capture_result(inputs, [], target, outs, scores, {}, {}, False), grads

    def _input_outputs(self, inputs: list[np.ndarray], which: int, target: Target,
                       rule: ReluRule | None) -> tuple[list[Any], Any, np.ndarray]:
        """``(outputs, scores, d score / d inputs[which])`` of one run with ``rule`` on the
        model's ReLUs: a compiled program on TensorFlow and JAX where the target can be
        compiled, else eagerly."""
        if self._compiles():
            found = compiled_input_outputs(self, inputs, which, target, rule)
            if found is not None:
                return found
        if rule is not None and self.recorded:
            self.graph()
            if self._raw_ops:
                self._warn_once(
                    "rule",
                    f"{type(self.model).__name__} computes between its layers (keras.ops, x + y): "
                    "a ReLU there (keras.ops.relu) is not a layer, and passes gradients back "
                    "plainly, not by the rule; use ReLU layers or activation='relu' for guided "
                    "methods",
                )
        run = functools.partial(self._input_run, inputs, which, target, rule)
        outs, scores, _, grads = self._gradient_function()(run, True)
        return outs, scores, np.asarray(grads[(-1, which)], dtype=np.float32)

    def activation_gradients(
        self, inputs: list[np.ndarray], node: GraphNode, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[0] (N, H, W, c))`` for the score
        ``sum(A * weights)`` per sample, ``A`` the channels-last output of call site ``node``.
        Runs eagerly: a feature visualization changes the input at every step, so a compiled
        program would gain nothing over its trace."""
        import keras

        if node.is_input:
            raise ValueError(f"{node.label!r} is a model input, not a layer")
        op = self._ops[node.id]
        expected = self._op_calls.get(id(op), 0)
        channels_first = node.id in self._channels_first
        key: Key = (-1, 0)

        def run(make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
            xs = [keras.ops.convert_to_tensor(a) for a in inputs]
            xs[0] = make_probe(key, xs[0])
            seen: list[Any] = []

            def on_call(layer: Any, y: Any) -> Any:
                seen.append(y)
                return y

            with probes([op], on_call):
                outs = self._call(xs)
            if len(seen) != expected or node.call >= len(seen):
                raise RuntimeError(
                    f"layer {op.name!r} ran {len(seen)} time(s) but the model's graph calls it "
                    f"{expected} time(s); camlens cannot tell the call sites apart"
                )
            y = seen[node.call]
            if not keras.ops.is_tensor(y):
                raise TypeError(f"layer {op.name!r} returns {type(y).__name__}, not one tensor; choose another layer")
            if channels_first:
                y = keras.ops.moveaxis(y, 1, -1)
            w = keras.ops.convert_to_tensor(np.asarray(weights, np.float32))
            if tuple(y.shape) != tuple(w.shape):
                raise ValueError(f"layer {node.label!r} gives shape {tuple(y.shape)}; the weights have {w.shape}")
            y = keras.ops.cast(y, "float32")
            scores = keras.ops.sum(keras.ops.reshape(y * w, (int(y.shape[0]), -1)), axis=1)
            return outs, scores, {key: xs[0]}

        self.graph()
        _, scores, _, grads = self._gradient_function()(run, True)
        g = np.asarray(grads[key], dtype=np.float32)
        return np.asarray(keras_to_numpy(scores), np.float32).reshape(-1), g

    def _refuse_recorded(self, method: str) -> None:
        if self.recorded:
            raise ValueError(
                f"{method} needs a Functional or Sequential Keras model: {type(self.model).__name__} is "
                "subclassed, and what it computes between its layers no rule reaches; build it with "
                "keras.Model(inputs, outputs), or explain it with method='integratedgradients'"
            )

    def _relevance_run(self, inputs: list[np.ndarray], target: Target, kind: tuple[Any, ...],
                       runner: Callable[..., tuple[list[Any], Any, dict[Key, Any]]]
                       ) -> tuple[Any, dict[Key, Any], dict[Key, Any]]:
        """``(scores, probed values, their gradients)`` of ``runner(adapter, xs, target,
        make_probe, nodes)``: a compiled program on TensorFlow and JAX (kept per model under ``kind``,
        which names everything the run depends on besides the layers, the target and the
        shapes), else eagerly. ``runner`` must not hold this adapter or its model: a program
        holds its model weakly."""
        if self._compiles():
            found = compiled_probe_run(self, inputs, target, kind, runner)
            if found is not None:
                _, scores, acts, grads = found
                return scores, acts, grads
        _, scores, acts, grads = self._gradient_function()(lambda mp: runner(self, inputs, target, mp, []), True)
        return scores, acts, grads

    def _rescale(self, inputs: list[np.ndarray], which: int, target: Target,
                 rule: Rescale) -> tuple[np.ndarray, np.ndarray]:
        """DeepLIFT's multipliers for ``inputs[which]``: a reference run on the baseline, then
        the rescaled gradient, in one compiled program (:mod:`.relevance`)."""
        self._refuse_recorded("deeplift")
        ref = np.asarray(rule.reference, dtype=np.float32)
        try:
            ref = np.ascontiguousarray(np.broadcast_to(ref, inputs[which].shape))
        except ValueError:
            raise ValueError(f"deeplift: baseline of shape {ref.shape} does not fit inputs of shape "
                             f"{inputs[which].shape}") from None
        self.graph()
        plain = tuple(rule.plain)

        def runner(adapter: Any, xs: Sequence[Any], target: Target, make_probe: MakeProbe, nodes: Any) -> Any:
            return adapter._rescale_run(xs, which, target, plain, make_probe)

        # the baseline travels as one more input: a program per shape, not per baseline
        scores, _, grads = self._relevance_run([*inputs, ref], target, ("deeplift", which, type(rule), plain), runner)
        return (np.asarray(keras_to_numpy(scores), np.float32).reshape(-1),
                np.ascontiguousarray(np.asarray(grads[(-1, which)], np.float32)))

    def _rescale_run(self, xs: Sequence[Any], which: int, target: Target, plain: tuple[str, ...],
                     make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
        """The reference run on ``xs[-1]`` (each nonlinearity's input kept), then the probed run
        on ``xs[:-1]`` rescaled against it."""
        import keras

        from .relevance import rescale_calls

        graph = self.graph()
        skipped = self._logit_ops(target)
        state: dict = {"record": True, "used": {}, "ref": {}}
        changes = rescale_calls(list(self._ops.values()), state, skipped, plain)
        xs = [keras.ops.convert_to_tensor(a) for a in xs]
        inputs, ref_inputs = xs[:-1], list(xs[:-1])
        ref_inputs[which] = xs[-1]
        with self._logit_patch(target), (
            instance_attrs(changes)
        ):
            self._call(ref_inputs)
        state["record"] = False
        key: Key = (-1, which)
        inputs[which] = make_probe(key, inputs[which])
        with self._logit_patch(target), (
            instance_attrs(changes)
        ):
            outs = self._call(inputs)
            scores = scores_of(target, outs, graph.output_names, keras.ops)
        return outs, scores, {key: inputs[which]}

    def _lrp(self, inputs: list[np.ndarray], which: int, target: Target,
             rule: LayerRules) -> tuple[np.ndarray, np.ndarray]:
        """LRP's relevance of ``inputs[which]``, in one compiled program (:mod:`.relevance`)."""
        from .relevance import PROBES

        self._refuse_recorded("lrp")
        self.graph()

        def runner(adapter: Any, xs: Sequence[Any], target: Target, make_probe: MakeProbe, nodes: Any) -> Any:
            return adapter._lrp_run(xs, target, rule, make_probe)

        # keyed on the rules' values: a new LRP(...) of the same settings reuses the program,
        # another composite, epsilon or gamma traces its own
        kind = ("lrp", which, type(rule), rule.name, rule.conv, rule.dense, rule.first, rule.plain)
        scores, acts, grads = self._relevance_run(inputs, target, kind, runner)
        a = np.asarray(keras_to_numpy(acts[PROBES[0]]), np.float32)
        rel = a * np.asarray(grads[PROBES[0]], np.float32) + np.asarray(grads[PROBES[1]], np.float32)
        if rel[0].size != inputs[which][0].size:
            raise ValueError(
                f"lrp: the first Dense or convolution layer takes an input of shape {a.shape}, not the "
                f"model input {inputs[which].shape} (or a reshaping of it): the relevance cannot be "
                "mapped back to the pixels. Explain this model with method='integratedgradients'"
            )
        return (np.asarray(keras_to_numpy(scores), np.float32).reshape(-1),
                np.ascontiguousarray(rel.reshape(inputs[which].shape)))

    def _lrp_run(self, xs: Sequence[Any], target: Target, rule: LayerRules,
                 make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
        """The model under ``rule``, the first linear layer's input probed (:data:`.relevance.PROBES`)."""
        import keras

        from .relevance import lrp_calls, nonnegative_inputs

        graph = self.graph()
        skipped = self._logit_ops(target)
        state: dict = {"make_probe": make_probe}
        changes = lrp_calls(list(self._ops.values()), rule, state, skipped,
                            nonnegative_inputs(graph.nodes, self._ops.__getitem__))
        xs = [keras.ops.convert_to_tensor(a) for a in xs]
        with self._logit_patch(target), (
            instance_attrs(changes)
        ):
            outs = self._call(xs)
            scores = scores_of(target, outs, graph.output_names, keras.ops)
        if "acts" not in state:
            raise ValueError("lrp: no Dense or convolution layer ran on the input")
        return outs, scores, state["acts"]

    def _input_run(
        self, inputs: Sequence[Any], which: int, target: Target, rule: ReluRule | None,
        make_probe: MakeProbe,
    ) -> tuple[list[Any], Any, dict[Key, Any]]:
        """The model on ``inputs`` with ``make_probe((-1, which), x)`` applied to input
        ``which`` (and ``rule`` on its ReLUs): ``(outputs, scores, {key: input})``."""
        import keras

        key: Key = (-1, which)
        xs = [keras.ops.convert_to_tensor(a) for a in inputs]
        xs[which] = make_probe(key, xs[which])
        # patches in the with statement itself, not an ExitStack: a Ctrl-C between a patch's
        # __enter__ and ExitStack recording its exit would leave the patch on
        with self._logit_patch(target), (
            rule_relus(self.backend_module, self._ops.values(), rule) if rule is not None
            else contextlib.nullcontext()
        ):
            outs = self._call(xs)
            scores = scores_of(target, outs, self.graph().output_names, keras.ops)
        return outs, scores, {key: xs[which]}

    def _gradient_function(self) -> Callable[..., Any]:
        return self.backend_module.gradients

    # ------------------------------------------------------------------ the backend
    @property
    def backend_module(self) -> ModuleType:
        """The module of the running Keras backend (``backends/``), loaded on first use."""
        if self._backend_module is None:
            self._backend_module = backends.load(self.backend)
        return self._backend_module

    @property
    def compiles_per_shape(self) -> bool:
        """Whether runs are compiled, one program per input shape (TensorFlow, JAX): callers
        that rerun the model pad a last, smaller batch to the size before it."""
        return self._compiles()

    def _compiles(self) -> bool:
        return (self.backend in backends.SUPPORTED and self.backend_module.COMPILES
                and not self.recorded)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, RuntimeWarning)

    def _no_grad(self) -> contextlib.AbstractContextManager[Any]:
        """No autograd graph for runs that need no gradient (only the torch backend builds one)."""
        if self.backend not in backends.SUPPORTED:
            return contextlib.nullcontext()
        return self.backend_module.no_grad()

    def graph_ops(self) -> list[Any]:
        """Every layer of the graph once, in graph order."""
        self.graph()
        return list({id(op): op for op in self._ops.values()}.values())

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
        if self.recorded:
            return self._recorded_site_scorer(inputs, node, target)
        if node.id not in self._calls:
            raise ValueError(f"{node.path!r} is not a layer call that can be replaced")
        after = descendants(graph, node.id)
        needed = {p for d in after for p in graph.nodes[d].inputs if p not in after and p != node.id}
        before = [n.id for n in graph.nodes if not n.is_input and n.id not in after and n.id != node.id]
        with self._no_grad():
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
            with self._no_grad(), self._logit_patch(target):
                self._run_nodes(vals, order, lean=True)
                outs = [_pick(vals[n], k) for n, k in self._output_srcs]
                s = scores_of(target, outs, names, keras.ops)
            return np.asarray(keras_to_numpy(s), np.float32).reshape(-1)

        return score

    def _recorded_site_scorer(
        self, inputs: list[np.ndarray], node: GraphNode, target: Target
    ) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`site_scorer` for a recorded graph: the whole model reruns on the sample,
        repeated, with ``node``'s layer returning the replacement at its call ``node.call``."""
        import keras

        if node.is_input:
            raise ValueError(f"{node.path!r} is a model input, not a layer call that can be replaced")
        op = self._ops[node.id]
        names = self.graph().output_names
        channels_first = node.id in self._channels_first
        expected = self._op_calls.get(id(op), 0)

        def score(acts: np.ndarray) -> np.ndarray:
            a = np.asarray(acts, dtype=np.float32)
            if channels_first:
                a = np.moveaxis(a, -1, 1)
            b = a.shape[0]
            replacement = keras.ops.convert_to_tensor(a)
            seen = [0]

            def on_call(layer: Any, y: Any) -> Any:
                k = seen[0]
                seen[0] += 1
                if k != node.call:
                    return y
                if not keras.ops.is_tensor(y) or tuple(y.shape) != tuple(a.shape):
                    raise ValueError(
                        f"layer {node.label!r} gives {getattr(y, 'shape', type(y).__name__)} here; "
                        f"its replacement has shape {a.shape}"
                    )
                return keras.ops.cast(replacement, y.dtype)

            xs = [np.repeat(x, b, axis=0) for x in inputs]
            with self._no_grad(), probes([op], on_call), self._logit_patch(target):
                outs = self._call(xs)
                s = target.score(outs, names, keras.ops)
            if seen[0] != expected:
                raise RuntimeError(
                    f"layer {node.path!r} ran {seen[0]} time(s) but the recorded call ran it "
                    f"{expected} time(s); camlens cannot tell the call sites apart"
                )
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
        """Skip the final softmax/sigmoid of the explained output(s) while explaining, for a
        target that wants logits (:attr:`Target.wants_logits`); for any other, nothing."""
        ops = self._logit_ops(target)
        return without_final_activation(ops) if ops else contextlib.nullcontext()

    def _logit_ops(self, target: Target) -> list[Any]:
        """The layers giving the output(s) a logit target reads, whose final softmax/sigmoid it
        skips; none for a target that does not want logits."""
        if not target.wants_logits:
            return []
        graph = self.graph()
        ops = []
        for i in target.output_indices(graph.output_names):
            op = self._ops[graph.outputs[i]]
            if self.recorded and is_container(op):
                self._warn_once(
                    "logits",
                    f"output {graph.output_names[i]!r} of {type(self.model).__name__} is computed "
                    "after its last layer (keras.ops, x + y), so camlens cannot tell whether it "
                    "ends in a softmax or sigmoid to skip for logits: it is explained as the "
                    "model gives it; end the model with a layer (Dense(..., activation=...)) "
                    "to have the logits",
                )
            ops.append(op)
        return ops

    def layer_role(self, node: GraphNode) -> str | None:
        """What the CAM head search needs to know of a layer (``camlens.methods.cam.ROLES``)."""
        return _ROLES.get(node.kind)

    def dense_kernel(self, node: GraphNode) -> np.ndarray:
        """The ``(in, out)`` kernel of a Dense layer."""
        return keras_to_numpy(self._ops[node.id].kernel)

    def layer_bias(self, node: GraphNode) -> tuple[np.ndarray, str] | None:
        """The bias of a ``Conv2D``, ``DepthwiseConv2D`` or ``SeparableConv2D`` and its activation, or the effective
        bias of a ``BatchNormalization`` over the channels (see ``ModelAdapter.layer_bias``)."""
        import keras

        op = self._ops.get(node.id)
        if isinstance(op, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            if not op.use_bias:
                return None
            act = op.activation
            name = "linear" if act is None else getattr(act, "__name__", type(act).__name__)
            return keras_to_numpy(op.bias).astype(np.float64), name
        if not isinstance(op, keras.layers.BatchNormalization):
            return None
        rank = len(node.shape) + 1 if node.shape is not None else 4
        channels = 1 if node.id in self._channels_first else rank - 1
        if op.axis % rank != channels:
            raise ValueError(
                f"BatchNormalization {op.name!r} normalises over axis {op.axis}, not the "
                "channels; FullGrad reads a bias per channel"
            )
        mean = keras_to_numpy(op.moving_mean).astype(np.float64)
        scale = 1.0 / np.sqrt(keras_to_numpy(op.moving_variance).astype(np.float64) + op.epsilon)
        if op.scale:
            scale = scale * keras_to_numpy(op.gamma).astype(np.float64)
        bias = -mean * scale
        if op.center:
            bias = bias + keras_to_numpy(op.beta).astype(np.float64)
        return bias, "linear"


_ROLES = {"GlobalAveragePooling2D": "global_pool", "Dropout": "pass", "Dense": "dense",
          "Activation": "activation", "Softmax": "activation"}


def _input_names(n: int) -> list[str]:
    return ["input"] if n == 1 else [f"input_{i}" for i in range(n)]


def _pick(value: Any, k: int) -> Any:
    return value[k] if isinstance(value, list) else value


def _repeat(value: Any, n: int) -> Any:
    import keras

    if isinstance(value, list):
        return [_repeat(v, n) for v in value]
    return keras.ops.repeat(value, n, axis=0) if n != 1 else value


def keras_to_numpy(x: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def load_keras_file(path: Any) -> Any:
    """A model saved by Keras (``.keras``, ``.h5``), loaded without compiling it."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types here; say which file failed
        raise ValueError(f"{path}: could not load the Keras model: {exc}") from exc
