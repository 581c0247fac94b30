"""Gradient rules for ReLUs: what a pixel method asks the adapters to apply while they take
input gradients (Guided Backpropagation's rule is one; a new rule is a new object here or in a
method's own file, not adapter code).

A rule says which positions of the incoming gradient ``dy`` a ReLU passes back, from its
input ``x`` and ``dy``, with elementwise comparisons and ``&`` / ``|`` only, so that the same
function runs on TensorFlow, JAX and torch tensors. The adapters keep the ReLU's forward value
and its clip (ReLU6 passes nothing back above 6) and multiply ``dy`` by the rule's gate.
Rules compare by identity: a compiled program is kept per rule object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence
from ._args import warn

__all__ = ["ReluRule", "GUIDED", "no_relu_warning"]


@dataclass(frozen=True, eq=False)
class ReluRule:
    name: str
    #: ``passes(x, dy) -> bool tensor``: where the ReLU passes ``dy`` back
    passes: Callable[[Any, Any], Any]

    def __repr__(self) -> str:
        return f"ReluRule({self.name!r})"


#: Guided Backpropagation (Springenberg et al., "Striving for Simplicity", 2015): only positive
#: gradients, at positive inputs
GUIDED = ReluRule("guided", lambda x, dy: (x > 0) & (dy > 0))


def no_relu_warning(rule: ReluRule, others: Sequence[str] = ()) -> None:
    """Warn that ``rule`` has no ReLU to act on: the gradient it gives is the plain one."""
    seen = f" (its activations: {', '.join(others)})" if others else ""
    warn(
        f"the model has no ReLU or ReLU6{seen}: the {rule.name} rule changes nothing, so this "
        "map is the plain input gradient (saliency), not a guided one",
        RuntimeWarning
    )
