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
import itertools
import operator
import weakref
from typing import Any, Callable, Sequence

import numpy as np

from ...graph import GraphNode
from ...rules import ReluRule
from ...targets import ClassScore, Logit, Target, scores_of
from ..arrays import NumpyOps
from ..base import is_plain_setting, read_each, values_getter
from .backends._types import Key, Parts, Program

__all__ = ["ProgramCache", "PROGRAMS", "clear_compiled_cache", "compiled_capture", "compiled_features",
           "compiled_score", "compiled_input_outputs", "compiled_probe_run", "traceable"]


class ProgramCache:
    """Compiled programs, per model and per key. An entry lives as long as its model (the
    model is held weakly, and so is it inside each program) or until :meth:`clear`.

    The key is what a program computes (capture at which call sites, score, input gradients),
    the target's kind and frozen fields and the number of inputs. Each entry also keeps the
    model's *behaviour fingerprint* (:func:`behaviour`) from when it was traced, checked on
    every lookup: an edit like ``model.layers[-1].activation = None``, a new ``negative_slope``
    or dtype policy, or a replaced variable traces anew (and the stale program is dropped).
    The weights' values are read at run time and need no check."""

    def __init__(self) -> None:
        self._per_model: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[Any, Any, Program]]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, model: Any, key: tuple[Any, ...], fingerprint: "Fingerprint", build: Callable[[], Program]) -> Program:
        per_model = self._per_model.setdefault(model, {})
        entry = per_model.get(key)
        if entry is None or not _same(entry[0], fingerprint.key):
            per_model[key] = entry = (fingerprint.key, fingerprint.keep, build())
        return entry[2]

    def forget(self, model: Any, key: tuple[Any, ...], program: Program) -> None:
        """Drop ``program`` (kept under ``key`` for ``model``), if it is still the one kept."""
        per_model = self._per_model.get(model, {})
        entry = per_model.get(key)
        if entry is not None and entry[2] is program:
            del per_model[key]

    def count(self, model: Any) -> int:
        """How many programs are kept for ``model``."""
        return len(self._per_model.get(model, {}))

    def __contains__(self, model: Any) -> bool:
        return model in self._per_model

    def clear(self) -> None:
        self._per_model.clear()


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a setting whose == is not a truth value: trace anew
        return False


#: the process's compiled programs: they live with their models
PROGRAMS = ProgramCache()


def clear_compiled_cache() -> None:
    """Forget every compiled program."""
    PROGRAMS.clear()


#: per layer: ``(number of attributes, getter of its plain settings, getter of its objects)``
_READERS: weakref.WeakKeyDictionary[Any, tuple[int, Callable[[Any], Any], Callable[[Any], Any]]] = (
    weakref.WeakKeyDictionary()
)


def _readers(d: dict[str, Any]) -> tuple[int, Callable[[Any], Any], Callable[[Any], Any]]:
    """Which attributes of a layer the fingerprint reads: public settings of plain types by
    value; public functions (``activation``) and every variable by identity. Chosen again
    when the layer gains or loses an attribute."""
    plain, objects = [], []
    for k, v in d.items():
        if is_plain_setting(v):
            if k[0] != "_":
                plain.append(k)
        elif (callable(v) and k[0] != "_") or type(v).__name__ == "Variable":
            objects.append(k)
    return len(d), values_getter(plain), values_getter(objects)


class Fingerprint:
    """:func:`behaviour` of a model: ``key``, compared on every lookup, holds identities of
    the layers' functions and variables; ``keep`` holds those objects, so that no identity is
    reused by a new object while the entry lives."""

    __slots__ = ("key", "keep")

    def __init__(self, key: tuple[Any, ...], keep: list[Any]) -> None:
        self.key, self.keep = key, keep


