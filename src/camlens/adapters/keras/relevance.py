"""LRP's layer rules on a Keras Functional or Sequential model, in ``keras.ops`` only (so one
code serves TensorFlow, JAX and torch): instance-level ``call``s set while the input relevance
is taken, put back by :class:`~camlens.adapters.keras.patches.instance_attrs`.

The same modified gradient as the torch adapter's (:mod:`camlens.adapters.torch.relevance`):
a linear layer returns ``z + sum_i (h_i k_i - stop(h_i k_i))``. The first linear layer's input
goes through two probes: ``stop(a) + z1`` feeds the terms proportional to the input, ``1 + z2``
times a constant the others (flat, w^2, z^B's bounds); the input relevance is
``a * dS/dz1 + dS/dz2``.

The calls are written to be traced: the adapter sets them inside a ``tf.function`` or
``jax.jit`` program (``adapter._lrp_run``, ``adapter._rescale_run``), so nothing here may ask a
tensor's value. What torch asks at run time (is a layer's input non-negative?) is read from the
graph instead (:func:`nonnegative_inputs`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ...rules import ArrayOps, LayerRules, linear_terms

__all__ = ["lrp_calls", "rescale_calls", "nonnegative_inputs", "PROBES"]

#: the probe keys of the first linear layer's input
PROBES = (("lrp", 0), ("lrp", 1))

_CONV = ("Conv1D", "Conv2D", "Conv3D")
_PLAIN = ("InputLayer", "Flatten", "Reshape", "Dropout", "SpatialDropout2D", "MaxPooling1D", "MaxPooling2D",
          "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
          "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
          "GlobalMaxPooling3D", "Add", "Subtract", "Average", "Concatenate", "ZeroPadding2D", "Cropping2D",
          "Rescaling", "Identity", "Permute")
_PASS = ("LeakyReLU", "ELU", "PReLU")
_SQUASHING = ("softmax", "log_softmax")


#: layers whose output is non-negative when every input is: they move, pick or average values
_KEEPS_SIGN = ("Flatten", "Reshape", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
               "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
               "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
               "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Add", "Average", "Maximum",
               "Concatenate", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
               "Cropping3D", "Identity", "Permute", "UpSampling1D", "UpSampling2D", "UpSampling3D")
#: activations whose output is never negative
_NONNEGATIVE = ("relu", "relu6", "sigmoid", "hard_sigmoid", "softplus")


def _gives_nonnegative(op: Any, inputs: list[bool]) -> bool:
    kind = type(op).__name__
    if kind == "ReLU":
        return not op.negative_slope and op.threshold >= 0 and (op.max_value is None or op.max_value >= 0)
    if kind == "Activation" or kind in _CONV or kind in ("Dense", "DepthwiseConv2D"):
        # a fused activation: the rules keep the forward value, so its sign holds
        return _act_name(op) in _NONNEGATIVE
    return kind in _KEEPS_SIGN and bool(inputs) and all(inputs)


def nonnegative_inputs(nodes: Sequence[Any], op_of: Callable[[int], Any]) -> set[int]:
    """The ids of the layers whose input is non-negative at every call, read from the graph
    (``nodes`` in graph order, ``op_of(node id)`` the layer): an input straight from a ReLU
    (a ReLU layer, ``Activation("relu")``, a layer with ``activation="relu"``), or through
    layers that keep the sign (pooling, padding, flattening, sums of such inputs). LRP then
    drops the terms of ``a-``, which are zero (z+ runs one convolution less, alpha-beta and
    gamma two instead of four), as the torch adapter decides at run time from the values."""
    sign: dict[int, bool] = {}
    verdict: dict[int, bool] = {}
    for node in nodes:
        if node.is_input:
            sign[node.id] = False
            continue
        op = op_of(node.id)
        ins = [sign.get(p, False) for p in node.inputs]
        verdict[id(op)] = verdict.get(id(op), True) and bool(ins) and all(ins)
        sign[node.id] = _gives_nonnegative(op, ins)
    return {k for k, v in verdict.items() if v}


def _stab(d: Any, eps: float) -> Any:
    import keras

    ops = keras.ops
    return d + eps * (ops.cast(d >= 0, d.dtype) * 2 - 1)


def _uncovered(name: str, kind: str) -> str:
    return (
        f"lrp: no relevance rule covers layer {name!r} ({kind}); lrp covers Dense, Conv (grouped too), "
        "DepthwiseConv2D, BatchNormalization, activations, pooling, Flatten, Dropout and Add. Explain this model with "
        "a gradient method (method='integratedgradients' or 'saliency') or a CAM, or replace the "
        "layer. A layer whose plain gradient is right (it only moves values, or is linear without "
        f"bias) may be named: LRP(plain_layers=[{name!r}])"
    )


def _act_name(layer: Any) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def _pass(a: Any, z: Any, eps: float = 1e-6) -> Any:
    """Relevance passed on unchanged: ``R_a = R``, in gradient form."""
    import keras

    ops = keras.ops
    k = ops.stop_gradient(z / _stab(ops.stop_gradient(a), eps))
    return ops.stop_gradient(z) + a * k - ops.stop_gradient(a * k)


def _activate(layer: Any, z: Any) -> Any:
    """The layer's fused activation on ``z``: ReLU by its gradient, others passing relevance."""
    import keras

    name = _act_name(layer)
    if name in ("", "linear"):
        return z
    if name in _SQUASHING:
        raise ValueError(f"lrp explains a logit, not a probability: layer {layer.name!r} ends in {name}; explain "
                         "target=camlens.targets.Logit(k) (its final softmax skipped)")
    if name == "relu":
        return keras.ops.relu(z)
    return _pass(z, layer.activation(z))


