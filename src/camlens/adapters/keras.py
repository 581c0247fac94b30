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
from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..layers import GraphNode, LayerGraph, linear_head_after
from ..targets import Target
from .base import Capture, InputSpec, SiteCapture, check_inputs

__all__ = ["KerasAdapter", "is_keras_model"]

_MISSING = object()


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

    def __init__(self, model: Any) -> None:
        import keras

        if not isinstance(model, keras.Model):
            raise TypeError(f"expected a keras.Model; got {type(model).__name__}")
        self.model = model
        self.backend = keras.backend.backend()
        self._graph: LayerGraph | None = None
        self._ops: dict[int, Any] = {}
        self._channels_first: set[int] = set()

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

        def walk(fmodel: Any, prefix: str, input_ids: list[int]) -> list[int]:
            tensor_node: dict[int, int] = {id(x): n for x, n in zip(fmodel.inputs, input_ids)}
            for depth in sorted(fmodel._nodes_by_depth, reverse=True):
                for node in fmodel._nodes_by_depth[depth]:
                    if not node.operation or node.is_input:
                        continue
                    if any(id(x) not in tensor_node for x in node.input_tensors):
                        continue
                    op = fmodel._get_operation_for_node(node)
                    preds = [tensor_node[id(x)] for x in node.input_tensors]
                    inner = _inner_graph(op)
                    if inner is not None:
                        outs = walk(inner, f"{prefix}{op.name}/", preds)
                        aliases[prefix + op.name].append(outs[0])
                    else:
                        shape = node.outputs[0].shape if node.outputs else None
                        nid = add(prefix + op.name, op, shape, preds)
                        outs = [nid] * len(node.outputs)
                    for x, o in zip(node.outputs, outs):
                        tensor_node[id(x)] = o
            return [tensor_node[id(x)] for x in fmodel.outputs]

        input_ids = []
        input_names = []
        for i, x in enumerate(top.inputs):
            op = x._keras_history.operation
            input_names.append(op.name)
            input_ids.append(add(op.name, op, x.shape, [], is_input=True, input_index=i))
        outputs = walk(top, "", input_ids)
        return LayerGraph(
            nodes, input_ids, outputs, self.output_names(), input_names, aliases=dict(aliases)
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

        with self._logit_patch(target) if target.wants_logits else contextlib.nullcontext():
            outs = self._call(inputs)
            scores = target.score(outs, self.graph().output_names, keras.ops)
        return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)

    def capture(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        need_gradients: bool = True,
    ) -> Capture:
        import keras

        graph = self.graph()
        names = graph.output_names
        wanted: dict[int, Any] = {}
        for n in nodes:
            wanted.setdefault(id(self._ops[n.id]), self._ops[n.id])
        expected = {
            key: sum(1 for m in graph.nodes if id(self._ops[m.id]) == key) for key in wanted
        }
        grad_fn = _GRADIENT_FUNCTIONS.get(self.backend)
        if grad_fn is None:
            raise NotImplementedError(
                f"the Keras {self.backend!r} backend is not supported; use tensorflow, jax or torch"
            )
        def logit_patch() -> contextlib.AbstractContextManager[Any]:
            # a fresh context each run: jax runs the model twice
            return self._logit_patch(target) if target.wants_logits else contextlib.nullcontext()

        def run(make_probe: MakeProbe) -> tuple[list[Any], Any, dict[Key, Any]]:
            records: dict[int, list[Any]] = defaultdict(list)

            def on_call(op: Any, y: Any) -> Any:
                if not keras.ops.is_tensor(y):
                    raise TypeError(
                        f"layer {op.name!r} returns {type(y).__name__}, not one tensor; choose "
                        "another layer"
                    )
                key = (id(op), len(records[id(op)]))
                records[id(op)].append(y)
                return make_probe(key, y)

            with _probes(list(wanted.values()), on_call), logit_patch():
                outs = self._call(inputs)
                scores = target.score(outs, names, keras.ops)
            for key, op in wanted.items():
                if len(records[key]) != expected[key]:
                    raise RuntimeError(
                        f"layer {op.name!r} ran {len(records[key])} time(s) but the model's graph "
                        f"calls it {expected[key]} time(s); camlens cannot tell the call sites apart"
                    )
            acts = {(k, i): y for k, ys in records.items() for i, y in enumerate(ys)}
            return outs, scores, acts

        outs, scores, acts, grads = grad_fn(run, need_gradients)
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
            if old is _MISSING:
                object.__delattr__(obj, attr)
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
        z = probes[key] = torch.zeros_like(y, requires_grad=True)
        return y + z

    with torch.enable_grad():
        outs, scores, acts = run(make_probe)
        grads: dict[Key, Any] = {}
        if need_gradients:
            keys = list(probes)
            values = torch.autograd.grad(
                scores.sum(), [probes[k] for k in keys], allow_unused=True
            )
            grads = {
                k: (np.zeros(tuple(probes[k].shape), np.float32) if v is None
                    else v.detach().cpu().numpy())
                for k, v in zip(keys, values)
            }
    acts = {k: v.detach() for k, v in acts.items()}
    outs = [o.detach() for o in outs]
    return outs, scores.detach(), acts, grads


_GRADIENT_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "tensorflow": _tf_gradients,
    "jax": _jax_gradients,
    "torch": _torch_gradients,
}
