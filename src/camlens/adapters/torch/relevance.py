"""LRP's layer rules and DeepLIFT's rescale rule on a native torch module, as instance-level
``forward``s set while the input relevance is taken (each put back by
:class:`~camlens.adapters.torch.patches.instance_forwards`).

Both are a modified gradient: a layer's output keeps its forward value and its backward is
replaced. For LRP a linear layer ``z = W a + b`` under a rule with terms ``h_i(a)`` (the layer
with modified weights on modified inputs) returns ``z + sum_i (h_i k_i - stop(h_i k_i))`` with
``k_i`` the rule's coefficients from the forward values (``z / s(denominator)``): the
backward is ``sum_i J_i^T (k_i dy)``, and with ``R = z * dy`` the relevance of the outputs it
is the rule's ``R_a / a``. Relevance at a value is then ``value * gradient``; at the first
linear layer the input is multiplied by ``m = 1`` and ``dS/dm`` is the input relevance (rules
like flat, whose input relevance is not proportional to the input, act on ``m`` directly).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ...rules import ArrayOps, LayerRules, Rescale, linear_terms

__all__ = ["lrp_forwards", "rescale_forwards", "check_functions"]

# the names of modules by their role; checked by class name so that ``import camlens`` stays light
_ACTIVATIONS = ("ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softplus", "Hardswish",
                "Hardsigmoid", "Mish", "SELU", "CELU", "Hardtanh")
_PLAIN = ("AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
          "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "Identity")
_MAXPOOL = ("MaxPool1d", "MaxPool2d", "MaxPool3d")
_ADAPTIVE_MAX = ("AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d")

#: functions a traced ``forward`` may call: linear in their tensor inputs (a plain gradient is
#: then the epsilon rule without stabilizer), or moving values around
_LINEAR_FUNCTIONS = {"add", "iadd", "sub", "isub", "neg", "flatten", "reshape", "view", "getitem", "getattr",
                     "size", "cat", "concat", "stack", "permute", "transpose", "contiguous", "squeeze",
                     "unsqueeze", "mean", "sum", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                     "adaptive_avg_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "dropout", "chunk",
                     "split", "expand", "clone", "float", "to", "type_as", "dim"}


def _kinds(model: Any, method: str, skipped: Sequence[Any], traced: bool,
           plain: Sequence[str] = ()) -> dict[str, list[tuple[str, Any]]]:
    """The modules by role; a leaf module no rule covers is refused (one of the user's own
    without parameters only where no fx trace showed what it computes)."""
    import torch

    skip = {id(m) for m in skipped}

    kinds: dict[str, list[tuple[str, Any]]] = {
        "linear": [], "bn": [], "relu": [], "activation": [], "plain": [], "maxpool": [], "adaptivemax": []
    }
    for name, m in model.named_modules():
        if id(m) in skip or name in plain:
            continue  # a final softmax a Logit target skips: its output is replaced by its input
        if type(m).__name__ in ("Softmax", "LogSoftmax", "Softmin") and type(m).__module__.startswith("torch.nn"):
            raise ValueError(
                f"{method} explains a logit, not a probability: the model has {type(m).__name__} "
                f"{name!r}; explain target=camlens.targets.Logit(k) (its final softmax skipped), or a "
                "model that outputs logits"
            )
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            kinds["linear"].append((name, m))
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            kinds["bn"].append((name, m))
        elif type(m) is torch.nn.ReLU:
            kinds["relu"].append((name, m))
        elif type(m).__name__ in _ACTIVATIONS and type(m).__module__.startswith("torch.nn"):
            kinds["activation"].append((name, m))
        elif type(m).__name__ in _PLAIN and type(m).__module__.startswith("torch.nn"):
            kinds["plain"].append((name, m))
        elif type(m).__name__ in _MAXPOOL and type(m).__module__.startswith("torch.nn"):
            kinds["maxpool"].append((name, m))
        elif type(m).__name__ in _ADAPTIVE_MAX and type(m).__module__.startswith("torch.nn"):
            kinds["adaptivemax"].append((name, m))
        elif next(m.children(), None) is None and (any(True for _ in m.parameters(recurse=False))
                                                   or type(m).__module__.startswith("torch.nn") or not traced):
            raise ValueError(_uncovered(name, type(m).__name__, method))
    return kinds


_CLASS = {"lrp": "LRP", "deeplift": "DeepLift"}


def _uncovered(name: str, kind: str, method: str = "lrp") -> str:
    return (
        f"{method}: no relevance rule covers layer {name!r} ({kind}); {method} covers convolutions, "
        "Linear, BatchNorm, elementwise activations, pooling, Flatten, Dropout and residual sums. "
        "Explain this model with a gradient method (method='integratedgradients' or 'saliency') "
        "or a CAM, or replace the layer by covered ones"
        + f"; a layer whose plain gradient is right may be named: {_CLASS[method]}(plain_layers=[{name!r}])"
    )


def check_functions(gm: Any, method: str, allowed: set[str]) -> None:
    """Refuse a traced ``forward`` that calls a function no rule covers (``torch.sigmoid(x)``,
    ``x * y``, attention): its plain gradient would be silently taken as relevance."""
    import torch.fx

    if gm is None:
        from ..._args import warn

        warn(f"{method}: the module could not be traced (torch.fx), so functions its forward() calls "
             "(torch.sigmoid(x), x * y) are not checked against the rules: only its modules are",
             RuntimeWarning)
        return
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if name in allowed:
            continue
        if name in ("mul", "truediv", "imul", "itruediv") and sum(
            isinstance(a, torch.fx.Node) for a in node.args
        ) <= 1:
            continue  # scaling by a constant is linear
        raise ValueError(_uncovered(node.name, f"the function {name} called in forward()", method))


def _merge_pairs(model: Any, gm: Any, linear: Sequence[Any], bns: Sequence[Any]) -> dict[int, Any]:
    """``{id(linear layer): batch norm}`` for each batch norm whose input is that layer's output
    alone: the pair is one linear layer (zennit's canonizers merge them likewise)."""
    lin_ids = {id(m) for m in linear}
    bn_ids = {id(m) for m in bns}
    pairs: dict[int, Any] = {}
    if gm is not None:
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = model.get_submodule(node.target)
            if id(mod) not in bn_ids or not node.args:
                continue
            src = node.args[0]
            if getattr(src, "op", None) == "call_module" and len(src.users) == 1:
                prev = model.get_submodule(src.target)
                if id(prev) in lin_ids:
                    pairs[id(prev)] = mod
        return pairs
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    for prev, mod in zip(leaves, leaves[1:]):  # zennit's SequentialMergeBatchNorm: leaf order
        if id(prev) in lin_ids and id(mod) in bn_ids:
            pairs[id(prev)] = mod
    return pairs


def _stab(d: Any, eps: float) -> Any:
    import torch

    # three passes over d (not four for where(d >= 0, d + eps, d - eps)), the same values:
    # the sign's eps as d's dtype, then d added to it in place
    return torch.where(d >= 0, d.new_tensor(eps), d.new_tensor(-eps)).add_(d)


def _params(m: Any, bn: Any) -> tuple[Any, Any]:
    import torch

    w = m.weight
    b = m.bias if m.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if bn is None:
        return w, b
    if bn.running_var is None:
        raise ValueError("lrp: a BatchNorm without running statistics (track_running_stats=False) "
                         "cannot be merged into its convolution; explain a model with them")
    s = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(s)
    w = w * s.reshape(-1, *([1] * (w.dim() - 1)))
    return w, (b - bn.running_mean) * s + shift


_OPS: list[ArrayOps] = []


def _nonnegative(a: Any) -> bool:
    # one reduction (a sync, cheap beside the convolutions it saves); NaN compares False
    return a.numel() > 0 and bool(a.detach().min() >= 0)


def _ops() -> ArrayOps:
    import torch

    if _OPS:
        return _OPS[0]

    def bounds(a: Any) -> tuple[Any, Any]:
        # each sample's own (a batch is explained in one run, as its images one by one)
        with torch.no_grad():
            flat = a.reshape(a.shape[0], -1)
            shape = (a.shape[0],) + (1,) * (a.dim() - 1)
            return flat.amin(dim=1).reshape(shape), flat.amax(dim=1).reshape(shape)

    _OPS.append(ArrayOps(pos=lambda t: t.clamp(min=0), neg=lambda t: t.clamp(max=0),
                         cast=lambda mask, like: mask.to(like.dtype), stab=_stab, zeros_like=torch.zeros_like,
                         ones_like=torch.ones_like, bounds=bounds, nonnegative=_nonnegative))
    return _OPS[0]


_ROUTED: list[Any] = []


def _routed(z: Any, outs: Sequence[Any], ks: Sequence[Any]) -> Any:
    """The layer's value ``z`` (a fresh tensor outside the gradient) whose backward is
    ``sum_i k_i dy`` into ``outs[i]``: what ``z + sum_i (o_i k_i - stop(o_i k_i))`` gives, with
    no pass over the output forward and one multiplication per term back."""
    import torch

    if not _ROUTED:
        class Routed(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, box: Any, ks: Any, *outs: Any) -> Any:
                # z comes in a box, not as an input: an input returned as it is would be a view,
                # and an in-place ReLU after the layer could not modify it
                ctx.ks = ks
                return box[0]

            @staticmethod
            def backward(ctx: Any, dy: Any) -> Any:
                return (None, None, *(dy * k for k in ctx.ks))

        _ROUTED.append(Routed)
    return _ROUTED[0].apply([z], tuple(ks), *outs)


def _linear_call(m: Any) -> Callable[[Any, Any, Any], Any]:
    import torch

    if isinstance(m, torch.nn.Linear):
        return torch.nn.functional.linear
    return m._conv_forward


def _call(forward: Any, m: Any, a: Any) -> Any:
    """``forward(m, a)`` that leaves ``a`` as it was: an in-place activation (``ReLU(inplace=True)``)
    runs on a copy, since the rules read ``a`` afterwards."""
    return forward(m, a.clone() if getattr(m, "inplace", False) else a)


def _pass_forward(m: Any, eps: float = 1e-6) -> Callable[[Any], Any]:
    """Relevance passed on unchanged: ``R_a = R`` (zennit's Pass), in gradient form."""
    original = type(m).forward

    def forward(a: Any) -> Any:
        z = _call(original, m, a)
        k = (z / _stab(a, eps)).detach()
        return z.detach() + a * k - (a * k).detach()

    return forward


def lrp_forwards(model: Any, gm: Any, rules: LayerRules, state: dict,
                 skipped: Sequence[Any] = ()) -> list[tuple[Any, Any]]:
    """The ``(module, forward)`` pairs that put ``rules`` on ``model``; ``state["mult"]`` is set
    to the first linear layer's input multiplier (and ``state["shape"]`` its input's shape)
    when that layer runs."""
    import torch

    kinds = _kinds(model, "lrp", skipped, gm is not None, rules.plain)
    if kinds["linear"] == []:
        raise ValueError("lrp: the model has no convolution or Linear layer to propagate relevance through")
    check_functions(gm, "lrp", _LINEAR_FUNCTIONS | {"relu", "relu_", "max_pool1d", "max_pool2d", "max_pool3d",
                                                     "adaptive_max_pool2d"})
    pairs = _merge_pairs(model, gm, [m for _, m in kinds["linear"]], [m for _, m in kinds["bn"]])
    merged = {id(bn) for bn in pairs.values()}
    changes: list[tuple[Any, Any]] = []

    def linear_forward(m: Any) -> Callable[[Any], Any]:
        bn = pairs.get(id(m))
        original = type(m).forward
        call = _linear_call(m)
        own = rules.dense if isinstance(m, torch.nn.Linear) else rules.conv

        def forward(a: Any) -> Any:
            mult = None
            rule = own
            if state.get("mult") is None:
                mult = torch.ones_like(a, requires_grad=True)
                state["mult"], state["shape"] = mult, tuple(a.shape)
                a = a.detach() * mult
                rule = rules.first or own
            if rule.name == "epsilon":  # its one term is the layer itself: z's gradient times k
                z = original(m, a)
                if bn is not None:
                    z = type(bn).forward(bn, z)
                with torch.no_grad():
                    k = z / _stab(z, rule.stabilizer)
                if z.requires_grad:
                    z.register_hook(lambda g, __k=k: g * __k)
                return z
            with torch.no_grad():  # no weight gradient is wanted: the terms' weights are constants
                w, b = _params(m, bn)
            const = None if mult is None else (lambda value: mult * value)
            terms, coefficients, summed = linear_terms(rule, a, w, b, _ops(), const)
            outs = [call(t, tw, tb) for t, tw, tb in terms]
            with torch.no_grad():
                if summed:  # the terms split the layer: z is their sum, the layer need not run
                    z = None
                    for o in outs:
                        z = o.detach() if z is None else z + o.detach()
                else:
                    z = original(m, a)
                    if bn is not None:
                        z = type(bn).forward(bn, z)
                ks = coefficients([o.detach() for o in outs], z)
            return _routed(z, outs, ks)

        return forward

    for _, m in kinds["linear"]:
        changes.append((m, linear_forward(m)))
    for _, bn in kinds["bn"]:
        changes.append((bn, (lambda a: a) if id(bn) in merged else _pass_forward(bn)))
    for _, m in kinds["activation"]:
        changes.append((m, _pass_forward(m)))
    return changes


# ------------------------------------------------------------------------------ DeepLIFT

def rescale_forwards(model: Any, gm: Any, rule: Rescale, record: bool, state: dict,
                     skipped: Sequence[Any] = ()) -> list[tuple[Any, Any]]:
    """``record``: the forwards of the reference run (each nonlinearity's input and output kept
    per call, in ``state["ref"]``); else those of the explained run, whose nonlinearities pass
    back the rescaled gradient against the kept values."""
    import torch

    kinds = _kinds(model, "deeplift", skipped, gm is not None, rule.plain)
    check_functions(gm, "deeplift", _LINEAR_FUNCTIONS)
    if kinds["adaptivemax"]:
        raise ValueError(_uncovered(kinds["adaptivemax"][0][0], "adaptive max pooling", "deeplift"))
    changes: list[tuple[Any, Any]] = []
    refs: dict[int, list[Any]] = state.setdefault("ref", {})
    used: dict[int, int] = state.setdefault("used", {})

    def nonlinear(m: Any, pool: bool) -> Callable[[Any], Any]:
        original = type(m).forward

        def forward(a: Any) -> Any:
            if record:
                z = _call(original, m, a)
                refs.setdefault(id(m), []).append((a.detach(), z.detach()))
                return z
            if not pool:
                with torch.no_grad():  # the backward is the rule's: no graph of the module itself
                    z = _call(original, m, a)
            i = used.get(id(m), 0)
            used[id(m)] = i + 1
            try:
                a0, z0 = refs[id(m)][i]
            except (KeyError, IndexError):
                raise ValueError(f"deeplift: layer {type(m).__name__} ran more often on the input than on the "
                                 "baseline; the model's path must not depend on the input") from None
            if a0.shape != a.shape:
                raise ValueError("deeplift: the baseline run gave a different shape at "
                                 f"{type(m).__name__}: {tuple(a0.shape)} vs {tuple(a.shape)}")
            return _rescaled_pool(m, a, a0, z0) if pool else _rescaled_elementwise(m, a, z, a0, z0)

        return forward

    for _, m in kinds["relu"] + kinds["activation"]:
        changes.append((m, nonlinear(m, False)))
    for _, m in kinds["maxpool"]:
        changes.append((m, nonlinear(m, True)))
    return changes


_FN: list[Any] = []
_ELEMENTWISE: list[Any] = []


def _rescaled_elementwise(m: Any, a: Any, z: Any, a0: Any, z0: Any) -> Any:
    """``z`` whose backward is ``dy * (z - z0) / (a - a0)`` (the plain gradient where ``|a - a0|
    < 1e-10``): the differences are taken here, in the forward, so that the backward is two
    passes over ``dy`` and keeps two tensors, not the four values."""
    import torch

    if not _ELEMENTWISE:
        class RescaledElementwise(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, box: Any, a: Any, m: Any) -> Any:
                # z in a box, as in _routed: an in-place activation after this one may modify it
                z, num, safe, small = box
                ctx.num, ctx.safe, ctx.small, ctx.m = num, safe, small, m
                if small is not None:
                    ctx.save_for_backward(a)
                return z

            @staticmethod
            def backward(ctx: Any, dy: Any) -> Any:
                moved = dy * ctx.num / ctx.safe
                if ctx.small is None:
                    return None, moved, None
                (a,) = ctx.saved_tensors
                with torch.enable_grad():  # the plain gradient, only where the input did not move
                    a_ = a.detach().requires_grad_(True)
                    (plain,) = torch.autograd.grad(_call(type(ctx.m).forward, ctx.m, a_), [a_], dy)
                return None, torch.where(ctx.small, plain, moved), None

        _ELEMENTWISE.append(RescaledElementwise)
    with torch.no_grad():
        num = z - z0
        safe, small = _safe_delta(a, a0)
    return _ELEMENTWISE[0].apply([z, num, safe, small], a, m)


def _safe_delta(a: Any, a0: Any) -> tuple[Any, Any]:
    """``(a - a0 with 1 where it is below 1e-10 in size, that mask)``; the mask is ``None``
    where no element is that small (the common case: no ``where`` on the way back)."""
    import torch

    delta = a - a0
    small = delta.abs() < 1e-10
    if bool(small.any()):
        return torch.where(small, torch.ones_like(delta), delta), small
    return delta, None


def _rescaled_pool(m: Any, a: Any, a0: Any, z0: Any) -> Any:
    """Max pooling as captum's DeepLift: the rise of each window's maximum over the baseline's,
    ``dy * (max(z, z0) - z0)``, goes to the input's winner and ``dy * (z - max(z, z0))`` to the
    baseline's winner, divided by ``a - a0`` (the plain gradient where ``|a - a0| < 1e-10``).
    The winners and the two parts are found in the forward, once, with the pooled value."""
    import torch
    import torch.nn.functional as F

    if not _FN:
        class RescaledPool(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, box: Any, a: Any, m: Any) -> Any:
                z, ctx.pool = box
                if ctx.pool[-1] is not None:
                    ctx.save_for_backward(a)
                ctx.m = m
                return z

            @staticmethod
            def backward(ctx: Any, dy: Any) -> Any:
                unpool, idx, idx0, up, down, shape, safe, small = ctx.pool
                moved = unpool(dy * up, idx, ctx.m.kernel_size, ctx.m.stride, ctx.m.padding, shape)
                moved = moved + unpool(dy * down, idx0, ctx.m.kernel_size, ctx.m.stride, ctx.m.padding, shape)
                if small is None:
                    return None, moved / safe, None
                (a,) = ctx.saved_tensors
                return None, torch.where(small, _pool_gradient(ctx.m, a, idx, dy), moved / safe), None

        _FN.append(RescaledPool)
    dims = a.dim() - 2
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
    unpool = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[dims]
    with torch.no_grad():
        z, idx = pool(a, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
        _, idx0 = pool(a0, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
        top = torch.max(z, z0)
        up, down = top - z0, z - top
        safe, small = _safe_delta(a, a0)
    return _FN[0].apply([z, (unpool, idx, idx0, up, down, list(a.shape), safe, small)], a, m)


def _pool_gradient(m: Any, a: Any, idx: Any, dy: Any) -> Any:
    """The plain gradient of max pooling ``m`` at ``a`` (winners ``idx``): what autograd gives."""
    import torch

    if a.dim() == 4:  # autograd's own backward, without running the pooling again
        two = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
        return torch.ops.aten.max_pool2d_with_indices_backward(
            dy, a, two(m.kernel_size), two(m.stride if m.stride is not None else m.kernel_size),
            two(m.padding), two(m.dilation), m.ceil_mode, idx)
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(True)
        (plain,) = torch.autograd.grad(_call(type(m).forward, m, a_), [a_], dy)
    return plain