def lrp_calls(ops_: Sequence[Any], rules: LayerRules, state: dict, skipped: Sequence[Any],
              nonnegative: set[int] = frozenset()) -> list[tuple[Any, str, Any]]:  # type: ignore[assignment]
    """The ``(layer, "call", fn)`` changes that put ``rules`` on the model's layers. ``state``:
    ``make_probe`` set by the caller per run; ``acts`` filled with the first layer's probes.
    ``nonnegative``: ids of the layers whose input is never negative (:func:`nonnegative_inputs`)."""
    import keras

    ops = keras.ops
    skip = {id(s) for s in skipped}
    layers: dict[int, Any] = {}
    for op in ops_:
        layers.setdefault(id(op), op)
    kinds: dict[str, list[Any]] = {"linear": [], "bn": [], "relu": [], "pass": []}
    for op in layers.values():
        kind = type(op).__name__
        if kind in _CONV or kind in ("Dense", "DepthwiseConv2D"):
            kinds["linear"].append(op)
        elif kind == "BatchNormalization":
            kinds["bn"].append(op)
        elif kind == "ReLU":
            plain = not op.negative_slope and not op.threshold and op.max_value is None
            kinds["relu" if plain else "pass"].append(op)
        elif kind == "Activation":
            name = _act_name(op)
            if name in _SQUASHING + ("sigmoid",) and id(op) in skip:
                continue
            if name in _SQUASHING:
                raise ValueError(f"lrp explains a logit, not a probability: layer {op.name!r} is a {name}; "
                                 "explain target=camlens.targets.Logit(k) (its final softmax skipped)")
            kinds["relu" if name == "relu" else "pass"].append(op)
        elif kind == "Softmax":
            if id(op) not in skip:
                raise ValueError(f"lrp explains a logit, not a probability: layer {op.name!r} is a Softmax; "
                                 "explain target=camlens.targets.Logit(k) (its final softmax skipped)")
        elif kind in _PASS:
            kinds["pass"].append(op)
        elif kind in _PLAIN or op.name in rules.plain:
            pass
        else:
            raise ValueError(_uncovered(op.name, kind))
    if not kinds["linear"]:
        raise ValueError("lrp: the model has no Dense or convolution layer to propagate relevance through")

    merged: dict[int, Any] = {}
    bn_ids = {id(b) for b in kinds["bn"]}
    for op in kinds["linear"]:
        outs = getattr(op, "_outbound_nodes", [])
        if _act_name(op) in ("", "linear") and len(outs) == 1 and id(outs[0].operation) in bn_ids:
            merged[id(op)] = outs[0].operation
    merged_bns = {id(b) for b in merged.values()}

    changes: list[tuple[Any, str, Any]] = []
    for op in kinds["linear"]:
        changes.append((op, "call", _linear_call(op, merged.get(id(op)), rules, state, id(op) in nonnegative)))
    for bn in kinds["bn"]:
        if id(bn) in merged_bns:
            changes.append((bn, "call", lambda x, *a, **k: x))
        else:
            changes.append((bn, "call", lambda x, *a, __bn=bn, **k: _pass(x, type(__bn).call(__bn, x, training=False))))
    for op in kinds["pass"]:
        changes.append((op, "call", lambda x, *a, __op=op, **k: _pass(x, type(__op).call(__op, x))))
    return changes


