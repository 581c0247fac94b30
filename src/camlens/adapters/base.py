"""What every adapter provides: the only layer of camlens that imports a deep-learning framework.

An adapter wraps one model. It reads the model's layer graph, checks and prepares inputs, and
runs the model with probes on chosen layers (see ``ARCHITECTURE.md``: a zero tensor added to the
layer's output at each call site, whose gradient is the gradient at that output). Everything it
returns is numpy, channels-last.
"""

from __future__ import annotations

import copy
import operator

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..graph import GraphNode, LayerGraph
from ..rules import ReluRule
from ..targets import Target

__all__ = ["SiteCapture", "Capture", "AttentionCapture", "ModelAdapter", "InputSpec", "check_inputs", "descendants", "glorot_uniform",
           "is_plain_setting", "values_getter", "read_each"]


@dataclass
class SiteCapture:
    """Activations and gradients at one call site, ``(N, h, w, C)``."""

    node: GraphNode
    activations: np.ndarray
    gradients: np.ndarray | None


@dataclass
class Capture:
    outputs: list[np.ndarray]
    scores: np.ndarray
    sites: list[SiteCapture]
    #: the outputs' names as this run gave them, where they depend on the batch (a detector's
    #: ``0.boxes``, ``1.boxes``...); ``None``: the graph's ``output_names``
    names: list[str] | None = None


@dataclass
class AttentionCapture:
    """One run of a transformer with its attention probabilities: the outputs, the target's
    scores, and per attention call (in the order they ran) ``probs[i]`` ``(N, heads, T, T)``,
    ``grads[i]`` the gradient of the scores with respect to them (``None`` where not asked)
    and ``paths[i]`` the module's path."""

    outputs: list[np.ndarray]
    scores: np.ndarray
    names: list[str] | None
    probs: list[np.ndarray]
    grads: list[np.ndarray] | None
    paths: list[str]


@dataclass
class InputSpec:
    name: str
    shape: tuple[int | None, ...]  # with the batch axis