def behaviour(ops: Any) -> Fingerprint:
    """What a trace freezes of the layers besides the values of their weights, read on every
    call: each layer's public settings of plain types (``negative_slope``, ``max_value``,
    ``rate``, ``padding``, ...), the identity of its public functions (``activation``), of
    every variable it holds (a replaced weight) and of a ``call`` set on the instance, its
    dtype policy and ``trainable``. Private bookkeeping (``_called``, ``_lock``) changes with
    the first call and is left out, or the first program would never be reused; so is a
    setting a custom layer keeps in a private attribute of its own (``clear_compiled_cache()``
    forgets every program).

    Each item is read for every layer in one ``map`` (C), not a Python loop over the layers:
    0.47 ms on EfficientNet-Lite0's 144 layers after the model's run has emptied the
    processor's caches (0.62 ms layer by layer), about 3% of a forward pass at batch 1."""
    ops = list(ops)
    dicts = list(map(vars, ops))
    readers = list(map(_READERS.data.get, map(weakref.ref, ops)))
    sizes = list(map(len, dicts))
    for i, (found, size) in enumerate(zip(readers, sizes)):
        if found is None or found[0] != size:  # new, or it gained or lost an attribute
            readers[i] = _READERS[ops[i]] = _readers(dicts[i])
    try:
        plain = read_each([r[1] for r in readers], dicts)
        objects = read_each([r[2] for r in readers], dicts)
    except KeyError:  # an attribute gone and another come: choose the keys again
        readers = [_readers(d) for d in dicts]
        _READERS.update(zip(ops, readers))
        plain = read_each([r[1] for r in readers], dicts)
        objects = read_each([r[2] for r in readers], dicts)
    calls = tuple(map(_CALL_OF, dicts))
    if any(calls):  # a call set on the instance is held weakly: it may hold the model
        calls = tuple(None if c is None else weakref.ref(c) for c in calls)
    # variables and functions by identity (a Keras variable's == compares values); the dtype
    # policies themselves, which compare by kind and name
    key = (tuple(map(id, ops)), calls, tuple(plain), tuple(map(len, objects)),
           tuple(map(id, itertools.chain.from_iterable(objects))), tuple(map(_POLICY_OF, dicts)),
           tuple(map(_TRAINABLE_OF, dicts)))
    return Fingerprint(key, objects)


_CALL_OF = operator.methodcaller("get", "call")
_POLICY_OF = operator.methodcaller("get", "_dtype_policy")
_TRAINABLE_OF = operator.methodcaller("get", "_trainable")


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

    kind = type(target)
    if kind in _CLASS_KINDS:
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


_CLASS_KINDS = (ClassScore, Logit)


def _scores(target: Target, outs: list[Any], names: Sequence[str]) -> tuple[list[Any], Any]:
    """``(outputs, scores)``: the target's own score of a compiled run's outputs, with its
    checks (a class out of range, one score per sample). A class target's score only picks
    values, so it is read from the outputs as numpy (and the outputs are handed back as the
    numpy arrays, converted once): the same numbers, where the eager TensorFlow ops (argmax,
    take_along_axis) cost about 1.5 ms per call, 7% of EfficientNet-Lite0's compiled forward
    pass at batch 1. Other targets compute (sums, norms) and keep the framework's ops."""
    import keras

    if type(target) in _CLASS_KINDS:
        outs = [keras.ops.convert_to_numpy(y) for y in outs]
        return outs, scores_of(target, outs, names, NumpyOps)
    return outs, scores_of(target, outs, names, keras.ops)


def _program(
    adapter: Any,
    inputs: list[np.ndarray],
    target: Target,
    kind: tuple[Any, ...],
    node_ids: list[int],
    build: Callable[[Parts], Program],
    outputs_only: bool = False,
    top_as_index: bool = False,
) -> tuple[Program, np.ndarray] | None:
    """The compiled program of ``kind`` (what it computes) for ``target`` on ``adapter``'s
    model, built by ``build(parts)`` on first use and kept in :data:`PROGRAMS`, and the index
    argument to call it with; ``None`` where the target cannot be compiled.

    ``outputs_only``: the program hands back no score or gradient, so whether a class target
    names its class does not change it (a top-class target and the same class pinned share
    one program: one compilation fewer on the first call).

    ``top_as_index``: a class target's program takes the top class as one more value of its
    index argument (:data:`_TOP`), so that a top-class target and the same class pinned share
    one program (the pixel methods' first pass and then each image's gradient)."""
    traced = traceable(target, inputs[0].shape[0])
    if traced is None:
        return None
    target_key, make, idx = traced
    if outputs_only and target_key[0] in _CLASS_KINDS and target_key[2]:
        kind_, output = target_key[:2]
        target_key, make = (kind_, output, False), (lambda _idx: kind_(None, output))
    elif top_as_index and target_key[0] in _CLASS_KINDS:
        kind_, output, has_index = target_key
        if not has_index:
            idx = np.full_like(idx, _TOP)
        target_key, make = (kind_, output, "class or top"), _class_or_top(kind_, output)
    model = adapter.model
    key = (*kind, target_key, len(inputs))
    program = PROGRAMS.get(model, key, behaviour(adapter.graph_ops()),
                           lambda: build(_parts(type(adapter), weakref.ref(model), node_ids, make)))

    def run(*args: Any) -> Any:
        try:
            return program(*args)
        except BaseException:
            # a trace cut short (Ctrl-C, an error in the model) can leave tf.function's own
            # cache inconsistent (a KeyError on the next call): the next call builds anew
            PROGRAMS.forget(model, key, program)
            raise

    return run, idx


#: the index argument that stands for each sample's top class (``top_as_index``): no class
#: index in range is this low, and one out of range is refused by the target's own score after
#: the program has run
_TOP = int(np.iinfo(np.int32).min)