def _params(layer: Any, bn: Any) -> tuple[Any, Any]:
    import keras

    ops = keras.ops
    w = ops.convert_to_tensor(layer.kernel)
    out = w.shape[-1] if type(layer).__name__ != "DepthwiseConv2D" else w.shape[-2] * w.shape[-1]
    b = ops.convert_to_tensor(layer.bias) if getattr(layer, "bias", None) is not None else ops.zeros((out,), w.dtype)
    if bn is None:
        return w, b
    try:
        rank = len(bn.input.shape)
    except (AttributeError, ValueError):  # a layer called more than once has no one input
        rank = None
    if bn.axis != -1 and (rank is None or bn.axis != rank - 1):
        raise ValueError(f"lrp: BatchNormalization {bn.name!r} normalises axis {bn.axis}, not the channels "
                         "last; explain a channels-last model")
    s = 1.0 / ops.sqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.scale:
        s = s * ops.convert_to_tensor(bn.gamma)
    shift = ops.convert_to_tensor(bn.beta) if bn.center else ops.zeros_like(s)
    ws = ops.reshape(s, w.shape[-2:]) if type(layer).__name__ == "DepthwiseConv2D" else s
    return w * ws, (b - ops.convert_to_tensor(bn.moving_mean)) * s + shift


def _apply(layer: Any, x: Any, w: Any, b: Any) -> Any:
    import keras

    ops = keras.ops
    kind = type(layer).__name__
    if kind == "Dense":
        return ops.matmul(x, w) + b
    if kind == "DepthwiseConv2D":
        y = ops.depthwise_conv(x, w, strides=layer.strides, padding=layer.padding,
                               data_format=layer.data_format, dilation_rate=layer.dilation_rate)
    else:
        y = layer.convolution_op(x, w)  # grouped convolutions too: the kernel's shape says the groups
    if layer.data_format == "channels_first":
        return y + ops.reshape(b, (1, -1) + (1,) * (len(y.shape) - 2))
    return y + b


_OPS: dict[bool, ArrayOps] = {}


def _ops(nonnegative: bool) -> ArrayOps:
    """The array functions of the rules; ``nonnegative``: the layer's input is never negative,
    as the graph shows (a traced call cannot ask the values)."""
    import keras

    if nonnegative in _OPS:
        return _OPS[nonnegative]

    ops = keras.ops

    def bounds(a: Any) -> tuple[Any, Any]:
        stopped = ops.stop_gradient(a)
        return ops.min(stopped), ops.max(stopped)

    _OPS[nonnegative] = ArrayOps(pos=lambda t: ops.maximum(t, 0.0), neg=lambda t: ops.minimum(t, 0.0),
                                 cast=lambda mask, like: ops.cast(mask, like.dtype), stab=_stab,
                                 zeros_like=ops.zeros_like, ones_like=ops.ones_like, bounds=bounds,
                                 nonnegative=lambda a: nonnegative)
    return _OPS[nonnegative]


def _linear_call(layer: Any, bn: Any, rules: LayerRules, state: dict, nonnegative: bool) -> Callable[..., Any]:
    import keras

    ops = keras.ops
    own = rules.dense if type(layer).__name__ == "Dense" else rules.conv

    def call(a: Any, *args: Any, **kwargs: Any) -> Any:
        rule, const = own, None
        if "acts" not in state:
            make_probe = state["make_probe"]
            stopped = ops.stop_gradient(a)
            a = make_probe(PROBES[0], stopped)
            ones = make_probe(PROBES[1], ops.zeros_like(stopped)) + 1.0
            state["acts"] = {PROBES[0]: a, PROBES[1]: ones}
            const = lambda value: ones * value  # noqa: E731
            rule = rules.first or own
        w, b = _params(layer, bn)
        terms, coefficients, summed = linear_terms(rule, a, w, b, _ops(nonnegative), const)
        outs = [_apply(layer, t, tw, tb) for t, tw, tb in terms]
        if summed:  # the terms split the layer: its output is their sum, one convolution fewer
            z = ops.stop_gradient(outs[0])
            for o in outs[1:]:
                z = z + ops.stop_gradient(o)
        else:
            z = ops.stop_gradient(_apply(layer, a, w, b))
        ks = [ops.stop_gradient(k) for k in coefficients([ops.stop_gradient(o) for o in outs], z)]
        out = z
        for o, k in zip(outs, ks):
            out = out + (o * k - ops.stop_gradient(o * k))
        return _activate(layer, out)

    return call


# ------------------------------------------------------------------------------ DeepLIFT

def _rescaled(f: Callable[[Any], Any], a: Any, a0: Any) -> Any:
    """``f(a)`` whose gradient is DeepLIFT's multiplier ``(f(a) - f(a0)) / (a - a0)`` (the plain
    gradient where ``|a - a0| < 1e-10``)."""
    import keras

    ops = keras.ops
    z = f(a)
    z0 = ops.stop_gradient(f(a0))
    d = ops.stop_gradient(a) - a0
    small = ops.abs(d) < 1e-10
    ratio = (ops.stop_gradient(z) - z0) / ops.where(small, ops.ones_like(d), d)
    m = ops.stop_gradient(ops.where(small, ops.zeros_like(d), ratio))
    plain = ops.where(small, z - ops.stop_gradient(z), ops.zeros_like(z))
    return ops.stop_gradient(z) + (a * m - ops.stop_gradient(a * m)) + plain


