"""Gradient rules for ReLUs: what a pixel method asks the adapters to apply while they take
input gradients (Guided Backpropagation's rule is one; a new rule is a new object here or in a
method's own file, not adapter code).

A rule says which positions of the incoming gradient ``dy`` a ReLU passes back, from its
input ``x`` and ``dy``, with elementwise comparisons and ``&`` / ``|`` only, so that the same
function runs on TensorFlow, JAX and torch tensors. The adapters keep the ReLU's forward value
and its clip (ReLU6 passes nothing back above 6) and multiply ``dy`` by the rule's gate.
Rules compare by identity: a compiled program is kept per rule object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from ._args import warn

__all__ = ["ReluRule", "GUIDED", "no_relu_warning", "LinearRule", "ArrayOps", "linear_terms", "LayerRules",
           "composite", "COMPOSITES", "Rescale"]


@dataclass(frozen=True, eq=False)
class ReluRule:
    name: str
    #: ``passes(x, dy) -> bool tensor``: where the ReLU passes ``dy`` back
    passes: Callable[[Any, Any], Any]

    def __repr__(self) -> str:
        return f"ReluRule({self.name!r})"


#: Guided Backpropagation (Springenberg et al., "Striving for Simplicity", 2015): only positive
#: gradients, at positive inputs
GUIDED = ReluRule("guided", lambda x, dy: (x > 0) & (dy > 0))


def no_relu_warning(rule: ReluRule, others: Sequence[str] = ()) -> None:
    """Warn that ``rule`` has no ReLU to act on: the gradient it gives is the plain one."""
    seen = f" (its activations: {', '.join(others)})" if others else ""
    warn(
        f"the model has no ReLU or ReLU6{seen}: the {rule.name} rule changes nothing, so this "
        "map is the plain input gradient (saliency), not a guided one",
        RuntimeWarning
    )


# ---------------------------------------------------------------------------------------------
# Relevance rules: LRP's per-layer rules and DeepLIFT's reference run. The adapters apply them
# to the model's linear layers (convolutions, dense, batch norm merged into the convolution
# before it) while they take input gradients; what each rule computes is said here, once.

#: the LRP rules a linear layer may get (Montavon et al., "Layer-Wise Relevance Propagation:
#: An Overview", 2019; parameters named as in zennit)
LRP_RULES = ("epsilon", "gamma", "alphabeta", "zplus", "flat", "wsquare", "zbox")


@dataclass(frozen=True)
class LinearRule:
    """One LRP rule for a linear layer ``z = W a + b``; ``R`` the relevance of its outputs, ``s(d)
    = d + stabilizer * sign(d)`` (sign(0) = 1):

    - ``epsilon``: ``R_a = a * W^T (R / s(z))`` (``stabilizer`` is the epsilon)
    - ``zplus``: ``R_a = a+ W+^T (R/s(d)) + a- W-^T (R/s(d))``, ``d = W+ a+ + b+ + W- a-``
    - ``alphabeta``: ``alpha`` times the positive part (``zplus``) ``- beta`` times the negative
      part (``W- a+ + b- + W+ a-``), each divided by its own stabilized sum
    - ``gamma``: ``W + gamma W+`` on the contributions of the output's sign, as zennit 0.5.1
    - ``flat``: ``R_a = 1^T (R / s(1^T 1))``: relevance spread evenly over the receptive field
    - ``wsquare``: ``R_a = (W^2)^T (R / s(W^2 1 + b^2))``
    - ``zbox``: ``R_a = a W^T q - low W+^T q - high W-^T q``, ``q = R / s(z - W+ low - W- high)``,
      for inputs bounded by ``[low, high]`` (an input layer rule)
    """

    name: str
    stabilizer: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.name not in LRP_RULES:
            raise ValueError(f"unknown LRP rule {self.name!r}; choose one of {', '.join(LRP_RULES)}")
        conserving = self.alpha >= 0 and self.beta >= 0 and abs(self.alpha - self.beta - 1) < 1e-9
        if self.name == "alphabeta" and not conserving:
            raise ValueError(
                f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1 (conservation); got "
                f"alpha={self.alpha}, beta={self.beta} (e.g. alpha=2, beta=1 or alpha=1, beta=0)"
            )


@dataclass(frozen=True)
class ArrayOps:
    """The few array functions :func:`linear_terms` needs that Python's operators do not give,
    in one framework's terms (each adapter has one): so that the rules' formulas are written
    once, not once per framework."""

    #: ``max(t, 0)`` and ``min(t, 0)``, elementwise
    pos: Callable[[Any], Any]
    neg: Callable[[Any], Any]
    #: ``cast(mask, like)``: a bool tensor as ``like``'s float dtype (1.0 / 0.0)
    cast: Callable[[Any, Any], Any]
    #: ``stab(d, eps) = d + eps * sign(d)``, sign(0) = 1
    stab: Callable[[Any, float], Any]
    zeros_like: Callable[[Any], Any]
    ones_like: Callable[[Any], Any]
    #: ``bounds(a) -> (min, max)`` of all of ``a``, outside the gradient (z^B's default bounds)
    bounds: Callable[[Any], tuple[Any, Any]]
    #: ``nonnegative(a) -> bool``: whether no input is negative, so the terms of ``a-`` (zero) can be
    #: dropped; torch asks the values, a traced program cannot and answers from the graph (Keras:
    #: the layer's input comes from a ReLU)
    nonnegative: Callable[[Any], bool]


def linear_terms(rule: LinearRule, a: Any, w: Any, b: Any, ops: ArrayOps,
                 const: Callable[[Any], Any] | None) -> tuple[list[tuple[Any, Any, Any]], Callable, bool]:
    """``rule`` on the linear layer ``z = W a + b`` (weights ``w``, bias ``b``, both with batch norm
    merged in) as ``(terms, coefficients, summed)``: ``terms`` the ``(input, weight, bias)`` triples
    the adapter runs through the layer, ``coefficients(outs, z)`` the multipliers (outside the
    gradient) of those runs' outputs ``outs`` given the layer's output ``z``; the input relevance
    is the gradient of ``sum_i outs_i * k_i``. ``summed``: the outputs add up to ``z`` (the terms
    split the layer's contributions), so the adapter takes ``z`` from them rather than running the
    layer once more. ``const(value)`` is the first layer's input multiplier times ``value``
    (``None`` on other layers), for the terms not proportional to the input (flat, w^2, z^B's
    bounds).

    Cost, in convolutions of the layer's size: epsilon 1 (the layer itself), z+ 2 on a
    non-negative input (the layer and ``W+ a``; ``W-`` not made), else 3; alpha-beta and gamma 2
    on a non-negative input (``W+ a + b+`` and ``W- a + b-``), else 4."""
    eps = rule.stabilizer
    pos, neg, stab = ops.pos, ops.neg, ops.stab
    nonnegative = rule.name in ("zplus", "alphabeta", "gamma") and ops.nonnegative(a)
    if rule.name == "zplus" and nonnegative:  # after a ReLU: W+ a + b+ alone, W- never made
        return [(a, pos(w), pos(b))], lambda o, z: [z / stab(o[0], eps)], False
    if rule.name in ("epsilon", "flat", "wsquare"):  # no signed parts: not computed (large dense kernels)
        wp = wn = bp = bneg = None
    else:
        wp, wn, bp, bneg = pos(w), neg(w), pos(b), neg(b)
    zero = ops.zeros_like(b)

    def constant(value: Any) -> Any:
        if const is None:
            raise ValueError(f"lrp: the {rule.name} rule is for the first layer only (its input relevance is "
                             "not proportional to the input); give it as the composite's first rule")
        return const(value)

    if nonnegative:
        # after a ReLU no input is negative: the terms of a- are zero, half the layer runs
        split = [(a, wp, bp), (a, wn, bneg)]
    else:
        split = [(pos(a), wp, bp), (neg(a), wn, zero), (pos(a), wn, bneg), (neg(a), wp, zero)]
    if rule.name == "epsilon":
        return [(a, w, b)], lambda o, z: [z / stab(o[0], eps)], True
    if rule.name == "zplus":
        return split[:2], lambda o, z: [z / stab(o[0] + o[1], eps)] * 2, False
    if rule.name in ("alphabeta", "gamma"):
        # the positive contributions p (W+ a+ + b+ + W- a-) and the negative ones q: with a >= 0
        # the first two terms, else the first two and the last two
        half = len(split) // 2

        def parts(o: list[Any]) -> tuple[Any, Any]:
            return (o[0], o[1]) if half == 1 else (o[0] + o[1], o[2] + o[3])

        if rule.name == "alphabeta":
            al, be = rule.alpha, rule.beta

            def ab(o: list[Any], z: Any) -> list[Any]:
                p, q = parts(o)
                return [al * z / stab(p, eps)] * half + [-be * z / stab(q, eps)] * half

            return split, ab, True
        g = rule.gamma

        def gamma(o: list[Any], z: Any) -> list[Any]:
            # zennit's gamma: weights W + g W+ (W + g W-) on the outputs of positive (negative)
            # z, i.e. (1+g) p + q ((1+g) q + p), written on p and q so that no convolution of the
            # modified weights runs
            p, q = parts(o)
            up = ops.cast(z > 0, z) * z / stab((1 + g) * p + q, eps)
            down = ops.cast(z < 0, z) * z / stab(p + (1 + g) * q, eps)
            return [(1 + g) * up + down] * half + [up + (1 + g) * down] * half

        return split, gamma, True
    if rule.name == "flat":
        return [(constant(1.0), ops.ones_like(w), zero)], lambda o, z: [z / stab(o[0], eps)], False
    if rule.name == "wsquare":
        return [(constant(1.0), w * w, b * b)], lambda o, z: [z / stab(o[0], eps)], False
    if rule.name == "zbox":
        found = ops.bounds(a) if rule.low is None or rule.high is None else (None, None)
        low = found[0] if rule.low is None else rule.low
        high = found[1] if rule.high is None else rule.high
        return ([(a, w, b), (constant(low), wp, bp), (constant(high), wn, bneg)],
                lambda o, z: [k * z / stab(o[0] - o[1] - o[2], eps) for k in (1.0, -1.0, -1.0)], False)
    raise AssertionError(rule.name)


@dataclass(frozen=True, eq=False)
class LayerRules:
    """What LRP sets on a model: a rule for the first linear layer the input meets (``first``,
    ``None``: that layer's kind's rule), for the other convolutions (``conv``) and for the
    other dense layers (``dense``). The rest is fixed, as in zennit's composites: batch norm
    after a convolution or dense layer is merged into it (the layer's rule then sees the merged
    weights), any other batch norm and every activation but ReLU pass relevance on unchanged,
    ReLU and the residual sums take the plain gradient (the same thing in gradient form),
    average pooling is a linear layer under the epsilon rule without stabilizer, max pooling
    gives the winner everything. Keras's compiled programs are kept per value of these fields
    (the rules being frozen), so equal settings share one."""

    name: str
    conv: LinearRule
    dense: LinearRule
    first: LinearRule | None = None
    #: names of layers (module paths for torch) no rule covers whose plain gradient is right
    #: (they only move values, or are linear without bias): taken as they are, not refused
    plain: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for kind in ("conv", "dense"):
            if getattr(self, kind).name in _FIRST_ONLY:
                raise ValueError(
                    f"the {getattr(self, kind).name} rule is for the first layer only (its input relevance "
                    f"is not proportional to the input); give it as first=, not {kind}="
                )

    def __repr__(self) -> str:
        return f"LayerRules({self.name!r})"


_FIRST_ONLY = ("flat", "wsquare", "zbox")


#: the composites ``LRP(composite=...)`` names; zennit's of the same name
COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha1_beta0")


def composite(name: str, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
              low: float | None = None, high: float | None = None, plain: tuple[str, ...] = ()) -> LayerRules:
    """The :class:`LayerRules` of a named composite (zennit 0.5.1's, of the same name)."""
    eps = LinearRule("epsilon", stabilizer=epsilon)
    if name == "epsilon":
        return LayerRules(name, conv=eps, dense=eps, plain=plain)
    if name in ("epsilon_plus", "epsilon_plus_flat"):
        first = LinearRule("flat", stabilizer=stabilizer) if name == "epsilon_plus_flat" else None
        return LayerRules(name, conv=LinearRule("zplus", stabilizer=stabilizer), dense=eps, first=first, plain=plain)
    if name == "epsilon_gamma_box":
        return LayerRules(name, conv=LinearRule("gamma", stabilizer=stabilizer, gamma=gamma), dense=eps,
                          first=LinearRule("zbox", stabilizer=stabilizer, low=low, high=high), plain=plain)
    if name in ("epsilon_alpha2_beta1", "epsilon_alpha1_beta0"):
        a, b = (2.0, 1.0) if name == "epsilon_alpha2_beta1" else (1.0, 0.0)
        return LayerRules(name, conv=LinearRule("alphabeta", stabilizer=stabilizer, alpha=a, beta=b), dense=eps,
                          plain=plain)
    raise ValueError(f"unknown LRP composite {name!r}; choose one of {', '.join(COMPOSITES)}")


@dataclass(frozen=True, eq=False)
class Rescale:
    """DeepLIFT's rescale rule (Shrikumar et al., ICML 2017): with ``reference`` the baseline
    inputs (the explained batch's shape), every nonlinearity ``f`` passes back
    ``dy * (f(x) - f(x0)) / (x - x0)``, ``x0`` its input in the reference run (the plain
    gradient where ``|x - x0| < 1e-10``); linear layers pass the plain gradient."""

    reference: Any
    name: str = "rescale"
    #: as :attr:`LayerRules.plain`: uncovered layers whose plain gradient is right
    plain: tuple[str, ...] = ()
    #: the target scores of the reference run, ``(B,)`` arrays appended by an adapter that gives
    #: them (torch; the others leave it empty and the method runs the reference for them)
    scores: list = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return "Rescale()"
