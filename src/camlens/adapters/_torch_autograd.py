"""What native torch modules and Keras models on the torch backend share: a ReLU with a
gradient rule (:mod:`camlens.rules`) as a torch autograd function, and the autograd mode set
as a :class:`camlens._restore.Patch` (``torch.no_grad()`` is undone by Python code a Ctrl-C
can cut short, which left autograd off for the rest of the session)."""

from __future__ import annotations

from typing import Any

from .._restore import Patch
from ..rules import ReluRule

__all__ = ["rule_relu_torch", "grad_mode"]


class grad_mode(Patch):
    """Autograd on (``True``) or off while the block runs; the mode before comes back."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled

    def apply(self) -> None:
        import torch

        prev = torch.is_grad_enabled()
        self.undo_with(lambda: torch.set_grad_enabled(prev))
        torch.set_grad_enabled(self.enabled)


def rule_relu_torch(x: Any, rule: ReluRule, max_value: float | None = None) -> Any:
    """ReLU (or ReLU clipped at ``max_value``) whose gradient follows ``rule``."""
    return _rule_relu_function().apply(x, max_value, rule)


_FUNCTION: list[Any] = []


def _rule_relu_function() -> Any:
    if not _FUNCTION:
        import torch

        class RuleReLU(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, x: Any, max_value: float | None, rule: ReluRule) -> Any:
                ctx.save_for_backward(x)
                ctx.max_value = max_value
                ctx.rule = rule
                return x.clamp(min=0) if max_value is None else x.clamp(0, max_value)

            @staticmethod
            def backward(ctx: Any, dy: Any) -> Any:
                (x,) = ctx.saved_tensors
                gate = ctx.rule.passes(x, dy)
                if ctx.max_value is not None:
                    gate = gate & (x < ctx.max_value)
                return dy * gate.to(dy.dtype), None, None

        _FUNCTION.append(RuleReLU)
    return _FUNCTION[0]