def _through(a: Any, k: Any, at: Any) -> Any:
    """A tensor of ``at``'s value whose gradient reaches ``a`` times ``k``: a function of it is
    differentiated at ``at`` (a max pooling picks ``at``'s winners), the gradient lands on ``a``."""
    import keras

    ops = keras.ops
    return ops.stop_gradient(at) + (a * k - ops.stop_gradient(a * k))


def _pool_rescaled(pool: Callable[[Any], Any], a: Any, a0: Any) -> Any:
    """Max pooling under DeepLIFT's rescale rule, as captum 0.9: of a window's change
    ``z - z0``, the rise ``max(z, z0) - z0`` goes back through the max-pool gradient of the
    input run (to the input's winner), the rest ``z - max(z, z0)`` through that of the
    reference run (to the baseline's winner); each divided by the input's ``a - a0`` (the plain
    gradient where ``|a - a0| < 1e-10``). Summation to delta holds window by window."""
    import keras

    ops = keras.ops
    a_s = ops.stop_gradient(a)
    z = pool(a_s)
    z0 = ops.stop_gradient(pool(a0))
    top = ops.maximum(z, z0)
    d = a_s - a0
    small = ops.abs(d) < 1e-10
    k = ops.stop_gradient(ops.where(small, ops.zeros_like(d), 1.0 / ops.where(small, ops.ones_like(d), d)))
    rise, rest = ops.stop_gradient(top - z0), ops.stop_gradient(z - top)
    mine, theirs = pool(_through(a, k, a_s)), pool(_through(a, k, a0))
    plain = pool(_through(a, ops.stop_gradient(ops.cast(small, a.dtype)), a_s))
    return (z + (mine * rise - ops.stop_gradient(mine * rise)) + (theirs * rest - ops.stop_gradient(theirs * rest))
            + (plain - ops.stop_gradient(plain)))


def rescale_calls(ops_: Sequence[Any], state: dict, skipped: Sequence[Any],
                  plain: Sequence[str] = ()) -> list[tuple[Any, str, Any]]:
    """The changes that give every nonlinearity DeepLIFT's rescale rule. ``state["record"]``
    true: the run keeps each nonlinearity's input per call (the reference run); false: it
    rescales against them. ``state["used"]`` counts calls per layer (reset per run)."""
    skip = {id(s) for s in skipped}
    layers: dict[int, Any] = {}
    for op in ops_:
        layers.setdefault(id(op), op)
    changes: list[tuple[Any, str, Any]] = []

    def wrap(op: Any, f: Callable[[Any], Any], rescaled: Callable[..., Any] = _rescaled) -> Callable[..., Any]:
        def call(a: Any, *args: Any, **kwargs: Any) -> Any:
            refs = state.setdefault("ref", {}).setdefault(id(op), [])
            if state["record"]:
                refs.append(a)
                return f(a)
            i = state["used"].get(id(op), 0)
            state["used"][id(op)] = i + 1
            if i >= len(refs) or tuple(refs[i].shape) != tuple(a.shape):
                raise ValueError(f"deeplift: layer {op.name!r} ran differently on the input and on the baseline")
            return rescaled(f, a, refs[i])

        return call

    for op in layers.values():
        kind = type(op).__name__
        name = _act_name(op)
        if kind in _CONV or kind in ("Dense", "DepthwiseConv2D"):
            if name in ("", "linear") or (id(op) in skip and name in _SQUASHING + ("sigmoid",)):
                continue
            if name in _SQUASHING:
                raise ValueError(f"deeplift explains a logit, not a probability: layer {op.name!r} ends in {name}; "
                                 "explain target=camlens.targets.Logit(k)")
            changes.append((op, "activation", wrap(op, op.activation)))
        elif kind in ("ReLU", "LeakyReLU", "ELU", "PReLU") or (kind == "Activation" and name not in _SQUASHING):
            if kind == "Activation" and id(op) in skip and name == "sigmoid":
                continue
            changes.append((op, "call", wrap(op, lambda x, __op=op: type(__op).call(__op, x))))
        elif kind in ("Softmax", "Activation"):
            if id(op) not in skip:
                raise ValueError(f"deeplift explains a logit, not a probability: layer {op.name!r} is a softmax; "
                                 "explain target=camlens.targets.Logit(k)")
        elif kind.startswith(("MaxPooling", "GlobalMaxPooling")):
            changes.append((op, "call", wrap(op, lambda x, __op=op: type(__op).call(__op, x), _pool_rescaled)))
        elif kind in _PLAIN or kind == "BatchNormalization" or op.name in plain:
            continue
        else:
            raise ValueError(_uncovered(op.name, kind).replace("lrp", "deeplift").replace("LRP(", "DeepLift("))
    return changes
