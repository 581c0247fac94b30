"""One module per Keras backend, with the same names; :func:`load` picks the one of the running
backend, once per adapter.

Every backend module has the same names: ``COMPILES`` (whether the programs below exist),
``no_grad()``, ``gradients(run, need_gradients)``, ``rule_relu(rule, max_value)``, and the
compiled programs ``capture_program(parts)``, ``features_program(parts)`` (activations at the
call sites, no gradient), ``score_program(parts)`` and
``input_gradient_program(parts, which, rule)``, and ``probe_program(parts, runner)``, the
general one (``capture_program`` is one of it): ``runner(adapter, xs, target, make_probe,
nodes) -> (outputs, scores, probed values)`` traced with gradients at the probes (LRP's and
DeepLIFT's runs, their rules set inside the trace); ``parts(idx)`` gives the model, a fresh
adapter, the probed nodes and the target of one trace.

``gradients`` runs the model through ``run`` once with probes that add a zero tensor at every
call site, and returns (outputs, scores, activations, gradients) with activations and
gradients keyed by call site. Only the probes are differentiated: no gradient with respect to
the weights is computed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["load", "SUPPORTED"]

SUPPORTED = ("tensorflow", "jax", "torch")


def load(backend: str) -> ModuleType:
    if backend not in SUPPORTED:
        raise NotImplementedError(
            f"the Keras {backend!r} backend is not supported; use tensorflow, jax or torch"
        )
    return importlib.import_module(f"{__name__}.{backend}")
