"""PyTorch adapter: any ``torch.nn.Module``.

The layer graph comes from a ``torch.fx`` trace with shapes propagated from the first batch
(a module has no input shape of its own). Layer names are module paths (``features.6.0``); a
module called twice (a shared ReLU, a siamese encoder) gives two call sites. Where the module
cannot be traced, the graph is the list of modules in the order they ran, and the automatic
layer is the last one with a spatial output, with a warning.

Probes are forward hooks that return ``output + z`` with ``z`` a zero tensor that requires
grad; ``torch.autograd.grad`` then gives the gradient at each call site and nothing else
(no parameter ``.grad`` is touched). Full backward hooks are avoided: in-place operations
break them. During the explanation every module is in eval mode; each module's own
``training`` flag is restored afterwards, also after an exception.

camlens works channels-last: inputs may be given as ``(N, C, H, W)`` tensors or arrays, or
``(N, H, W, C)`` arrays (told apart by which axis has 1 or 3 channels); activations come back
as ``(N, h, w, C)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import itertools
import operator
import sys
import warnings
import weakref
from collections import defaultdict
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ...graph import GraphNode, LayerGraph
from ...rules import LayerRules, ReluRule, Rescale, no_relu_warning
from ...targets import ClassScore, Target, scores_of
from .._torch_autograd import grad_mode, rule_relu_torch
from ..base import (AttentionCapture, Capture, InputSpec, _as_float_array, class_score_as_logit, glorot_uniform,
                    is_plain_setting, read_each, values_getter)
from .layouts import channel_axes, module_axis
from .ops import TorchOps, capture_result, probe, site_capture
from .patches import eval_mode, forward_hooks, identity_hooks, instance_forwards
from ..._args import warn

__all__ = ["TorchAdapter", "is_torch_module"]


def _numpy_pair(scores: Any, grads: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(N,)`` and channels-first ``grads`` as numpy, the latter channels-last."""
    g = np.moveaxis(grads.detach().cpu().float().numpy(), 1, -1)
    return scores.detach().cpu().float().numpy().reshape(-1), np.ascontiguousarray(g)


