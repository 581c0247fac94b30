"""The Keras PyTorch backend: gradients by torch.autograd; runs eagerly (no programs).

The names every backend module has are described in ``backends/__init__.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np

from ....rules import ReluRule
from ._types import Key, Parts, Program, Runner

from ..._torch_autograd import grad_mode, rule_relu_torch

COMPILES = False


def no_grad() -> contextlib.AbstractContextManager[Any]:
    """No autograd graph for runs that need no gradient."""
    return grad_mode(False)


def gradients(run: Runner, need_gradients: bool) -> tuple[list[Any], Any, dict[Key, Any], dict[Key, Any]]:
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

    with grad_mode(False):
        outs, scores, acts = run(make_probe)
    grads: dict[Key, Any] = {}
    if need_gradients:
        keys = list(probes)
        values: Sequence[Any] = [None] * len(keys)
        if scores.requires_grad:  # else no probe is upstream of the score
            values = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
        grads = {
            k: (np.zeros(tuple(probes[k].shape), np.float32) if v is None
                else v.detach().to(torch.float32).cpu().numpy())  # numpy has no bfloat16
            for k, v in zip(keys, values)
        }
    acts = {k: v.detach() for k, v in acts.items()}
    outs = [o.detach() for o in outs]
    return outs, scores.detach(), acts, grads


def rule_relu(rule: ReluRule, max_value: float | None = None) -> Callable[[Any], Any]:
    """``min(max(x, 0), max_value)`` whose gradient follows ``rule``."""
    return lambda x: rule_relu_torch(x, rule, max_value)


def capture_program(parts: Parts) -> Program:
    raise NotImplementedError("the Keras torch backend runs eagerly (COMPILES is False)")


def features_program(parts: Parts) -> Program:
    raise NotImplementedError("the Keras torch backend runs eagerly (COMPILES is False)")


def probe_program(parts: Parts, runner: Callable[..., Any]) -> Program:
    raise NotImplementedError("the Keras torch backend runs eagerly (COMPILES is False)")


def score_program(parts: Parts) -> Program:
    raise NotImplementedError("the Keras torch backend runs eagerly (COMPILES is False)")


def input_gradient_program(parts: Parts, which: int, rule: ReluRule | None) -> Program:
    raise NotImplementedError("the Keras torch backend runs eagerly (COMPILES is False)")