def _class_or_top(kind: type, output: Any) -> Callable[[Any], Target]:
    """``make(idx)`` of a class target whose index argument is a class, or :data:`_TOP` for
    the sample's top class."""
    import keras

    def make(idx: Any) -> Target:
        class Traced(kind):  # type: ignore[misc, valid-type]
            def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
                y = self.select(outputs, names)
                k = self._check(y)
                top = keras.ops.cast(keras.ops.argmax(y, axis=-1), "int32")
                pick = keras.ops.where(keras.ops.equal(idx, _TOP), top, idx % k)
                return keras.ops.take_along_axis(y, keras.ops.expand_dims(pick, -1), axis=-1)[:, 0]

        return Traced(None, output)

    return make


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
    ids = [nd.id for nd in nodes]
    found = _program(adapter, inputs, target, ("capture", tuple(ids)), ids,
                     lambda parts: adapter.backend_module.capture_program(parts))
    if found is None:
        return None
    fn, idx = found
    grads, outs, acts = fn(adapter.model, list(inputs), idx)
    # the target's own score of the outputs: its checks (a class out of range) and the scores
    outs, scores = _scores(target, outs, adapter.graph().output_names)
    return outs, scores, acts, grads


def compiled_features(
    adapter: Any, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target
) -> tuple[list[Any], Any, dict[Key, Any]] | None:
    """``(outputs, scores, activations)`` from one compiled forward pass with the call sites
    ``nodes`` recorded, no gradient (CAM, Score-CAM's activations, the pixel methods' first
    pass), or ``None`` (the eager path runs instead). On JAX an eager pass compiles every
    operation on its own at each new shape: DenseNet121's first eager pass took about 4x the
    compiled one."""
    ids = [nd.id for nd in nodes]
    found = _program(adapter, inputs, target, ("features", tuple(ids)), ids,
                     lambda parts: adapter.backend_module.features_program(parts), outputs_only=True)
    if found is None:
        return None
    fn, idx = found
    outs, acts = fn(adapter.model, list(inputs), idx)
    outs, scores = _scores(target, outs, adapter.graph().output_names)
    return outs, scores, acts


def compiled_score(adapter: Any, inputs: list[np.ndarray], target: Target) -> np.ndarray | None:
    """``(N,)`` scores from the compiled forward pass, or ``None`` (the eager path runs
    instead). The methods that rerun the model call it once per batch of masked or perturbed
    copies: Score-CAM's 1280 channels of EfficientNet-Lite0 are 160 calls."""
    import keras

    found = _program(adapter, inputs, target, ("score",), [], adapter.backend_module.score_program,
                     outputs_only=True)
    if found is None:
        return None
    fn, idx = found
    outs = fn(adapter.model, list(inputs), idx)
    _, scores = _scores(target, outs, adapter.graph().output_names)
    return np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float32).reshape(-1)


def compiled_input_outputs(
    adapter: Any, inputs: list[np.ndarray], which: int, target: Target, rule: ReluRule | None
) -> tuple[list[Any], Any, np.ndarray] | None:
    """``(outputs, scores, d score / d inputs[which])`` from a compiled run, or ``None`` (the
    eager path runs instead). A class target's top class and the same class pinned share one
    program: the pixel methods' first pass (outputs, the class to explain) takes the image's
    gradient at the same time, and compiles no forward program of its own. On JAX the
    gradient program's compilation costs about 3x the forward one's (DenseNet121). Pixel
    attributions call it once per batch of noisy copies (SmoothGrad) or path points
    (Integrated Gradients)."""
    found = _program(
        adapter, inputs, target, ("input", which, rule), [],  # a rule by identity
        lambda parts: adapter.backend_module.input_gradient_program(parts, which, rule),
        top_as_index=True,
    )
    if found is None:
        return None
    fn, idx = found
    outs, grads = fn(adapter.model, list(inputs), idx)
    outs, scores = _scores(target, outs, adapter.graph().output_names)
    return outs, scores, np.asarray(grads, dtype=np.float32)


def compiled_probe_run(
    adapter: Any, inputs: list[np.ndarray], target: Target, kind: tuple[Any, ...],
    runner: Callable[..., tuple[list[Any], Any, dict[Key, Any]]],
) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]] | None:
    """``(outputs, scores, probed values, their gradients)`` of ``runner(adapter, xs, target,
    make_probe, nodes)`` compiled (LRP's and DeepLIFT's runs, their rules set inside the trace), or
    ``None`` where the target cannot be compiled. ``kind`` keys the program: everything the run
    depends on besides the layers (the fingerprint), the target and the input shapes; ``runner``
    is kept with the program, so it must not hold the model."""
    found = _program(adapter, inputs, target, kind, [],
                     lambda parts: adapter.backend_module.probe_program(parts, runner))
    if found is None:
        return None
    fn, idx = found
    grads, outs, acts = fn(adapter.model, list(inputs), idx)
    outs, scores = _scores(target, outs, adapter.graph().output_names)
    return outs, scores, acts, grads