def is_torch_module(model: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(model, torch.nn.Module)


#: how many samples the graph's shapes are propagated with: a value whose first axis is not this
#: is not one row per sample (Swin's attention windows, a detector's region crops, a constant)
_PROBE_BATCH = 2


def _node_shape(shape: Sequence[int], axis: int | None, what: str) -> tuple[tuple[int, ...], str | None]:
    """The shape without the batch axis as the graph takes it (maps channels-last), and why the
    value is not a per-sample output where it is not one. ``axis``: the channel axis of a 4-D
    value (:mod:`.layouts`), ``None`` where unknown."""
    dims = tuple(int(d) for d in shape[1:])
    if not shape or int(shape[0]) != _PROBE_BATCH:
        first = int(shape[0]) if shape else None
        return dims, (
            f"its output {tuple(int(d) for d in shape)} has {first} rows for a batch of "
            f"{_PROBE_BATCH} images, so its first axis is not the batch (attention windows, "
            f"region crops or a constant); explain a layer whose output has one row per image"
        )
    if len(dims) != 3:
        return dims, None
    if axis == 1:
        return (dims[1], dims[2], dims[0]), None
    if axis == 3:
        return dims, None
    return dims, (
        f"the layout of its output (N, {', '.join(map(str, dims))}) cannot be read from the "
        f"model ({what}): no convolution, pooling, Linear, LayerNorm or permute fixes which "
        "axis holds the channels, and camlens does not guess; explain the layer before or after "
        "it that does"
    )


class TorchAdapter:
    """Adapter for a ``torch.nn.Module``; inputs channels-first for the module itself."""

    framework = "torch"
    needs_input_size = True

    def __init__(self, module: Any) -> None:
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"expected a torch.nn.Module; got {type(module).__name__}")
        self.model = module
        self._graph: LayerGraph | None = None
        self._example: list[np.ndarray] | None = None
        self._module_paths: dict[str, Any] | None = None  # read when first needed (_modules)
        self._node_module: dict[int, str] = {}
        self._gm: Any = None  # the fx GraphModule, when the module could be traced
        self._fx_node: dict[int, str] = {}  # graph node id -> fx node name
        self._channels_last: bool | None = None  # whether the module takes channels-last memory
        self._channels_first: set[int] = set()  # graph nodes whose 4-D output is (N, C, H, W)

    @property
    def _modules(self) -> dict[str, Any]:
        """Every module by path (``named_modules``), the module itself at ``""``."""
        if self._module_paths is None:
            self._module_paths = dict(self.model.named_modules())
        return self._module_paths

    def _eval_mode(self) -> eval_mode:
        """Eval mode for the whole module (see :class:`~.patches.eval_mode`), over the modules
        the adapter already knows, where it does."""
        paths = self._module_paths
        return eval_mode(self.model, None if paths is None else paths.values())

    # ------------------------------------------------------------------ inputs
    def input_specs(self) -> list[InputSpec]:
        if self._example is None:
            return [InputSpec("input", (None, None, None, None))]
        return [InputSpec(f"input_{i}", (None, *a.shape[1:])) for i, a in enumerate(self._example)]

    def output_names(self) -> list[str]:
        return self.graph().output_names

    def prepare(self, inputs: Any) -> list[np.ndarray]:
        """Channels-last float32 arrays, one per forward argument."""
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        out = []
        for i, arr in enumerate(arrays):
            name = f"input_{i}"
            if hasattr(arr, "detach"):
                arr = arr.detach().cpu().numpy()
                a = _as_float_array(arr, name)
                if a.ndim == 3:
                    a = a[None]
                if a.ndim == 4:
                    a = np.moveaxis(a, 1, -1)  # tensors are channels-first by convention
            else:
                a = _as_float_array(arr, name)
                if a.ndim == 3:
                    a = a[None]
                if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
                    a = np.moveaxis(a, 1, -1)
            if a.ndim != 4:
                raise ValueError(
                    f"{name}: expected images (N, C, H, W) or (N, H, W, C); got shape {a.shape}"
                )
            out.append(_contiguous(a))
        if len({a.shape[0] for a in out}) > 1:
            raise ValueError(f"all inputs need the same batch size; got {[a.shape[0] for a in out]}")
        if self._example is None or [a.shape[1:] for a in out] != [e.shape[1:] for e in self._example]:
            self._example = [a[:1] for a in out]
            self._graph = None  # shapes changed: propagate again
        return out

    def _tensors(self, arrays: Sequence[np.ndarray], channels_last: bool = False) -> list[Any]:
        """The module's channels-first tensors of the ``(N, H, W, C)`` ``arrays`` (as
        :meth:`prepare` makes them). ``channels_last``: keep the channels-last memory order
        under the channels-first shape (no copy, see :meth:`score`)."""
        import torch

        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2) for a in arrays]
        if not channels_last:
            tensors = [t.contiguous() for t in tensors]
        return [t.to(device=device, dtype=dtype) for t in tensors]

    # ------------------------------------------------------------------ graph
    def graph(self) -> LayerGraph:
        if self._graph is None:
            if self._example is None:
                raise ValueError(
                    "a PyTorch module has no input shape of its own: explain a batch first, or "
                    "call camlens.layers(model, input_shape=(1, 3, H, W))"
                )
            hit = _TRACES.get(self.model)
            if hit is not None and hit[0].matches(self):
                _, self._graph, self._gm, node_module, fx_node, cf = hit
                self._node_module, self._fx_node, self._channels_first = dict(node_module), dict(fx_node), set(cf)
                return self._graph
            key = _TraceKey(self)
            try:
                with self._eval_mode():  # trace the inference branches
                    traced = _trace(self.model)
            except Exception as exc:  # fx raises many types on untraceable Python
                exported = self._exported(key)
                if exported is None:
                    warn(
                        f"torch.fx cannot trace {type(self.model).__name__} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}), nor can torch.export; "
                        "camlens falls back to the order in which modules run, and layer='auto' "
                        "to a stated default (the last spatial layer of the backbone where there "
                        "is one, else of the model)",
                        RuntimeWarning
                    )
                    self._graph = self._run_order_graph()
                else:
                    # the exported graph gives the structure; modules are probed with hooks on
                    # the module itself, functions inside forward() are not probed
                    self._graph = self._fx_graph(exported, exported=True)
                    _TRACES[self.model] = (key, self._graph, None, dict(self._node_module), dict(self._fx_node),
                                           set(self._channels_first))
            else:
                self._graph = self._fx_graph(traced)
                self._gm = traced
                _TRACES[self.model] = (key, self._graph, traced, dict(self._node_module), dict(self._fx_node),
                                       set(self._channels_first))
        return self._graph

    def _exported(self, key: "_TraceKey") -> Any:
        """The module's graph from ``torch.export`` (which traces the Python that fx cannot:
        Hugging Face models, keyword arguments, output dataclasses), as a GraphModule whose
        nodes carry the module they ran in; ``None`` where export fails too. A failure is kept
        with the trace key: an export can take as long as many forward passes, and each
        explain call builds a new adapter."""
        import torch

        failed = _NOT_EXPORTABLE.get(self.model)
        if failed is not None and failed.matches(self):
            return None
        if _triton_would_crash():
            warn(
                "TensorFlow is loaded, and torch.export would now load triton (torch's CUDA "
                "builds bring it), which crashes a process that loaded TensorFlow first; camlens "
                "does not call it, so this model's graph is read from the order its modules run. "
                "To read it whole, import torch._dynamo before TensorFlow (or keras with the "
                "TensorFlow backend), or run without TensorFlow (KERAS_BACKEND=torch)",
                RuntimeWarning
            )
            return None
        try:
            with self._eval_mode(), warnings.catch_warnings(), _quiet_logs():
                warnings.simplefilter("ignore")
                program = torch.export.export(self.model, tuple(self._probe_tensors()), strict=False)
            return program.module()
        except Exception:  # export raises many types on what it cannot trace
            _NOT_EXPORTABLE[self.model] = key
            return None

    def _probe_tensors(self) -> list[Any]:
        """The example inputs at ``_PROBE_BATCH`` samples, for tracing and shape propagation."""
        return self._tensors([np.repeat(e, _PROBE_BATCH, axis=0) for e in self._example or []])

    def _fx_graph(self, gm: Any, exported: bool = False) -> LayerGraph:
        with self._eval_mode(), grad_mode(False):
            try:
                _propagate_shapes(gm, self._probe_tensors())
            except Exception as exc:  # the module's own error (fx may wrap it)
                raise self._failed_on_input(exc) from exc
        nodes: list[GraphNode] = []
        ids: dict[str, int] = {}
        calls: dict[str, int] = defaultdict(int)
        inputs, input_names = [], []
        outputs: list[int] = []
        output_names: list[str] = []
        aliases: dict[str, list[int]] = {}
        axes = channel_axes(list(gm.graph.nodes), self._modules)
        unusable: dict[int, str] = {}
        n_given = len(self._example or [])
        for node in gm.graph.nodes:
            meta = node.meta.get("tensor_meta")
            shape = why = None
            if meta is not None and hasattr(meta, "shape"):
                shape, why = _node_shape(meta.shape, axes.get(node.name), node.name)
            if node.op in ("placeholder", "call_module", "call_function", "call_method") and meta is not None:
                if why is not None:
                    unusable[len(nodes)] = why
                elif axes.get(node.name) == 1 and shape is not None and len(shape) == 3:
                    self._channels_first.add(len(nodes))
            preds = [ids[a.name] for a in node.all_input_nodes if a.name in ids]
            if node.op == "placeholder" and len(inputs) >= n_given:
                unusable.pop(len(nodes), None)
                self._channels_first.discard(len(nodes))
                continue  # an argument with a default (attn_mask=None): a constant, not an input
            if node.op == "placeholder":
                ids[node.name] = len(nodes)
                inputs.append(len(nodes))
                input_names.append(node.name)
                nodes.append(GraphNode(len(nodes), node.name, 0, "Input", shape, [], True, len(inputs) - 1))
            elif node.op == "output":
                for name, arg in _flatten_output_arg(node.args[0]):
                    for name, arg in _record_fields(name, arg, ids):
                        outputs.append(ids[arg.name])
                        output_names.append(name)
            elif node.op == "get_attr":
                continue
            elif meta is None:
                # not a tensor (x.size(0), x.dim(), ...): a shape read carries no evidence, and
                # an edge through it would bypass every layer
                continue
            else:
                if node.op == "call_module":
                    path = str(node.target)
                    kind = type(self._modules[path]).__name__
                else:
                    path = node.name
                    kind = getattr(node.target, "__name__", str(node.target))
                    if exported:  # aten ops: "relu.default" is the function relu
                        kind = kind.split(".")[0]
                nid = len(nodes)
                ids[node.name] = nid
                self._fx_node[nid] = node.name
                nodes.append(GraphNode(nid, path, calls[path], kind, shape, preds))
                calls[path] += 1
                if node.op == "call_module":
                    self._node_module[nid] = path
                for prefix in _module_prefixes(node):
                    aliases.setdefault(prefix, [])
                    aliases[prefix] = [nid]  # the last node inside a module gives its output
        self._name_module_outputs(gm, ids, nodes, calls)
        for nid, why in unusable.items():
            nodes[nid].unusable = why
        if exported:  # the module is run as it is: only module outputs can be hooked
            for node in nodes:
                if not node.is_input and node.id not in self._node_module and node.unusable is None:
                    node.unusable = (
                        f"it is a function inside forward() ({node.kind}), and this model is read "
                        "with torch.export, whose functions camlens cannot probe; explain the "
                        "module before or after it (`camlens.layers` lists them)"
                    )
        aliases = {k: v for k, v in aliases.items() if k not in calls}
        return LayerGraph(nodes, inputs, outputs, output_names, input_names, aliases=aliases)

    def _name_module_outputs(
        self, gm: Any, ids: dict[str, int], nodes: list[GraphNode], calls: dict[str, int]
    ) -> None:
        """Give a module's name to the function node that is its output.

        A module that is not a leaf has no node of its own: tracing inlines its forward. Where
        that forward ends in a function (a transformer block's ``x + mlp(x)``), the last node
        traced inside each call is the call's output; it is renamed after the module, with the
        call's number (fx marks the k-th call of a module ``path@k``), so that ``"blocks.0"``
        names it and a forward hook on ``blocks.0`` probes it. A node counts only when every
        node that reads it lies outside that call (the value leaves the module)."""
        last: dict[tuple[str, str, int], Any] = {}  # (path, scope key, call) -> fx node
        for fx_node in gm.graph.nodes:
            if fx_node.name not in ids:
                continue
            for key, path, call in _module_scopes(fx_node):
                last[(path, key, call)] = fx_node
        chosen: dict[int, tuple[str, int]] = {}
        hooked = set(self._node_module.values())  # modules fx kept as nodes of their own
        for (path, key, call), fx_node in last.items():
            nid = ids[fx_node.name]
            if nid in self._node_module or path in hooked:
                continue  # a module node already (fx keeps torch.nn's own modules whole)
            users = list(fx_node.users)
            if not users or any(key in (u.meta.get("nn_module_stack") or {}) for u in users):
                continue
            if nid not in chosen or len(path) > len(chosen[nid][0]):
                chosen[nid] = (path, call)  # the innermost module whose output it is
        for nid, (path, call) in chosen.items():
            nodes[nid].path, nodes[nid].call = path, call
            if not list(self._modules[path].children()):
                # a module without submodules that fx traced through (timm's LayerNorm,
                # torchvision's Permute): named and typed as fx names module nodes
                nodes[nid].kind = type(self._modules[path]).__name__
            self._node_module[nid] = path
            calls[path] = max(calls.get(path, 0), call + 1)

    def _failed_on_input(self, exc: BaseException) -> ValueError:
        """A ValueError that says the module itself failed on the example input, with the
        innermost error (fx wraps it twice) and the input's shape."""
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        first = str(root).splitlines()[0] if str(root) else ""
        shapes = ", ".join(str((1, a.shape[-1], *a.shape[1:-1])) for a in self._example or [])
        return ValueError(
            f"{type(self.model).__name__} failed on an input of shape {shapes} (N, C, H, W): "
            f"{type(root).__name__}: {first}. Does it expect another image size or channel "
            "count? Give it inputs of the size it was built for (camlens command line: --size H,W)."
        )

    def _run_order_graph(self) -> LayerGraph:
        """Modules in the order their calls ended on the example batch (a block after the
        modules inside it, so blocks and stages are layers too: ``backbone.body.layer4``),
        without edges; outputs named as the run gives them (``0.boxes``, ``0.scores`` for a
        detector's per-image dicts)."""
        import torch

        records: list[tuple[str, tuple[int, ...] | None]] = []
        leaves = [(n, m) for n, m in self.model.named_modules() if n]

        def hook_for(name: str) -> Callable[..., None]:
            def hook(m: Any, args: Any, out: Any) -> None:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
                records.append((name, shape))
            return hook

        with forward_hooks([(mod, hook_for(name)) for name, mod in leaves]):
            with self._eval_mode(), grad_mode(False):
                out = self.model(*self._probe_tensors())
        nodes = [GraphNode(0, "input", 0, "Input", None, [], True, 0)]
        calls: dict[str, int] = defaultdict(int)
        for name, shape in records:
            nid = len(nodes)
            mod = self._modules[name]
            # without a graph only the module itself tells the layout; others stay as torch
            # images are by convention, channels-first (the fallback warns to check the layer)
            axis = module_axis(mod) or 1
            dims, why = (None, None) if shape is None else _node_shape(shape, axis, name)
            nodes.append(GraphNode(nid, name, calls[name], type(mod).__name__, dims, [nid - 1], unusable=why))
            if dims is not None and len(dims) == 3 and axis == 1:
                self._channels_first.add(nid)
            self._node_module[nid] = name
            calls[name] += 1
        names = [name for name, _ in _flatten_output_arg(out)]
        return LayerGraph(nodes, [0], [len(nodes) - 1] * len(names), names, ["input"], readable=False)

    # ------------------------------------------------------------------ running
    def forward(self, inputs: list[np.ndarray]) -> list[np.ndarray]:

        with self._eval_mode(), grad_mode(False):
            out = self.model(*self._tensors(inputs))
        return [o.detach().cpu().numpy() for _, o in _flatten_output_arg(out)]

    def score(self, inputs: list[np.ndarray], target: Target) -> np.ndarray:
        """``(N,)`` target scores, no gradient: for methods that rerun the model."""

        with self._eval_mode(), grad_mode(False), self._logit_patch(target):
            out = self._run_channels_last(inputs)
            outs, scores, names = _scored(out, target, len(inputs[0]))
        return scores.detach().cpu().float().numpy().reshape(-1)

    def _run_channels_last(self, inputs: list[np.ndarray]) -> Any:
        """The module's output for ``inputs`` fed in channels-last memory order where the module
        accepts it. Convolutions then run in the layout oneDNN and cuDNN prefer: EfficientNet-
        Lite0 at batch 8 ran 1.2-1.5x faster on 2 CPU cores, ResNet-50 1.1-1.2x (the values
        agree to float rounding). Used where the model runs many times on modified copies
        (Score-CAM, RISE, occlusion, the metrics). A module that needs a contiguous input
        (``x.view(...)`` on it, or on a convolution's output, raises) is run once more the usual
        way and remembered; the caller holds eval mode and no_grad, so a failed try changes
        nothing."""
        if self._channels_last is not False:
            try:
                out = self.model(*self._tensors(inputs, channels_last=True))
            except RuntimeError:
                if self._channels_last:
                    raise
                self._channels_last = False
            else:
                self._channels_last = True
                return out
        return self.model(*self._tensors(inputs))

    def can_probe(self, node: GraphNode) -> bool:
        """Hooks exist on modules only, not on functions called in ``forward()`` (``F.relu``)."""
        return node.id in self._node_module

    def native_inputs(self, arrays: Sequence[np.ndarray]) -> Any:
        import torch  # tensors are channels-first by convention: prepare reads them without a guess

        return [torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))) if a.ndim == 4 else a
                for a in arrays]

    # ------------------------------------------------------------------ copies
    def twin(self) -> "TorchAdapter":
        import copy

        return TorchAdapter(copy.deepcopy(self.model))

    def kernel_layers(self, inputs: Any) -> list[tuple[str, Any]]:
        """Modules with a kernel of their own, in the order a forward pass first calls them."""
        named = [(n, m) for n, m in self.model.named_modules()
                 if any(p.dim() >= 2 for p in m.parameters(recurse=False))]
        called: list[tuple[str, Any]] = []

        def hook_for(name: str) -> Callable[..., None]:
            def hook(m: Any, args: Any, out: Any) -> None:
                if all(name != n for n, _ in called):
                    called.append((name, m))
            return hook

        with forward_hooks([(mod, hook_for(name)) for name, mod in named]):
            arrays = self.prepare(inputs)
            self.forward([a[:1] for a in arrays])
        return called

    def reinitialize(self, layer: Any, rng: np.random.Generator) -> None:
        import torch

        with grad_mode(False):
            for p in layer.parameters(recurse=False):
                if p.dim() >= 2:
                    value = glorot_uniform(tuple(p.shape), True, rng)
                    p.copy_(torch.as_tensor(value, dtype=p.dtype, device=p.device))

    def _module_for(self, node: GraphNode) -> Any:
        path = self._node_module.get(node.id)
        if path is None:
            raise ValueError(
                f"{node.path!r} is a function inside forward() ({node.kind}), not a module; "
                "camlens probes modules: pick the module before or after it"
            )
        return self._modules[path]

    def capture(
        self,
        inputs: list[np.ndarray],
        nodes: Sequence[GraphNode],
        target: Target,
        need_gradients: bool = True,
    ) -> Capture:
        import torch

        self.graph()
        if self._gm is not None and any(n.id not in self._node_module for n in nodes):
            return self._capture_fx(inputs, nodes, target, need_gradients)
        wanted: dict[int, Any] = {}
        for n in nodes:
            mod = self._module_for(n)
            wanted.setdefault(id(mod), mod)
        records: dict[int, list[Any]] = defaultdict(list)
        probes: dict[tuple[int, int], Any] = {}
        # Only the call sites asked for get a probe: a module that also runs early in the
        # network (EfficientNet's one ReLU6 module, at the stem and at the head) would
        # otherwise pull the backward pass through the whole network.
        probed = {(id(self._module_for(n)), n.call) for n in nodes}

        def hook(mod: Any, args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    f"module {type(mod).__name__} returns {type(out).__name__}, not one tensor; "
                    "choose another layer"
                )
            key = (id(mod), len(records[id(mod)]))
            records[id(mod)].append(out.detach())
            if not need_gradients or key not in probed:
                return None
            return probe(out, key, probes)

        with forward_hooks([(m, hook) for m in wanted.values()]):
            tensors = self._tensors(inputs)
            outs, scores, grads, names = self._scores_and_gradients(lambda: self.model(*tensors), target, probes, len(inputs[0]))
        sites = []
        for n in nodes:
            mod = self._module_for(n)
            recs = records[id(mod)]
            if n.call >= len(recs):
                raise RuntimeError(
                    f"module {n.path!r} ran {len(recs)} time(s); call #{n.call} did not happen"
                )
            sites.append(site_capture(n, recs[n.call], grads.get((id(mod), n.call)), n.id in self._channels_first))
        return capture_result(outs, scores, sites, names)

    def _capture_fx(
        self, inputs: list[np.ndarray], nodes: Sequence[GraphNode], target: Target, need_gradients: bool
    ) -> Capture:
        """:meth:`capture` for call sites that are functions in ``forward()`` (``torch.relu(x)``,
        an add): no module to hook, so the traced graph runs node by node (a torch.fx
        Interpreter over the same modules and parameters) and the probe is added to the
        function's value. Used only when such a site is asked for."""
        import torch

        wanted = {self._fx_node[n.id] for n in nodes}
        records: dict[str, Any] = {}
        probes: dict[str, Any] = {}

        class Probed(torch.fx.Interpreter):
            def run_node(self, n: Any) -> Any:
                out = super().run_node(n)
                if n.name not in wanted:
                    return out
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"{n.name} gives {type(out).__name__}, not one tensor; choose another layer")
                records[n.name] = out.detach()
                return probe(out, n.name, probes) if need_gradients else out

        tensors = self._tensors(inputs)
        outs, scores, grads, names = self._scores_and_gradients(lambda: Probed(self._gm).run(*tensors), target, probes, len(inputs[0]))
        sites = [site_capture(n, records[self._fx_node[n.id]], grads.get(self._fx_node[n.id]),
                              n.id in self._channels_first) for n in nodes]
        return capture_result(outs, scores, sites, names)

    def attentions(
        self, inputs: list[np.ndarray], target: Target, need_gradients: bool = False
    ) -> AttentionCapture:
        """One run with every attention module's probabilities recorded (and, with
        ``need_gradients``, the gradient of the target's scores with respect to them)."""
        import torch

        from .attention import SUPPORTED, attention_modules, record_attention

        found = attention_modules(self.model)
        if not found:
            raise ValueError(
                f"{type(self.model).__name__} has no attention module camlens can read ({SUPPORTED}); "
                "attention methods need a vision transformer: use a layer method such as 'gradcam'"
            )
        tensors = self._tensors(inputs)
        if need_gradients:  # a model with frozen weights still gives its attention a gradient
            tensors = [t.requires_grad_(True) if t.is_floating_point() else t for t in tensors]
        with self._eval_mode(), grad_mode(need_gradients), self._logit_patch(target), (
                record_attention(found, need_gradients)) as rec:
            out = self.model(*tensors)
            outs, scores, names = _scored(out, target, len(inputs[0]))
            grads = None
            if need_gradients:
                got = torch.autograd.grad(scores.sum(), rec.records, allow_unused=True)
                grads = [np.zeros(tuple(p.shape), np.float32) if g is None else g.detach().cpu().float().numpy()
                         for p, g in zip(rec.records, got)]
        probs = [p.detach().cpu().float().numpy() for p in rec.records]
        result = capture_result(outs, scores, [], names)
        return AttentionCapture(result.outputs, result.scores, result.names, probs, grads, list(rec.paths))

    def _scores_and_gradients(
        self, run: Any, target: Target, probes: dict[Any, Any], batch: int
    ) -> tuple[list[Any], Any, dict[Any, np.ndarray], list[str]]:
        """``run()`` the model in eval mode, under no_grad until its first probe (``probes``
        fills as it meets the call sites); the outputs, the target's scores and the gradient of
        their sum with respect to each probe (zeros where a probe does not reach the score)."""
        import torch

        with self._eval_mode(), grad_mode(True), self._logit_patch(target):
            with grad_mode(False):
                out = run()
            outs, scores, names = _scored(out, target, batch)
            keys = list(probes)
            values: Sequence[Any] = [None] * len(keys)
            if keys and scores.requires_grad:  # else no probe is upstream of the score
                values = torch.autograd.grad(scores.sum(), [probes[k] for k in keys], allow_unused=True)
            grads = {k: (np.zeros(tuple(probes[k].shape), np.float32) if v is None
                         else v.detach().cpu().float().numpy()) for k, v in zip(keys, values)}
        return outs, scores, grads, names

    #: the relevance rules treat each sample alone (z^B's bounds per sample): a batch of images is
    #: explained in one run, each under its own target (``ModelAccess.rule_gradients``)
    batched_rules = True

    def input_gradients(
        self, inputs: list[np.ndarray], which: int, target: Target, rule: ReluRule | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[which] (N, H, W, c))``, channels-last. With a
        ``rule`` (:mod:`camlens.rules`) every ``nn.ReLU``/``nn.ReLU6`` module passes gradients
        back by it while this call runs. With :class:`~camlens.rules.LayerRules` the second
        array is LRP's relevance of ``inputs[which]`` (the score's relevance propagated back);
        with :class:`~camlens.rules.Rescale` it is DeepLIFT's multipliers (after a reference
        run on the rule's baseline, whose scores are appended to ``rule.scores``)."""
        _, scores, g, _ = self._rule_run(inputs, which, target, rule)
        return _numpy_pair(scores, g)

    def input_capture(self, inputs: list[np.ndarray], which: int, target: Target,
                      rule: Any = None) -> tuple[Capture, np.ndarray] | None:
        """:meth:`capture` with no call site and :meth:`input_gradients` in one run: the
        outputs (as :meth:`capture` gives them) and the rule's input gradients; ``None`` where
        the rule's run does not give the model's outputs (LRP and DeepLIFT skip a final softmax
        that ``target`` reads). Under alpha-beta and gamma a layer's output is the sum of its
        positive and negative parts: the model's to float rounding."""
        if isinstance(rule, (LayerRules, Rescale)) and not target.wants_logits and self._skipped_for_logits(
                class_score_as_logit(target)):
            return None
        outs, scores, g, names = self._rule_run(inputs, which, target, rule)
        return capture_result(outs, scores, [], names), _numpy_pair(scores, g)[1]

    def _rule_run(self, inputs: list[np.ndarray], which: int, target: Target,
                  rule: Any) -> tuple[list[Any], Any, Any, list[str]]:
        """The outputs, scores, input gradient (channels-first tensor) and output names of one
        run under ``rule``."""
        import torch

        self.graph()  # shapes known before the run
        if isinstance(rule, LayerRules):
            return self._lrp(inputs, which, class_score_as_logit(target), rule)
        if isinstance(rule, Rescale):
            return self._rescale(inputs, which, class_score_as_logit(target), rule)
        tensors = self._tensors(inputs)
        x = tensors[which].requires_grad_(True)
        # patches in the with statement itself, not an ExitStack: a Ctrl-C between a patch's
        # __enter__ and ExitStack recording its exit would leave the patch on
        with self._eval_mode(), grad_mode(True), self._logit_patch(target), (
            self._rule_relus(rule) if rule is not None else contextlib.nullcontext()
        ):
            out = self.model(*tensors)
            outs, scores, names = _scored(out, target, len(inputs[0]))
            (g,) = torch.autograd.grad(scores.sum(), [x], allow_unused=True)
        return outs, scores, torch.zeros_like(x) if g is None else g, names

    def activation_gradients(
        self, inputs: list[np.ndarray], node: GraphNode, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), d score / d inputs[0] (N, H, W, c))`` for the score
        ``sum(A * weights)`` per sample, ``A`` the channels-last output of call site ``node``
        (a module: :meth:`can_probe`)."""
        import torch

        self.graph()
        mod = self._module_for(node)
        seen: list[Any] = []

        def hook(m: Any, args: Any, out: Any) -> None:
            seen.append(out)

        tensors = self._tensors(inputs)
        x = tensors[0].requires_grad_(True)
        with self._eval_mode(), grad_mode(True), forward_hooks([(mod, hook)]):
            self.model(*tensors)
            if node.call >= len(seen):
                raise RuntimeError(f"module {node.path!r} ran {len(seen)} time(s); call #{node.call} did not happen")
            y = seen[node.call]
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"module {node.path!r} returns {type(y).__name__}, not one tensor; choose another layer")
            if node.id in self._channels_first and y.ndim == 4:
                y = y.permute(0, 2, 3, 1)
            w = torch.as_tensor(np.asarray(weights, np.float32)).to(device=y.device, dtype=y.dtype)
            if tuple(y.shape) != tuple(w.shape):
                raise ValueError(f"layer {node.label!r} gives shape {tuple(y.shape)}; the weights have {tuple(w.shape)}")
            scores = (y * w).reshape(y.shape[0], -1).sum(dim=1)
            g: Any = None
            if scores.requires_grad:  # else the layer does not depend on the input
                (g,) = torch.autograd.grad(scores.sum(), [x], allow_unused=True)
        grads = np.zeros(inputs[0].shape, np.float32) if g is None else np.moveaxis(
            g.detach().cpu().float().numpy(), 1, -1)
        return scores.detach().cpu().float().numpy().reshape(-1), np.ascontiguousarray(grads)

    def _lrp(self, inputs: list[np.ndarray], which: int, target: Target,
             rule: LayerRules) -> tuple[list[Any], Any, Any, list[str]]:
        import torch

        from .relevance import lrp_forwards

        tensors = self._tensors(inputs)
        x = tensors[which].requires_grad_(True)
        state: dict = {}
        forwards = lrp_forwards(self.model, self._gm, rule, state, self._skipped_for_logits(target))
        with self._eval_mode(), grad_mode(True), self._logit_patch(target), instance_forwards(forwards):
            out = self.model(*tensors)
            outs, scores, names = _scored(out, target, len(inputs[0]))
            mult = state.get("mult")
            if mult is None:
                raise ValueError("lrp: no convolution or Linear layer ran on the input; nothing to propagate through")
            rel, gx = torch.autograd.grad(scores.sum(), [mult, x], allow_unused=True)
        if gx is not None and bool((gx != 0).any()):
            raise ValueError(
                "lrp: the input reaches the score other than through its first convolution or Linear "
                "layer (a function of the raw input added later); LRP's rules cannot follow that path. "
                "Explain this model with method='integratedgradients'"
            )
        if rel is None or rel[0].numel() != x[0].numel():
            raise ValueError(
                f"lrp: the first convolution or Linear layer takes an input of shape {state.get('shape')}, "
                f"not the model input {tuple(x.shape)} (or a reshaping of it): the relevance cannot be "
                "mapped back to the pixels. Explain this model with method='integratedgradients'"
            )
        return outs, scores, rel.reshape(x.shape), names

    def _rescale(self, inputs: list[np.ndarray], which: int, target: Target,
                 rule: Rescale) -> tuple[list[Any], Any, Any, list[str]]:
        import torch

        from .relevance import rescale_forwards

        ref = np.asarray(rule.reference, dtype=np.float32)
        try:
            ref = np.broadcast_to(ref, inputs[which].shape)
        except ValueError:
            raise ValueError(f"deeplift: baseline of shape {ref.shape} does not fit inputs of shape "
                             f"{inputs[which].shape}") from None
        tensors = self._tensors(inputs)
        x = tensors[which].requires_grad_(True)
        ref_tensors = list(tensors)
        ref_tensors[which] = self._tensors([np.ascontiguousarray(ref)])[0]
        state: dict = {}
        skipped = self._skipped_for_logits(target)
        recording = rescale_forwards(self.model, self._gm, rule, True, state, skipped)
        with self._eval_mode(), grad_mode(False), self._logit_patch(target), instance_forwards(recording):
            ref_out = self.model(*ref_tensors)
        rescaled = rescale_forwards(self.model, self._gm, rule, False, state, skipped)
        with self._eval_mode(), grad_mode(True), self._logit_patch(target), instance_forwards(rescaled):
            out = self.model(*tensors)
            outs, scores, names = _scored(out, target, len(inputs[0]))
            (g,) = torch.autograd.grad(scores.sum(), [x], allow_unused=True)
        # the baseline's score as the rule explains it, from the reference run (no run of its
        # own), for the class explained on the input (a top-class target pinned to it)
        pin = target
        if isinstance(target, ClassScore) and target.index is None:
            pin = target.pinned(target.class_indices([o.detach().cpu().numpy() for o in outs], names))
        _, ref_scores, _ = _scored(ref_out, pin, len(inputs[0]))
        rule.scores.append(ref_scores.detach().cpu().float().numpy().reshape(-1))
        return outs, scores, torch.zeros_like(x) if g is None else g, names

    def _rule_relus(self, rule: ReluRule) -> contextlib.AbstractContextManager[None]:
        import torch

        if self._gm is not None:
            functional = [
                n.name for n in self._gm.graph.nodes
                if (n.op == "call_function" and getattr(n.target, "__name__", "") in ("relu", "relu_", "relu6"))
                or (n.op == "call_method" and n.target in ("relu", "relu_"))
            ]
            if functional:
                warn(
                    f"{len(functional)} ReLU(s) called as functions in forward() "
                    f"({', '.join(functional[:3])}{'...' if len(functional) > 3 else ''}) keep their "
                    f"plain gradient; the {rule.name} rule is set on nn.ReLU and nn.ReLU6 "
                    "modules only",
                    RuntimeWarning
                )
        mods = [
            (m, 6.0 if isinstance(m, torch.nn.ReLU6) else None)
            for m in self.model.modules()
            if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))
        ]
        if not mods:
            no_relu_warning(rule, sorted({type(m).__name__ for m in self.model.modules()
                                          if type(m).__name__ in _OTHER_ACTIVATIONS}))
        return instance_forwards([(m, lambda x, __top=top: rule_relu_torch(x, rule, __top)) for m, top in mods])

    def site_scorer(
        self, inputs: list[np.ndarray], node: GraphNode, target: Target
    ) -> Any:
        """For one sample (``inputs`` with batch 1): a function from replacement activations
        ``(B, h, w, C)`` at ``node`` to the target scores ``(B,)``.

        With an fx graph only the nodes after ``node`` run on the replacements; the values
        they need from elsewhere are computed once per batch size (only the nodes that feed
        them run) and kept. Without one the whole module runs with ``node``'s output replaced
        by a forward hook.
        """
        import torch

        self.graph()
        tensors_1 = self._tensors(inputs)
        if self._gm is None:
            mod = self._module_for(node)

            def whole(acts: np.ndarray) -> np.ndarray:
                b = acts.shape[0]
                repl = self._activation_tensor(acts, tensors_1[0], node.id in self._channels_first)
                count = [0]

                def hook(m: Any, args: Any, out: Any) -> Any:
                    k = count[0]
                    count[0] += 1
                    return repl if k == node.call else None

                with forward_hooks([(mod, hook)]):
                    with self._eval_mode(), grad_mode(False), self._logit_patch(target):
                        out = self.model(*[t.expand(b, *t.shape[1:]) for t in tensors_1])
                        _, s, _ = _scored(out, target, b)
                return s.detach().cpu().float().numpy().reshape(-1)

            return whole

        fx_nodes = list(self._gm.graph.nodes)
        start = self._fx_node[node.id]
        after: set[str] = set()
        frontier = [n for n in fx_nodes if n.name == start]
        while frontier:
            for u in frontier.pop().users:
                if u.name not in after:
                    after.add(u.name)
                    frontier.append(u)
        needed = {a.name for n in fx_nodes if n.name in after for a in n.all_input_nodes
                  if a.name not in after and a.name != start}
        # what computes them: none of it depends on the layer (else it would be "after"), so it
        # runs once per batch size, and only it (a skip connection from an earlier block, a
        # batch size read off the input); the rest of the layers before the layer never rerun
        upstream: set[str] = set()
        stack = [n for n in fx_nodes if n.name in needed]
        while stack:
            n = stack.pop()
            if n.name not in upstream:
                upstream.add(n.name)
                stack.extend(n.all_input_nodes)
        caches: dict[int, dict[str, Any]] = {}
        gm = self._gm

        class Replay(torch.fx.Interpreter):
            def __init__(self, mode: str, values: dict[str, Any]) -> None:
                super().__init__(gm)
                self.mode, self.values = mode, values

            def run_node(self, n: Any) -> Any:
                if self.mode == "record":
                    if n.name not in upstream and n.op != "placeholder":
                        return None
                    out = super().run_node(n)
                    if n.name in needed:
                        self.values[n.name] = out
                    return out
                if n.name == start:
                    return self.values[start]
                if n.name in after:
                    return super().run_node(n)
                return self.values.get(n.name)

        def score(acts: np.ndarray) -> np.ndarray:
            b = acts.shape[0]
            with self._eval_mode(), grad_mode(False), self._logit_patch(target):
                if b not in caches:
                    caches[b] = {}
                    Replay("record", caches[b]).run(*[t.expand(b, *t.shape[1:]) for t in tensors_1])
                values = dict(caches[b])
                values[start] = self._activation_tensor(acts, tensors_1[0], node.id in self._channels_first)
                out = Replay("replay", values).run(*[None] * len(tensors_1))
                _, s, _ = _scored(out, target, b)
            return s.detach().cpu().float().numpy().reshape(-1)

        return score

    @staticmethod
    def _activation_tensor(acts: np.ndarray, like: Any, channels_first: bool) -> Any:
        import torch

        a = np.asarray(acts, dtype=np.float32)
        if a.ndim == 4 and channels_first:
            a = np.moveaxis(a, -1, 1)
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=like.device, dtype=like.dtype)

    def _logit_patch(self, target: Target) -> contextlib.AbstractContextManager[Any]:
        """Skip a final Softmax/Sigmoid module for Logit targets (torch models usually end
        in logits already; then there is nothing to skip)."""
        if not target.wants_logits:
            return contextlib.nullcontext()
        return identity_hooks(self._skipped_for_logits(target))

    def _skipped_for_logits(self, target: Target) -> list[Any]:
        """The final Softmax/Sigmoid modules a Logit target skips."""
        if not target.wants_logits:
            return []
        graph = self.graph()
        mods = []
        for i in target.output_indices(graph.output_names):
            path = self._node_module.get(graph.outputs[i])
            mod = self._modules.get(path) if path is not None else None
            if mod is not None and type(mod).__name__ in ("Softmax", "Sigmoid", "LogSoftmax"):
                mods.append(mod)
        return mods

    def layer_role(self, node: GraphNode) -> str | None:
        """What the CAM head search needs to know of a layer (``camlens.methods.cam.ROLES``)."""
        if node.kind == "AdaptiveAvgPool2d":
            return "global_pool" if node.shape is not None and node.shape[:2] == (1, 1) else None
        return _ROLES.get(node.kind)

    def dense_kernel(self, node: GraphNode) -> np.ndarray:
        """The ``(in, out)`` weights of a Linear module."""
        weight = self._modules[self._node_module[node.id]].weight.detach().cpu().numpy()
        return weight.T.astype(np.float32)

    def layer_bias(self, node: GraphNode) -> tuple[np.ndarray, str] | None:
        """The bias of a ``Conv2d`` or the effective bias of a ``BatchNorm2d`` module (see
        ``ModelAdapter.layer_bias``); a torch module applies no activation of its own."""
        import torch

        path = self._node_module.get(node.id)
        mod = None if path is None else self._modules[path]
        if isinstance(mod, torch.nn.Conv2d):
            return None if mod.bias is None else (mod.bias.detach().cpu().double().numpy(), "linear")
        if not isinstance(mod, torch.nn.BatchNorm2d):
            return None
        if mod.running_mean is None or mod.running_var is None:
            raise ValueError(
                f"BatchNorm2d {path!r} has track_running_stats=False: it normalises by each "
                "batch's own statistics, so it adds no fixed bias for FullGrad to read; explain "
                "a model whose batch normalisations keep running statistics"
            )
        scale = 1.0 / torch.sqrt(mod.running_var.double() + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight.double()
        bias = -mod.running_mean.double() * scale
        if mod.bias is not None:
            bias = bias + mod.bias.double()
        return bias.detach().cpu().numpy(), "linear"


_OTHER_ACTIVATIONS = {"GELU", "SiLU", "Hardswish", "Mish", "ELU", "LeakyReLU", "PReLU", "Tanh",
                      "Sigmoid", "Softplus", "SELU", "CELU", "GELUActivation", "QuickGELUActivation"}

_ROLES = {"mean": "global_pool", "adaptive_avg_pool2d": "global_pool", "Linear": "dense",
          **dict.fromkeys(("flatten", "Flatten", "Dropout", "view", "reshape", "squeeze"), "pass"),
          **dict.fromkeys(("Softmax", "softmax", "Sigmoid", "sigmoid", "LogSoftmax", "log_softmax"),
                          "activation")}

# The fx trace and shape propagation of each traced module (one forward pass at batch 1, and
# as long again for the trace on a model like EfficientNet-Lite0), kept between explain calls
# for as long as the module lives: explain builds a new adapter each time.
_TRACES: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
#: the trace key at which torch.export failed, per module (the run-order fallback follows)
_NOT_EXPORTABLE: weakref.WeakKeyDictionary[Any, _TraceKey] = weakref.WeakKeyDictionary()


class _TraceKey:
    """What a kept trace depends on: the input shapes (for the propagated shapes), the module
    tree, the class's ``forward`` and every module's public settings of plain types (a flag
    ``forward`` branches on, a number it reads: a trace freezes both). ``training`` is left
    out: explaining runs in eval mode whatever the flags.

    :meth:`matches` checks it against an adapter's module on every ``explain`` (each makes a
    new adapter), in C: each module's children (by name and identity), its attribute names in
    order (one added or removed is seen there), the values of its plain settings by one
    ``itemgetter``, and whether a public attribute that was not a plain setting has become one.
    On EfficientNet-Lite0's 186 modules that takes 0.4 ms after the model's run has emptied the
    processor's caches (0.5 ms as a Python loop over the modules), about 2% of a forward pass
    at batch 1."""

    __slots__ = ("shapes", "forward", "names", "below", "attrs", "children", "getters", "settings", "others")

    def __init__(self, adapter: "TorchAdapter") -> None:
        mods = adapter._modules
        self.shapes = _example_shapes(adapter)
        self.forward = type(adapter.model).forward
        self.names = tuple(mods)
        # the modules below the root, held (the root is the key of the kept trace: held here,
        # it would never be let go); each module's children are compared by identity
        self.below = tuple(mods.values())[1:]
        dicts = [m.__dict__ for m in mods.values()]
        # every module's attribute names in order, one tuple for all (an attribute deleted and
        # set again reads as a change: a new trace, never a stale one); each module's children
        self.attrs = _names_of(dicts)
        self.children = _children_of(dicts)
        found = [_module_settings(d) for d in dicts]
        self.getters = [f[0] for f in found]
        self.settings = [f[1] for f in found]
        #: (module position, its public attributes that were not plain settings), where any
        self.others = [(i, f[2]) for i, f in enumerate(found) if f[2]]

    def matches(self, adapter: "TorchAdapter") -> bool:
        """Whether the adapter's module is the one the trace was read from, unchanged; where it
        is, the adapter takes the modules by path from here (no ``named_modules`` walk): the
        same children under every module, from the root down, give the same walk. Each check
        is one pass over every module's ``__dict__`` by ``map`` (C), not a Python loop."""
        root = adapter.model
        if self.shapes != _example_shapes(adapter) or type(root).forward != self.forward:
            return False
        mods = (root, *self.below)
        try:
            dicts = list(map(vars, mods))
            if (_names_of(dicts) != self.attrs or _children_of(dicts) != self.children
                    or read_each(self.getters, dicts) != self.settings):
                return False
            if any(is_plain_setting(dicts[i][k]) for i, keys in self.others for k in keys):
                return False
        except Exception:  # a value whose == gives no bool (a tensor set where a number was)
            return False
        if adapter._module_paths is None:
            adapter._module_paths = dict(zip(self.names, mods))
        return True


