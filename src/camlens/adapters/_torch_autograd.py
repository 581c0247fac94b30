"""The Guided Backpropagation ReLU as a torch autograd function, for native torch modules and
for Keras models on the torch backend alike."""

from __future__ import annotations

from typing import Any

__all__ = ["guided_relu_torch"]


def guided_relu_torch(x: Any, max_value: float | None = None) -> Any:
    """ReLU (or ReLU clipped at ``max_value``) with the Guided Backpropagation gradient."""
    return _guided_relu_function().apply(x, max_value)


_GUIDED: list[Any] = []


def _guided_relu_function() -> Any:
    if not _GUIDED:
        import torch

        class GuidedReLU(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, x: Any, max_value: float | None) -> Any:
                ctx.save_for_backward(x)
                ctx.max_value = max_value
                return x.clamp(min=0) if max_value is None else x.clamp(0, max_value)

            @staticmethod
            def backward(ctx: Any, dy: Any) -> Any:
                (x,) = ctx.saved_tensors
                gate = (x > 0) & (dy > 0)
                if ctx.max_value is not None:
                    gate = gate & (x < ctx.max_value)
                return dy * gate.to(dy.dtype), None

        _GUIDED.append(GuidedReLU)
    return _GUIDED[0]
