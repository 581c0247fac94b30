"""The Keras TensorFlow backend: gradients by GradientTape, programs by tf.function.

The names every backend module has are described in ``backends/__init__.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from ....rules import ReluRule
from ._types import Key, Parts, Program, Runner

COMPILES = True


def no_grad() -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()  # a tape records only inside gradients()


def gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
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


def rule_relu(rule: ReluRule, max_value: float | None = None) -> Callable[[Any], Any]:
    """``min(max(x, 0), max_value)`` whose gradient follows ``rule`` (and passes nothing back
    at or above ``max_value``)."""
    import tensorflow as tf

    @tf.custom_gradient
    def tf_rule_relu(x: Any) -> Any:
        y = tf.nn.relu(x) if max_value is None else tf.clip_by_value(x, 0.0, max_value)

        def grad(dy: Any) -> Any:
            gate = rule.passes(x, dy)
            if max_value is not None:
                gate = tf.logical_and(gate, x < max_value)
            return dy * tf.cast(gate, dy.dtype)

        return y, grad

    return tf_rule_relu


def capture_program(parts: Parts) -> Program:
    return probe_program(parts, lambda adapter, xs, target, make_probe, nodes: adapter._probed_run(
        xs, nodes, target, make_probe))


def probe_program(parts: Parts, runner: Callable[..., Any]) -> Program:
    import tensorflow as tf

    @tf.function(autograph=False)
    def program(xs: list[Any], idx: Any) -> tuple[Any, ...]:
        _, adapter, nodes, target = parts(idx)
        probes: dict[Key, Any] = {}
        with tf.GradientTape(watch_accessed_variables=False) as tape:

            def make_probe(key: Key, y: Any) -> Any:
                z = probes[key] = tf.zeros_like(y)
                tape.watch(z)
                return y + z

            outs, scores, acts = runner(adapter, xs, target, make_probe, nodes)
            total = tf.reduce_sum(scores)
        keys = list(probes)
        values = tape.gradient(
            total, [probes[k] for k in keys], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return dict(zip(keys, values)), outs, acts

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        # tensors, not arrays: a trace per shape and dtype, never per value
        grads, outs, acts = program([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return {k: v.numpy() for k, v in grads.items()}, outs, acts

    return run


def features_program(parts: Parts) -> Program:
    import tensorflow as tf

    @tf.function(autograph=False)
    def features(xs: list[Any], idx: Any) -> tuple[Any, ...]:
        _, adapter, nodes, target = parts(idx)
        outs, _, acts = adapter._probed_run(xs, nodes, target, lambda k, y: y)
        return outs, acts

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        return features([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))

    return run


def score_program(parts: Parts) -> Program:
    import tensorflow as tf

    @tf.function(autograph=False)
    def outputs(xs: list[Any], idx: Any) -> list[Any]:
        _, adapter, _, target = parts(idx)
        return adapter._probed_run(xs, [], target, lambda k, y: y)[0]

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
        outs = outputs([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return [o.numpy() for o in outs]

    return run


def input_gradient_program(parts: Parts, which: int, rule: ReluRule | None) -> Program:
    import tensorflow as tf

    @tf.function(autograph=False)
    def gradients(xs: list[Any], idx: Any) -> tuple[list[Any], Any]:
        _, adapter, _, target = parts(idx)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            z = tf.zeros_like(xs[which])
            tape.watch(z)
            outs, scores, _ = adapter._input_run(xs, which, target, rule, lambda k, y: y + z)
            total = tf.reduce_sum(scores)
        return outs, tape.gradient(total, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        outs, g = gradients([tf.convert_to_tensor(x) for x in xs], tf.convert_to_tensor(idx))
        return [o.numpy() for o in outs], g.numpy()

    return run