def _names_of(dicts: list[dict[str, Any]]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """How many attributes each module has, and all their names in order, from the modules'
    ``__dict__``: two flat tuples are read and compared faster than one set per module (the
    check runs after the model's run has emptied the processor's caches)."""
    return tuple(map(len, dicts)), tuple(itertools.chain.from_iterable(dicts))


def _children_of(dicts: list[dict[str, Any]]) -> tuple[tuple[int, ...], tuple[tuple[str, Any], ...]]:
    """How many children each module has, and all their ``(name, child)`` pairs in order."""
    below = list(map(_MODULES_OF, dicts))
    return tuple(map(len, below)), tuple(itertools.chain.from_iterable(map(dict.items, below)))


_MODULES_OF = operator.itemgetter("_modules")


def _module_settings(attrs: dict[str, Any]) -> tuple[Callable[[Any], tuple[Any, ...]], tuple[Any, ...],
                                                      tuple[str, ...]]:
    """``(getter of the plain settings, their values, the other public attributes)`` of one
    module's ``__dict__``."""
    public = [k for k in attrs if k[0] != "_" and k != "training"]
    plain = [k for k in public if is_plain_setting(attrs[k])]
    get = values_getter(plain)
    return get, get(attrs), tuple(k for k in public if k not in plain)


def _trace(module: Any) -> Any:
    """``torch.fx.symbolic_trace(module)``, with parameters and buffers found by identity in
    one dict: fx's own tracer looks each one that ``forward`` reads as an attribute
    (``F.conv2d(x, self.weight)`` in a custom convolution) up by walking every parameter of
    the model, which was a third of tracing EfficientNet-Lite0 (49 reads of 74 parameters,
    each walk through 186 modules). The graph is the same: each tensor gets the name fx would
    give it, the first name under which ``named_parameters``/``named_buffers`` list it."""
    import torch

    class Tracer(torch.fx.Tracer):  # type: ignore[misc]
        def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
            if self.param_shapes_constant or not isinstance(attr_val, torch.Tensor):
                return super().getattr(attr, attr_val, parameter_proxy_cache)
            if isinstance(attr_val, torch.nn.Parameter):
                name = params.get(id(attr_val))
                if name is not None:
                    return self._proxy(name, parameter_proxy_cache)
            if self.proxy_buffer_attributes:
                name = buffers.get(id(attr_val))
                if name is not None:
                    return self._proxy(name, parameter_proxy_cache)
            return attr_val

        def _proxy(self, name: str, cache: dict[str, Any]) -> Any:
            if name not in cache:
                cache[name] = self.create_proxy("get_attr", name, (), {})
            return cache[name]

    # each tensor once, under its first name (named_parameters/named_buffers leave out repeats)
    params = {id(t): name for name, t in module.named_parameters()}
    buffers = {id(t): name for name, t in module.named_buffers()}
    tracer = Tracer()
    graph = tracer.trace(module)
    return torch.fx.GraphModule(tracer.root, graph, type(module).__name__)


class TensorShape(NamedTuple):
    """What :func:`_propagate_shapes` keeps of a node's tensor (``node.meta["tensor_meta"]``)."""

    shape: tuple[int, ...]


def _propagate_shapes(gm: Any, tensors: Sequence[Any]) -> None:
    """Run ``gm`` node by node on ``tensors`` and give each node that yields tensors their
    shapes, in ``node.meta["tensor_meta"]`` (a :class:`TensorShape`, or a tuple of them), as
    ``torch.fx.passes.shape_prop.ShapeProp`` would with only the shapes. ShapeProp's first
    node imports ``torch.fx.experimental.symbolic_shapes`` and with it sympy: 0.7 s of a
    first ``explain`` of 2 s on EfficientNet-Lite0, for fake tensors camlens never passes; it
    also reads each tensor's strides and memory format, which camlens does not use."""
    import torch
    from torch.fx.node import map_aggregate

    class Shapes(torch.fx.Interpreter):  # type: ignore[misc]
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            found = False

            def shape_of(obj: Any) -> Any:
                nonlocal found
                if isinstance(obj, torch.Tensor):
                    found = True
                    return TensorShape(tuple(obj.shape))
                return obj

            meta = map_aggregate(result, shape_of)
            if found:
                n.meta["tensor_meta"] = meta
            return result

    Shapes(gm).run(*tensors)


def _contiguous(a: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(a)``, the channels-first to channels-last copy made by torch,
    which makes it 2-4x faster than numpy (0.05 ms against 0.2 ms for one 224x224 image)."""
    import torch

    if a.flags.c_contiguous or not a.flags.writeable or any(s < 0 for s in a.strides):
        return np.ascontiguousarray(a)
    return torch.from_numpy(a).contiguous().numpy()


def _example_shapes(adapter: "TorchAdapter") -> tuple[Any, ...]:
    return tuple(a.shape[1:] for a in adapter._example or [])


def _triton_would_crash() -> bool:
    """Whether torch.export would load triton into a process that has TensorFlow loaded: triton
    loaded after TensorFlow crashes the interpreter (a segmentation fault, not an exception)."""
    import importlib.util

    if "tensorflow" not in sys.modules or "triton" in sys.modules:
        return False
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _quiet_logs() -> Any:
    """torch.export logs the whole graph when it meets a data-dependent branch; a failed
    export is expected here (the run-order fallback follows, with its own warning)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch.export",
                                               "torch._export", "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def clear_trace_cache() -> None:
    """Forget every kept fx trace (after changing what a module's ``forward`` does without
    changing its submodules)."""
    _TRACES.clear()
    _NOT_EXPORTABLE.clear()


def _module_scopes(node: Any) -> list[tuple[str, str, int]]:
    """``(scope key, module path, call number)`` of each module an fx node was traced inside,
    outermost first (fx keys the k-th call of a module ``path@k``)."""
    out = []
    for key, value in (node.meta.get("nn_module_stack") or {}).items():
        path = value[0] if isinstance(value, tuple) else value
        if isinstance(path, str) and path:
            k = str(key).partition("@")[2]
            out.append((str(key), path, int(k) if k.isdigit() else 0))
    return out


def _module_prefixes(node: Any) -> list[str]:
    return [path for _, path, _ in _module_scopes(node)]


def _record_fields(name: str, arg: Any, ids: dict[str, int]) -> list[tuple[str, Any]]:
    """The tensor nodes a traced output holds: the node itself, or, for an output record built
    in ``forward()`` (a dataclass), its fields, named as at run time."""
    if not hasattr(arg, "name") or arg.name in ids:
        return [(name, arg)]
    target = getattr(arg, "target", None)
    if getattr(arg, "op", "") == "call_function" and dataclasses.is_dataclass(target):
        fields = [f.name for f in dataclasses.fields(target)]
        out: list[tuple[str, Any]] = []
        for field, value in [*zip(fields, arg.args), *arg.kwargs.items()]:
            if hasattr(value, "name"):
                out.extend(_record_fields(field if name == "output" else f"{name}.{field}", value, ids))
        return out
    raise ValueError(
        f"the module's output {name!r} is {getattr(target, '__name__', target)!r}, not a tensor; "
        "camlens reads tensors and tuples, dicts and dataclasses of them: return those"
    )


def _scored(out: Any, target: Target, batch: int) -> tuple[list[Any], Any, list[str]]:
    """The module's flattened outputs, the target's scores on them and the outputs' names as
    this run gives them (a detector returns one dict per image: ``0.boxes``, ``1.boxes``...),
    for ``batch`` input samples."""
    pairs = _flatten_output_arg(out)
    outs, names = [o for _, o in pairs], [n for n, _ in pairs]
    return outs, scores_of(target, outs, names, TorchOps, batch), names


def _flatten_output_arg(arg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(arg, (list, tuple)):
        out: list[tuple[str, Any]] = []
        for i, a in enumerate(arg):
            out.extend(_flatten_output_arg(a, f"{prefix}{i}."))
        return out
    if isinstance(arg, dict):
        out = []
        for k, a in arg.items():
            out.extend(_flatten_output_arg(a, f"{prefix}{k}."))
        return out
    if dataclasses.is_dataclass(arg) and not isinstance(arg, type):  # an output record
        out = []
        for f in dataclasses.fields(arg):
            value = getattr(arg, f.name)
            if value is not None:  # an unset field (no loss without labels)
                out.extend(_flatten_output_arg(value, f"{prefix}{f.name}."))
        return out
    return [(prefix.rstrip(".") or "output", arg)]


