"""Tensor helpers of the torch adapter: the array functions targets use (``xp``), probes, and
the captures handed back as numpy."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...graph import GraphNode
from ..base import Capture, SiteCapture

__all__ = ["TorchOps", "probe", "site_capture", "capture_result"]


class TorchOps:
    """The few array functions targets use, on torch tensors (names as in keras.ops)."""

    #: torch images are (N, C, H, W): a segmentation output's classes are on axis 1
    images_channels_first = True

    @staticmethod
    def argmax(x: Any, axis: int = -1) -> Any:
        return x.argmax(dim=axis)

    @staticmethod
    def take_along_axis(x: Any, idx: Any, axis: int) -> Any:
        import torch

        return torch.take_along_dim(x, idx.long(), dim=axis)

    @staticmethod
    def expand_dims(x: Any, axis: int) -> Any:
        return x.unsqueeze(axis)

    @staticmethod
    def cast(x: Any, dtype: str) -> Any:
        import torch

        return x.to(getattr(torch, dtype))

    @staticmethod
    def convert_to_tensor(x: Any, dtype: str | None = None) -> Any:
        import torch

        t = torch.as_tensor(np.asarray(x))
        return t if dtype is None else t.to(getattr(torch, dtype))

    @staticmethod
    def reshape(x: Any, shape: Sequence[int]) -> Any:
        return x.reshape(tuple(shape))

    @staticmethod
    def sum(x: Any, axis: Any = None) -> Any:
        return x.sum() if axis is None else x.sum(dim=axis)

    @staticmethod
    def sqrt(x: Any) -> Any:
        return x.sqrt()

    @staticmethod
    def stack(xs: Sequence[Any], axis: int = 0) -> Any:
        import torch

        return torch.stack(list(xs), dim=axis)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        import torch

        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b, dtype=torch.as_tensor(a).dtype))

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        import torch

        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b, dtype=torch.as_tensor(a).dtype))


def probe(out: Any, key: Any, probes: dict[Any, Any]) -> Any:
    """``out + z`` with ``z = 0`` recorded in ``probes[key]``: the gradient at ``out``."""
    import torch

    # Autograd records from here on: nothing before the first probe can carry a gradient to
    # it, so the layers before it run as under no_grad (the mode set here is undone when the
    # caller's no_grad block exits).
    torch.set_grad_enabled(True)
    z = probes[key] = torch.zeros_like(out, requires_grad=True)
    return out + z


def site_capture(node: GraphNode, act: Any, grad: np.ndarray | None, channels_first: bool) -> SiteCapture:
    """One call site's activations and gradients as arrays, spatial ones channels-last
    (``channels_first``: the module gives them ``(N, C, H, W)``)."""
    a = act.cpu().float().numpy()
    if a.ndim == 4 and channels_first:
        a = np.moveaxis(a, 1, -1)
        grad = None if grad is None else np.moveaxis(grad, 1, -1)
    return SiteCapture(node, a, grad)


def capture_result(outs: list[Any], scores: Any, sites: list[SiteCapture], names: list[str]) -> Capture:
    return Capture([o.detach().cpu().float().numpy() for o in outs],
                   scores.detach().cpu().float().numpy().reshape(-1), sites, names)