class ModelAdapter(Protocol):
    framework: str

    def graph(self) -> LayerGraph: ...

    def input_specs(self) -> list[InputSpec]: ...

    def output_names(self) -> list[str]: ...

    def prepare(self, inputs: Any) -> list[np.ndarray]: ...

    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...

    def capture(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        need_gradients: bool = True,
    ) -> Capture: ...

    def layer_role(self, node: GraphNode) -> str | None:
        """For CAM's head search: "global_pool", "pass", "dense", "activation" or None."""
        ...

    def dense_kernel(self, node: GraphNode) -> np.ndarray:
        """The ``(in, out)`` weights of a node whose role is "dense"."""
        ...

    def layer_bias(self, node: GraphNode) -> tuple[np.ndarray, str] | None:
        """For FullGrad: of a convolution or batch normalisation, the ``(C,)`` bias it adds to
        each output channel (batch normalisation's effective bias at inference,
        ``beta - mean * gamma / sqrt(var + eps)``) and the name of the activation the layer
        applies after it ("linear" where none); ``None`` for any other layer and one without a
        bias."""
        ...

    def score(self, inputs: list[np.ndarray], target: Target) -> np.ndarray: ...

    def site_scorer(
        self, inputs: list[np.ndarray], node: GraphNode, target: Target
    ) -> Callable[[np.ndarray], np.ndarray]: ...

    def input_gradients(
        self, inputs: list[np.ndarray], which: int, target: Target, rule: ReluRule | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def activation_gradients(
        self, inputs: list[np.ndarray], node: GraphNode, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[0] (N, H, W, c))`` for the score of each sample
        ``sum(A * weights)``, ``A`` the channels-last output of call site ``node`` and
        ``weights`` of its shape with the batch axis: a channel's mean, one neuron, any
        direction (feature visualization)."""
        ...

    # ---- what the model is like (capabilities: code outside adapters/ never asks "which framework")
    #: the model has no input size of its own (a native torch module): shapes come from an input
    needs_input_size: bool

    def can_probe(self, node: GraphNode) -> bool: ...

    def native_inputs(self, arrays: Sequence[np.ndarray]) -> Any:
        """Prepared channels-last arrays as the model itself takes them, so that :meth:`prepare`
        reads them back without guessing a layout."""
        ...

    # ---- copies with re-initialised layers (the randomization check)
    def twin(self) -> "ModelAdapter":
        """An adapter over a deep copy of the model (same weights); the model is not touched."""
        ...

    def kernel_layers(self, inputs: Any) -> list[tuple[str, Any]]:
        """``(name, layer)`` of every layer with a kernel (a weight of 2 or more axes), in the
        order the model computes them."""
        ...

    def reinitialize(self, layer: Any, rng: np.random.Generator) -> None:
        """Give ``layer`` (from :meth:`kernel_layers` of this adapter) new Glorot-uniform kernels."""
        ...


_PLAIN = (bool, int, float, str, type(None))


def is_plain_setting(value: Any) -> bool:
    """Whether ``value`` is a setting a trace freezes by value (a number, flag, string, None or
    a tuple of them): what the compiled-program fingerprint (Keras) and the kept-trace key
    (torch) read of each layer."""
    return type(value) in _PLAIN or (type(value) is tuple and all(type(e) in _PLAIN for e in value))


def values_getter(keys: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``get(d) -> (d[k] for k in keys)`` as a tuple, by one ``itemgetter`` (C) where it can:
    how the compiled-program fingerprint (Keras) and the kept-trace key (torch) read the chosen
    attributes of every layer on each call."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    keys = tuple(keys)
    return lambda d: tuple(d[k] for k in keys)  # itemgetter of one key gives no tuple


def read_each(getters: Sequence[Callable[[Any], Any]], dicts: Sequence[Any]) -> list[Any]:
    """``[get(d) for get, d in zip(getters, dicts)]`` by ``map`` (C): each layer's own
    :func:`values_getter` applied to its ``__dict__``, for every layer of a model at once."""
    return list(map(_apply, getters, dicts))


def _apply(get: Callable[[Any], Any], d: Any) -> Any:
    return get(d)


def glorot_uniform(shape: tuple[int, ...], torch_layout: bool, rng: np.random.Generator) -> np.ndarray:
    """Glorot-uniform values for a kernel of ``shape``: torch ``(out, in, *kernel)`` or Keras
    ``(*kernel, in, out)``."""
    if torch_layout:
        receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    else:
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / max(1, fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def descendants(graph: LayerGraph, nid: int) -> set[int]:
    """Every node computed from node ``nid`` (not ``nid`` itself)."""
    succ = graph.successors()
    seen: set[int] = set()
    stack = list(succ[nid])
    while stack:
        m = stack.pop()
        if m not in seen:
            seen.add(m)
            stack.extend(succ[m])
    return seen


def _shape_str(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def check_inputs(inputs: Any, specs: Sequence[InputSpec]) -> list[np.ndarray]:
    """Turn what the user passed into one float32 array per model input, batch axis first.

    Accepts one array for a one-input model, a list/tuple in input order, or a dict by input
    name. A single image without the batch axis gets one. Integer images are cast to float32
    without rescaling (preprocess as the model expects before calling camlens).
    """
    if isinstance(inputs, dict):
        missing = [s.name for s in specs if s.name not in inputs]
        if missing:
            raise ValueError(f"inputs dict lacks {missing}; the model's inputs are {[s.name for s in specs]}")
        arrays = [inputs[s.name] for s in specs]
    elif isinstance(inputs, (list, tuple)) and len(specs) > 1:
        arrays = list(inputs)
    elif isinstance(inputs, (list, tuple)) and len(specs) == 1 and len(inputs) == 1 and np.ndim(inputs[0]) >= 2:
        arrays = [inputs[0]]
    else:
        arrays = [inputs]
    if len(arrays) != len(specs):
        raise ValueError(
            f"the model takes {len(specs)} inputs ({', '.join(s.name for s in specs)}); got "
            f"{len(arrays)}. Pass a list with one array per input."
        )
    out = []
    for arr, spec in zip(arrays, specs):
        a = _as_float_array(arr, spec.name)
        if a.ndim == len(spec.shape) - 1:
            a = a[None]
        if a.ndim != len(spec.shape):
            raise ValueError(
                f"input {spec.name!r} expects shape {_shape_str(spec.shape)} (batch first); got "
                f"an array of shape {a.shape}"
            )
        if len(spec.shape) == 4:
            _check_image_dims(a, spec)
        else:
            for got, want in zip(a.shape[1:], spec.shape[1:]):
                if want is not None and got != want:
                    raise ValueError(
                        f"input {spec.name!r} expects shape {_shape_str(spec.shape)}; got {a.shape}"
                    )
        out.append(a)
    sizes = {a.shape[0] for a in out}
    if len(sizes) > 1:
        raise ValueError(f"all inputs need the same batch size; got {[a.shape[0] for a in out]}")
    if 0 in sizes:
        raise ValueError("the batch is empty: give at least one image")
    return out


def _as_float_array(arr: Any, name: str) -> np.ndarray:
    if hasattr(arr, "numpy") and not isinstance(arr, np.ndarray):
        arr = arr.numpy()
    a = np.asarray(arr)
    if a.dtype == object or a.dtype.kind in "USVbcMm":
        raise TypeError(
            f"input {name!r} has dtype {a.dtype}; camlens needs numbers (float32 or uint8 images)"
        )
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"input {name!r} holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return a


def _check_image_dims(a: np.ndarray, spec: InputSpec) -> None:
    _, h, w, c = spec.shape
    got_c = a.shape[-1]
    if c is not None and got_c != c:
        fix = ""
        if c == 3 and got_c == 1:
            fix = " The image is grayscale: repeat its channel, np.repeat(x, 3, axis=-1)."
        elif c == 1 and got_c in (3, 4):
            fix = " The model is grayscale: convert, x[..., :3].mean(axis=-1, keepdims=True)."
        elif c == 3 and got_c == 4:
            fix = " The image has an alpha channel: drop it, x[..., :3]."
        elif got_c == h or a.shape[1] == c:
            fix = " It looks channels-first: move the channels last, np.moveaxis(x, 1, -1)."
        raise ValueError(
            f"input {spec.name!r} expects {c} channel(s), shape {_shape_str(spec.shape)}; got "
            f"{got_c}, shape {a.shape}.{fix}"
        )
    if (h is not None and a.shape[1] != h) or (w is not None and a.shape[2] != w):
        raise ValueError(
            f"input {spec.name!r} expects images of {h}x{w} (height x width), shape "
            f"{_shape_str(spec.shape)}; got {a.shape[1]}x{a.shape[2]}, shape {a.shape}. Resize "
            f"the images first (PIL: img.resize(({w}, {h})))."
        )


def class_score_as_logit(target: Target) -> Target:
    """A :class:`~camlens.targets.ClassScore` as the :class:`~camlens.targets.Logit` of the same
    class (LRP and DeepLIFT explain logits: the final softmax is skipped); others unchanged."""
    from ..targets import ClassScore, Logit

    if type(target) is not ClassScore:
        return target
    logit = copy.copy(target)
    logit.__class__ = Logit
    return logit
