"""Adapters for tests of methods and metrics: a model that is a numpy function, and a recorder
that logs what camlens asks of any adapter.

Both are adapters (``camlens.explain``, ``feature_maps`` and the metrics take them where they
take a model), so a test counts model runs or feeds hand-computed outputs without patching
anything::

    model = FunctionModel(lambda x: np.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], -1),
                          input_shape=(4, 4, 1))
    camlens.explain(model, images, "occlusion").map            # pixel methods need no layer
    rec = Recorder(camlens.adapters.adapt(keras_model))
    camlens.metrics.deletion(rec, exp)
    rec.calls                                                  # [("forward", 1), ("score", 32), ...]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..graph import GraphNode, LayerGraph
from ..targets import Target, scores_of
from .base import Capture, InputSpec, ModelAdapter, check_inputs

__all__ = ["FunctionModel", "Recorder", "NumpyOps"]


class NumpyOps:
    """The array functions targets use (``xp``), for numpy outputs."""

    argmax = staticmethod(np.argmax)
    take_along_axis = staticmethod(np.take_along_axis)
    expand_dims = staticmethod(np.expand_dims)
    reshape = staticmethod(np.reshape)
    sum = staticmethod(np.sum)
    sqrt = staticmethod(np.sqrt)
    stack = staticmethod(np.stack)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)

    @staticmethod
    def cast(x: Any, dtype: str) -> Any:
        return np.asarray(x).astype(dtype)

    @staticmethod
    def convert_to_tensor(x: Any, dtype: str | None = None) -> Any:
        return np.asarray(x, dtype=dtype)


class FunctionModel:
    """A model given as ``fn(*inputs) -> output or list of outputs``, on channels-last numpy
    arrays. It has no layers: pixel methods and metrics run on it, layer methods do not (they
    are tested on :class:`camlens.methods.SiteData`). Every run is logged in :attr:`calls`
    as ``(what, batch size)``."""

    framework = "numpy"
    needs_input_size = False

    def __init__(
        self,
        fn: Callable[..., Any],
        input_shape: Sequence[int] | Sequence[Sequence[int]],
        output_names: Sequence[str] | None = None,
    ) -> None:
        shapes = [tuple(input_shape)] if isinstance(input_shape[0], int) else [tuple(s) for s in input_shape]  # type: ignore[arg-type]
        self.model = self
        self.fn = fn
        self._specs = [InputSpec(f"input_{i}", (None, *s)) for i, s in enumerate(shapes)]
        self._output_names = list(output_names) if output_names else None
        self.calls: list[tuple[str, int]] = []

    # ---- the graph: inputs straight to outputs
    def _outputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.fn(*[np.asarray(a, np.float32) for a in inputs])
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def output_names(self) -> list[str]:
        if self._output_names is None:
            example = [np.zeros((1, *s.shape[1:]), np.float32) for s in self._specs]
            self._output_names = [f"output_{i}" for i in range(len(self._outputs(example)))]
        return self._output_names

    def graph(self) -> LayerGraph:
        n_in = len(self._specs)
        nodes = [GraphNode(i, s.name, 0, "Input", tuple(s.shape[1:]), [], True, i)
                 for i, s in enumerate(self._specs)]
        names = self.output_names()
        nodes += [GraphNode(n_in + k, name, 0, "Function", None, list(range(n_in)))
                  for k, name in enumerate(names)]
        return LayerGraph(nodes, list(range(n_in)), [n_in + k for k in range(len(names))],
                          names, [s.name for s in self._specs])

    def input_specs(self) -> list[InputSpec]:
        return list(self._specs)

    def prepare(self, inputs: Any) -> list[np.ndarray]:
        return check_inputs(inputs, self._specs)

    # ---- running
    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self.calls.append(("forward", len(inputs[0])))
        return self._outputs(inputs)

    def score(self, inputs: list[np.ndarray], target: Target) -> np.ndarray:
        self.calls.append(("score", len(inputs[0])))
        scores = scores_of(target, self._outputs(inputs), self.output_names(), NumpyOps)
        return np.asarray(scores, np.float32).reshape(-1)

    def capture(self, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target,
                need_gradients: bool = True) -> Capture:
        if nodes:
            raise ValueError("a FunctionModel has no layers to capture; test layer methods on SiteData")
        self.calls.append(("capture", len(inputs[0])))
        outs = self._outputs(inputs)
        scores = np.asarray(scores_of(target, outs, self.output_names(), NumpyOps), np.float32).reshape(-1)
        return Capture(outs, scores, [])

    def _no(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"a FunctionModel has no {what}: it is a numpy function")

    def layer_role(self, node: GraphNode) -> str | None:
        return None

    def dense_kernel(self, node: GraphNode) -> np.ndarray:
        raise self._no("layers")

    def layer_bias(self, node: GraphNode) -> tuple[np.ndarray, str] | None:
        return None

    def site_scorer(self, inputs: list[np.ndarray], node: GraphNode, target: Target) -> Any:
        raise self._no("layers")

    def input_gradients(self, inputs: list[np.ndarray], which: int, target: Target,
                        rule: Any = None) -> tuple[np.ndarray, np.ndarray]:
        raise self._no("gradients")

    def activation_gradients(self, inputs: list[np.ndarray], node: GraphNode,
                             weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise self._no("layers")

    def can_probe(self, node: GraphNode) -> bool:
        return False

    def native_inputs(self, arrays: Sequence[np.ndarray]) -> Any:
        return list(arrays)


class Recorder:
    """Any adapter, with every call camlens makes of it logged in :attr:`calls` as
    ``(method name, batch size)`` (``capture`` also with the number of call sites)."""

    _LOGGED = ("forward", "score", "input_gradients", "site_scorer", "activation_gradients")

    def __init__(self, adapter: ModelAdapter) -> None:
        self._adapter = adapter
        self.calls: list[tuple[Any, ...]] = []

    def capture(self, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target,
                need_gradients: bool = True) -> Capture:
        self.calls.append(("capture", len(inputs[0]), len(nodes), need_gradients))
        return self._adapter.capture(inputs, nodes, target, need_gradients)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._adapter, name)
        if name in self._LOGGED and callable(value):
            def logged(inputs: Any, *args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, len(inputs[0])))
                return value(inputs, *args, **kwargs)
            return logged
        return value
