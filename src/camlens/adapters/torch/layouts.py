"""Which axis of a 4-D tensor inside a torch module holds the channels, read from the module.

A torch image tensor is ``(N, C, H, W)`` by convention, but many models turn their maps
channels-last inside ``forward()``: Swin (torchvision and timm) runs its blocks on ``(N, H, W,
C)`` maps, ConvNeXt blocks permute to ``(N, H, W, C)`` for a LayerNorm and two Linear layers
and back. Reading such a map as channels-first gives a wrong picture with no error, so the
layout of each 4-D value of the traced graph is inferred from what the graph does with it:

* the inputs are channels-first (the adapter's contract);
* convolution-style operations (``Conv2d``, ``BatchNorm2d``, pooling, ``LayerNorm2d``... any
  module whose class name ends in ``2d``, and their functions ``conv2d``, ``batch_norm``...)
  make and read channels-first maps;
* ``Linear``, ``LayerNorm`` and ``RMSNorm`` over the last axis make and read channels-last maps;
* ``permute``, ``transpose`` and ``movedim`` move the channel axis where they move the axis;
* other operations keep the layout of their 4-D inputs (activations, additions, padding,
  slicing, ``torch.roll``), except reshapes, which keep it only where the shape stays the same.

Evidence flows forward (from the inputs) and backward (a value a convolution reads is
channels-first) until nothing changes. A value left with no evidence, or with the channels on
axis 2, has no known layout: the adapter does not offer it as a map (see ``GraphNode.unusable``)
rather than guess.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["channel_axes", "module_axis"]

_CHANNELS_FIRST_FUNCTIONS = {
    "conv2d", "convolution", "_convolution", "conv_transpose2d", "batch_norm", "native_batch_norm",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "instance_norm",
    "group_norm", "native_group_norm", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool2d", "interpolate",
    "upsample_bilinear2d", "upsample_nearest2d", "upsample_bicubic2d", "pixel_shuffle",
    "pixel_unshuffle", "dropout2d", "feature_dropout", "local_response_norm", "lp_pool2d",
}
_LAST_AXIS_FUNCTIONS = {"linear", "layer_norm", "native_layer_norm", "rms_norm"}
_RESHAPES = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as", "expand",
    "expand_as", "squeeze", "unsqueeze", "unfold", "as_strided", "split", "chunk", "unbind",
}
_MOVES = {"permute", "transpose", "transpose_", "swapaxes", "movedim", "moveaxis"}


def module_axis(module: Any) -> int | None:
    """The channel axis a module's 4-D output has (and its 4-D input must have): 1 for
    convolution-style modules, 3 for Linear and last-axis norms, ``None`` when the module says
    nothing (activations, dropout, containers)."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return 3
    shape = getattr(module, "normalized_shape", None)
    name = type(module).__name__
    if name.lower().endswith("2d"):
        return 1
    if isinstance(module, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))):
        return 3 if shape is not None and len(shape) == 1 else None
    return None


