"""Adapters: the only code in camlens that imports a deep-learning framework.

:func:`adapt` is the one place that looks at what kind of model it was given; everything
above works through the :class:`~camlens.adapters.base.ModelAdapter` protocol.
"""

from __future__ import annotations

import sys
from typing import Any

from .base import ModelAdapter

__all__ = ["adapt", "ModelAdapter"]


def adapt(model: Any) -> ModelAdapter:
    """The adapter for ``model``: a Keras 3 model or a ``torch.nn.Module`` (an adapter is
    returned as it is)."""
    if all(hasattr(model, name) for name in ("capture", "graph", "prepare")):
        return model  # already an adapter
    if "keras" in sys.modules or type(model).__module__.startswith("keras"):
        from .keras import KerasAdapter, is_keras_model

        if is_keras_model(model):
            return KerasAdapter(model)
    from .torch import TorchAdapter, is_torch_module

    if is_torch_module(model):
        return TorchAdapter(model)
    raise TypeError(
        f"camlens explains Keras 3 models and torch.nn.Module; got "
        f"{type(model).__module__}.{type(model).__name__}"
    )
