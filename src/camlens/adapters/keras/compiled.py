"""Compiled Keras runs on TensorFlow and JAX, and the cache that owns them.

Keras runs eagerly on TensorFlow and JAX, one operation at a time, with Python and dispatch
costs for every operation (and jax.grad over that pays them again). For class targets,
``capture`` instead compiles the whole probed run (model, score, gradient at the probes) once
per model, set of call sites and kind of target, with tf.function or jax.jit; they keep one
compiled program per input shape. Weights are read at run time, not baked in: tf.function
captures the variables themselves, and the jax function takes their values as arguments
(mapped in a StatelessScope). The class indices are arguments too, so a new class does not
compile again. A compiled function holds its model only weakly; its cache entry goes with
the model.
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from ...graph import GraphNode
from ...rules import ReluRule
from ...targets import Target, scores_of
from .backends._types import Key, Parts, Program

__all__ = ["ProgramCache", "PROGRAMS", "clear_compiled_cache", "compiled_capture", "compiled_score",
           "compiled_input_gradients", "traceable"]


class ProgramCache:
    """Compiled programs, per model and per key. An entry lives as long as its model (the
    model is held weakly, and so is it inside each program) or until :meth:`clear`.

    The key is everything a program's result depends on besides the weights, which are read at
    run time: what it computes (capture at which call sites, score, input gradients), the
    target's kind and frozen fields, the number of inputs, and the model's *behaviour
    fingerprint* (:func:`behaviour`): each layer's activation function and instance-level
    ``call``, so that an edit like ``model.layers[-1].activation = None`` compiles anew."""

    def __init__(self) -> None:
        self._per_model: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Program]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, model: Any, key: tuple[Any, ...], build: Callable[[], Program]) -> Program:
        per_model = self._per_model.setdefault(model, {})
        program = per_model.get(key)
        if program is None:
            program = per_model[key] = build()
        return program

    def count(self, model: Any) -> int:
        """How many programs are kept for ``model``."""
        return len(self._per_model.get(model, {}))

    def __contains__(self, model: Any) -> bool:
        return model in self._per_model

    def clear(self) -> None:
        self._per_model.clear()


#: the process's compiled programs: they live with their models
PROGRAMS = ProgramCache()


def clear_compiled_cache() -> None:
    """Forget every compiled program."""
    PROGRAMS.clear()


def behaviour(ops: Any) -> tuple[Any, ...]:
    """What a trace freezes of the layers besides their weights: each layer's activation
    function and any ``call`` set on the instance (attribute reads only: cheap per call)."""
    return tuple(
        (id(op), id(op.__dict__.get("activation")), id(op.__dict__.get("call"))) for op in ops
    )


def traceable(target: Target, n: int) -> tuple[tuple[Any, ...], Callable[[Any], Target], np.ndarray] | None:
    """How ``target`` enters a compiled run: ``(key, make, idx)``, where ``make(idx)`` gives the
    target to use inside the trace and ``idx`` is the ``(n,)`` int32 argument passed with the
    inputs; ``None`` where the target cannot be compiled (the eager path runs instead).

    Class targets take their class indices as the argument, so that a new class does not
    compile again. Regression, similarity and segmentation targets are frozen into the trace:
    the key holds their fields (arrays by content), so an equal target reuses the program. A
    callable target, or any subclass, may hold Python that a trace would freeze: never compiled.
    """
    import keras

    from ...targets import ClassScore, Logit

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


def _program(
    adapter: Any,
    inputs: list[np.ndarray],
    target: Target,
    kind: tuple[Any, ...],
    node_ids: list[int],
    build: Callable[[Parts], Program],
) -> tuple[Program, np.ndarray] | None:
    """The compiled program of ``kind`` (what it computes) for ``target`` on ``adapter``'s
    model, built by ``build(parts)`` on first use and kept in :data:`PROGRAMS`, and the index
    argument to call it with; ``None`` where the target cannot be compiled."""
    traced = traceable(target, inputs[0].shape[0])
    if traced is None:
        return None
    target_key, make, idx = traced
    model = adapter.model
    key = (*kind, target_key, len(inputs), behaviour(adapter.graph_ops()))
    return PROGRAMS.get(model, key, lambda: build(_parts(type(adapter), weakref.ref(model), node_ids, make))), idx


def _parts(cls: type, model_ref: Callable[[], Any], node_ids: list[int], make: Callable[[Any], Target]) -> Parts:
    """``parts(idx)``: inside a trace, the model, a fresh adapter of it, the probed nodes, and
    the target of the trace (its class indices, if any, the traced tensor ``idx``)."""

    def parts(idx: Any) -> tuple[Any, Any, list[GraphNode], Target]:
        model = model_ref()
        adapter = cls(model)
        graph = adapter.graph()
        return model, adapter, [graph.nodes[i] for i in node_ids], make(idx)

    return parts


def compiled_capture(
    adapter: Any, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target
) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]] | None:
    """``(outputs, scores, activations, gradients)`` from the compiled capture, or ``None``
    where the target cannot be compiled (the eager path runs instead)."""
    import keras

    ids = [nd.id for nd in nodes]
    found = _program(adapter, inputs, target, ("capture", tuple(ids)), ids,
                     lambda parts: adapter.backend_module.capture_program(parts))
    if found is None:
        return None
    fn, idx = found
    grads, outs, acts = fn(adapter.model, list(inputs), idx)
    # the target's own score of the outputs: its checks (a class out of range) and the scores
    scores = scores_of(target, outs, adapter.graph().output_names, keras.ops)
    return outs, scores, acts, grads


def compiled_score(adapter: Any, inputs: list[np.ndarray], target: Target) -> np.ndarray | None:
    """``(N,)`` scores from the compiled forward pass, or ``None`` (the eager path runs
    instead). The methods that rerun the model call it once per batch of masked or perturbed
    copies: Score-CAM's 1280 channels of EfficientNet-Lite0 are 160 calls."""
    import keras

    found = _program(adapter, inputs, target, ("score",), [], adapter.backend_module.score_program)
    if found is None:
        return None
    fn, idx = found
    outs = fn(adapter.model, list(inputs), idx)
    scores = scores_of(target, outs, adapter.graph().output_names, keras.ops)
    return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)


def compiled_input_gradients(
    adapter: Any, inputs: list[np.ndarray], which: int, target: Target, rule: ReluRule | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(scores, d score / d inputs[which])`` from a compiled run, or ``None`` (the eager path
    runs instead). Pixel attributions call it once per batch of noisy copies (SmoothGrad) or
    path points (Integrated Gradients)."""
    import keras

    found = _program(
        adapter, inputs, target, ("input", which, rule), [],  # a rule by identity
        lambda parts: adapter.backend_module.input_gradient_program(parts, which, rule),
    )
    if found is None:
        return None
    fn, idx = found
    outs, grads = fn(adapter.model, list(inputs), idx)
    scores = scores_of(target, outs, adapter.graph().output_names, keras.ops)
    return (np.asarray(keras.ops.convert_to_numpy(scores), np.float32).reshape(-1),
            np.asarray(grads, dtype=np.float32))