def _op_name(node: Any) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return name.split(".")[0].lower()  # aten ops: "permute.default"


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shape = getattr(meta, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


def _ndim(node: Any) -> int | None:
    shape = _shape(node)
    return None if shape is None else len(shape)


def _dims(node: Any) -> list[int] | None:
    """The ``dims`` of a permute node, whichever way it was called."""
    args = list(node.args[1:])
    if "dims" in node.kwargs:
        args = [node.kwargs["dims"]]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    if len(args) == 4 and all(isinstance(a, int) for a in args):
        return [a % 4 for a in args]
    return None


def _moved(node: Any, name: str, axis: int, forward: bool) -> int | None:
    """Where ``axis`` of the input goes (``forward``) or came from, through a move node."""
    if name == "permute":
        dims = _dims(node)
        if dims is None or sorted(dims) != [0, 1, 2, 3]:
            return None
        return dims.index(axis) if forward else dims[axis]
    if name in ("transpose", "transpose_", "swapaxes"):
        pair = [a for a in node.args[1:3] if isinstance(a, int)]
        if len(pair) != 2:
            return None
        a, b = (p % 4 for p in pair)
        return b if axis == a else a if axis == b else axis
    if name in ("movedim", "moveaxis"):
        src, dst = node.args[1:3] if len(node.args) >= 3 else (None, None)
        if not isinstance(src, int) or not isinstance(dst, int):
            return None
        order = [0, 1, 2, 3]
        order.insert(dst % 4, order.pop(src % 4))  # output axis j holds input axis order[j]
        return order.index(axis) if forward else order[axis]
    return None


def _data_inputs(node: Any) -> list[Any]:
    """The node's 4-D tensor arguments (``all_input_nodes`` with a 4-D propagated shape)."""
    return [a for a in node.all_input_nodes if _ndim(a) == 4]


def channel_axes(graph_nodes: Sequence[Any], modules: dict[str, Any]) -> dict[str, int]:
    """``{fx node name: channel axis}`` for the 4-D values of an fx graph (its nodes in order)
    whose layout the graph shows (see the module docs); values not in the result have none."""
    nodes = [n for n in graph_nodes if _ndim(n) == 4 or n.op == "placeholder"]
    users: dict[str, list[Any]] = {}
    for n in graph_nodes:
        for a in n.all_input_nodes:
            users.setdefault(a.name, []).append(n)
    axis: dict[str, int] = {}

    def kind(n: Any) -> tuple[str, int | None]:
        """(operation name, the channel axis the operation fixes for its output and input)."""
        if n.op == "call_module":
            mod = modules.get(str(n.target))
            return type(mod).__name__.lower(), None if mod is None else module_axis(mod)
        name = _op_name(n)
        if name in _CHANNELS_FIRST_FUNCTIONS:
            return name, 1
        if name in _LAST_AXIS_FUNCTIONS:
            if name in ("layer_norm", "native_layer_norm", "rms_norm"):
                shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
                return name, 3 if isinstance(shape, (list, tuple)) and len(shape) == 1 else None
            return name, 3
        return name, None

    def forward_axis(n: Any) -> int | None:
        if n.op == "placeholder":
            return 1 if _ndim(n) == 4 else None
        name, fixed = kind(n)
        if fixed is not None:
            return fixed
        known = [a for a in _data_inputs(n) if a.name in axis]
        if not known:
            return None
        if name in _MOVES:
            src = n.all_input_nodes[0]
            return _moved(n, name, axis[src.name], True) if src.name in axis else None
        if name in _RESHAPES or (n.op == "call_module" and name in ("flatten", "unflatten")):
            src = n.all_input_nodes[0] if n.all_input_nodes else None
            same = src is not None and src.name in axis and _shape(src) == _shape(n)
            return axis[src.name] if same else None
        found = {axis[a.name] for a in known}
        return found.pop() if len(found) == 1 else None

    def backward_axis(n: Any) -> int | None:
        for u in users.get(n.name, []):
            if not u.all_input_nodes or u.all_input_nodes[0] is not n:
                continue  # only the value an operation works on, not its weights or masks
            name, fixed = kind(u)
            if fixed is not None:
                return fixed
            if name in _MOVES and u.name in axis:
                return _moved(u, name, axis[u.name], False)
            if (name not in _RESHAPES and name not in _MOVES and _ndim(u) == 4
                    and u.name in axis and _shape(u) == _shape(n)):
                return axis[u.name]
        return None

    for _ in range(4):  # forward, then backward, until nothing changes
        changed = False
        for n in nodes:
            if n.name not in axis and _ndim(n) == 4:
                found = forward_axis(n)
                if found is not None:
                    axis[n.name] = found
                    changed = True
        for n in reversed(nodes):
            if n.name not in axis and _ndim(n) == 4:
                found = backward_axis(n)
                if found is not None:
                    axis[n.name] = found
                    changed = True
        if not changed:
            break
    return axis
