"""The Keras JAX backend: gradients by jax.grad, programs by jax.jit.

The names every backend module has are described in ``backends/__init__.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from ....rules import ReluRule
from ...compile_cache import apply_jax_cache
from ._types import Key, Parts, Program, Runner

COMPILES = True

apply_jax_cache()  # CAMLENS_JAX_CACHE, or enable_compile_cache() called before jax was loaded


def no_grad() -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext()  # jax differentiates only inside gradients()


def gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
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


def rule_relu(rule: ReluRule, max_value: float | None = None) -> Callable[[Any], Any]:
    """``min(max(x, 0), max_value)`` whose gradient follows ``rule`` (and passes nothing back
    at or above ``max_value``)."""
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def jax_rule_relu(x: Any) -> Any:
        return jnp.maximum(x, 0) if max_value is None else jnp.clip(x, 0, max_value)

    def fwd(x: Any) -> tuple[Any, Any]:
        return jax_rule_relu(x), x

    def bwd(x: Any, dy: Any) -> tuple[Any]:
        gate = rule.passes(x, dy)
        if max_value is not None:
            gate = gate & (x < max_value)
        return (dy * gate.astype(dy.dtype),)

    jax_rule_relu.defvjp(fwd, bwd)
    return jax_rule_relu


# The programs return the call sites' tensors as lists, not dicts keyed by call site: a key
# holds ``id(layer)``, which differs in every process and, as a name in the lowered program,
# would change JAX's persistent-cache key, so no second process could reuse the program.


def capture_program(parts: Parts) -> Program:
    return probe_program(parts, lambda adapter, xs, target, make_probe, nodes: adapter._probed_run(
        xs, nodes, target, make_probe))


def probe_program(parts: Parts, runner: Callable[..., Any]) -> Program:
    import jax
    import jax.numpy as jnp
    import keras

    @jax.jit
    def program(variables: list[Any], xs: list[Any], idx: Any) -> tuple[Any, ...]:
        model, adapter, nodes, target = parts(idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):
            # jax differentiates functions of their arguments: the probes' shapes first (the
            # values of this run are unused, and compiled away)
            acts = runner(adapter, xs, target, lambda k, y: y, nodes)[2]
            zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in acts.items()}

            def total(zs: dict[Key, Any]) -> tuple[Any, tuple[list[Any], dict[Key, Any]]]:
                outs, scores, acts = runner(adapter, xs, target, lambda k, y: y + zs[k], nodes)
                return jnp.sum(scores), (outs, acts)

            grads, (outs, acts) = jax.grad(total, has_aux=True)(zeros)
        keys[:] = list(acts)
        return [grads[k] for k in keys], outs, [acts[k] for k in keys]

    keys: list[Key] = []  # the call sites, in the order the program returns them

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        grads, outs, acts = program([v.value for v in model.variables], xs, idx)
        return dict(zip(keys, grads)), outs, dict(zip(keys, acts))

    return run


def features_program(parts: Parts) -> Program:
    import jax
    import keras

    @jax.jit
    def features(variables: list[Any], xs: list[Any], idx: Any) -> tuple[Any, ...]:
        model, adapter, nodes, target = parts(idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):
            outs, _, acts = adapter._probed_run(xs, nodes, target, lambda k, y: y)
        keys[:] = list(acts)
        return outs, [acts[k] for k in keys]

    keys: list[Key] = []  # the call sites, in the order the program returns them

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[Any, ...]:
        outs, acts = features([v.value for v in model.variables], xs, idx)
        return outs, dict(zip(keys, acts))

    return run


def score_program(parts: Parts) -> Program:
    import jax
    import keras

    @jax.jit
    def outputs(variables: list[Any], xs: list[Any], idx: Any) -> list[Any]:
        model, adapter, _, target = parts(idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):
            return adapter._probed_run(xs, [], target, lambda k, y: y)[0]

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in outputs([v.value for v in model.variables], xs, idx)]

    return run


def input_gradient_program(parts: Parts, which: int, rule: ReluRule | None) -> Program:
    import jax
    import jax.numpy as jnp
    import keras

    @jax.jit
    def gradients(variables: list[Any], xs: list[Any], idx: Any) -> tuple[list[Any], Any]:
        model, adapter, _, target = parts(idx)
        with keras.StatelessScope(state_mapping=list(zip(model.variables, variables))):

            def total(z: Any) -> tuple[Any, list[Any]]:
                outs, scores, _ = adapter._input_run(xs, which, target, rule, lambda k, y: y + z)
                return jnp.sum(scores), outs

            g, outs = jax.grad(total, has_aux=True)(jnp.zeros_like(xs[which]))
        return outs, g

    def run(model: Any, xs: list[np.ndarray], idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        outs, g = gradients([v.value for v in model.variables], xs, idx)
        return [np.asarray(o) for o in outs], np.asarray(g)

    return run
