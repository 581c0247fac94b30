"""Relevance propagation to input pixels: LRP with per-layer rules and DeepLIFT (rescale).

Both are modified gradients the adapters take (:mod:`camlens.rules`): the method names the
rules, ``data.rule_gradients(rules)`` gives what the model propagates back from every image
(``data.rule_gradient(n, batch, rules)`` for copies of one).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..rules import COMPOSITES, LayerRules, Rescale, composite
from .base import PixelData, PixelMethod, register
from .pixel import _images, baselines_for

__all__ = ["LRP", "DeepLift"]


def _rule_gradient(method: PixelMethod, data: PixelData) -> Any:
    fn = getattr(data, "rule_gradient", None)
    if fn is None:
        raise ValueError(
            f"{method.name} needs the model: its rules act on the model's layers (run it through "
            "camlens.explain(model, x, method=...)); PixelData of arrays has no layers"
        )
    return fn


@register
class LRP(PixelMethod):
    """Layer-wise Relevance Propagation: the score redistributed layer by layer to the pixels.

    Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
    Relevance Propagation", PLOS ONE 2015; rules and composites as in Montavon et al.,
    "Layer-Wise Relevance Propagation: An Overview", 2019, and zennit 0.5.1 (Anders et al.).

    The output relevance is the target score ``S`` itself; each linear layer ``z = W a + b``
    passes its outputs' relevance ``R`` to its inputs by its rule (:class:`camlens.rules.
    LinearRule`), e.g. epsilon ``R_a = a * W^T (R / (z + eps sign z))``; ReLU and max pooling
    pass it by their gradient, residual sums and average pooling as linear layers. Batch norm
    after a convolution or dense layer is merged into it (zennit's canonizers do the same);
    other activations and batch norms pass relevance unchanged. Attributions ``= R`` at the
    input, signed; map ``= sum_c R``. Conservation: with epsilon -> 0 and no biases
    ``sum(R) = S``.

    ``composite``: "epsilon_plus_flat" (default: flat on the first linear layer, z+ on other
    convolutions, epsilon on dense layers), "epsilon_plus", "epsilon_gamma_box" (z^B on the
    first convolution with ``low``/``high`` the input's bounds, default the batch's min and
    max; gamma on the others), "epsilon_alpha2_beta1", "epsilon_alpha1_beta0", "epsilon"; or a
    :class:`camlens.rules.LayerRules` of your own. ``epsilon`` is the dense layers'
    stabilizer, ``stabilizer`` the other rules'. ``plain_layers``: names of layers no rule
    covers (a custom layer) whose plain gradient is right: they only move values or are linear
    without bias; any other uncovered layer is refused by name.

    Differences from zennit, on purpose: the output relevance is ``S`` rather than 1 (zennit's
    maps times ``S``: the same after normalisation, and conservation reads directly); residual
    sums and average pooling divide by their unstabilized sum (zennit adds 1e-6); batch norm is
    merged wherever it follows a convolution or Linear layer alone, found from the traced
    graph (zennit's canonizer pairs consecutive leaf modules).

    Cost: one forward and one backward pass, each layer's convolution run once per rule term;
    per layer, in convolutions of its size (forward + input-gradient backward; a plain
    gradient is 1 + 1, about 2 forward passes): epsilon 1 + 1 (its bound: a plain gradient);
    z+ after a ReLU 2 + 1 (the layer and ``W+ a``; bound about 1.5 plain gradients, ~3 forward
    passes), on a signed input 3 + 2; flat 2 + 1 (the layer and the ones kernel); alpha-beta
    and gamma after a ReLU 2 + 2 (their positive and negative parts, the layer's output being
    their sum; bound about 2 plain gradients, ~4 forward passes), on a signed input 4 + 4; z^B
    4 + 3. Torch asks the input's sign at run time; Keras reads it from the graph (an input
    straight from a ReLU, or through pooling, padding or flattening of one, is non-negative).
    On native torch a batch runs at once (``batch_size`` at a time, each image with its own
    target and z^B bounds: the same maps as one by one) and this run is ``explain``'s own pass
    (its outputs are the explanation's), so nothing else runs; under alpha-beta and gamma the
    outputs are then the sums of the parts, the model's to float rounding. On Keras with
    TensorFlow or JAX the run is one compiled program per model, rule settings (by value) and
    input shape (``tf.function``, ``jax.jit``; the first call traces it), one image at a time;
    the Keras torch backend runs eagerly.
    Torch modules and Keras Functional/Sequential models (all three backends; convolutions
    grouped or depthwise too; a subclassed Keras model is refused); a layer no rule covers (attention, a custom layer,
    ``torch.sigmoid`` in ``forward``) is refused by name. LRP explains a logit: a class target
    on a model ending in softmax is explained on its logit (as ``Logit(k)``; the softmax is
    skipped), another target read after a softmax is refused.

    Example (``x = [1, 3]``, ``h = relu(W1 x) = [0, 5]``, ``S = 0.5 h1 + 2 h2 = 10``; epsilon
    gives h2's relevance 10 back by the contributions ``2 * 1`` and ``1 * 3`` of its 5)::

        >>> import numpy as np, torch, camlens
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2, bias=False),
        ...                           torch.nn.ReLU(), torch.nn.Linear(2, 1, bias=False)).eval()
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        ...     _ = net[3].weight.copy_(torch.tensor([[0.5, 2.0]]))
        >>> x = torch.tensor([[[[1.0, 3.0]]]])
        >>> exp = camlens.explain(net, x, method=LRP(composite="epsilon", epsilon=1e-9), target=0)
        >>> np.round(exp.details[0]["attributions"][0, 0, :, 0], 4).tolist()
        [4.0, 6.0]
    """

    name = "lrp"
    needs_gradients = False
    signed = True
    reduce = "sum"

    def __init__(self, composite: str | LayerRules = "epsilon_plus_flat", epsilon: float = 1e-6,
                 stabilizer: float = 1e-6, gamma: float = 0.25, low: float | None = None,
                 high: float | None = None, plain_layers: Sequence[str] = ()) -> None:
        if isinstance(plain_layers, str) or not all(isinstance(n, str) for n in plain_layers):
            raise TypeError(f"lrp: plain_layers must be a list of layer names; got {plain_layers!r}")
        if isinstance(composite, LayerRules):
            if plain_layers:
                raise ValueError("lrp: give plain_layers in the LayerRules (plain=...), not beside it")
            self.rules = composite
        elif isinstance(composite, str):
            self.rules = _composite(composite, epsilon, gamma, stabilizer, low, high, tuple(plain_layers))
        else:
            raise TypeError(f"lrp: composite must be a name ({', '.join(COMPOSITES)}) or a "
                            f"camlens.rules.LayerRules; got {composite!r}")

    def first_rule(self, images: np.ndarray) -> tuple[Any] | None:
        return (self.rules,)

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        fn = _rule_gradient(self, data)
        every = getattr(data, "rule_gradients", None)
        if every is not None:
            s, r = every(self.rules)
            out = np.asarray(r, dtype=np.float32)
            scores = np.asarray(s, dtype=np.float64).reshape(-1)
        else:
            out = np.empty(images.shape, dtype=np.float32)
            scores = np.empty(len(images))
            for n in range(len(images)):
                s, r = fn(n, images[n : n + 1], self.rules)
                out[n], scores[n] = r[0], s[0]
        return out, {"scores": scores, "relevance_sum": out.reshape(len(out), -1).sum(axis=1)}


def _composite(name: str, epsilon: float, gamma: float, stabilizer: float, low: Any, high: Any,
               plain: tuple[str, ...]) -> LayerRules:
    for what, v in (("epsilon", epsilon), ("stabilizer", stabilizer)):
        if not v >= 0:
            raise ValueError(f"lrp: {what} must be >= 0 (1e-6 is usual); got {v}")
    if not gamma >= 0:
        raise ValueError(f"lrp: gamma must be >= 0 (0.25 is usual); got {gamma}")
    return composite(name, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer, low=low, high=high, plain=plain)


@register
class DeepLift(PixelMethod):
    """DeepLIFT with the rescale rule: contributions of ``x - x0`` to ``S(x) - S(x0)``.

    Shrikumar et al., "Learning Important Features Through Propagating Activation
    Differences", ICML 2017; as captum 0.9's ``DeepLift``.

    The model runs on the baseline ``x0`` (the reference), then on ``x`` with every
    nonlinearity ``f`` passing back ``dy * (f(a) - f(a0)) / (a - a0)`` (``a0`` its input in
    the reference run; the plain gradient where ``|a - a0| < 1e-10``); linear layers pass the
    plain gradient. Max pooling as captum: the rise of each window's maximum goes back to the
    input's winner and the baseline's. Attributions ``= (x - x0) * multipliers``, signed;
    map ``= sum_c``. Summation to delta: ``sum(attributions) = S(x) - S(x0)`` exactly for a
    ReLU network, reported as ``info["delta_error"]`` next to ``info["score_delta"]`` (the
    baseline's score taken as the rule takes it: one more pass per sample).

    ``baseline``: ``None`` (zeros), a number, or an array broadcastable to ``(H, W, c)``.
    ``plain_layers``: as LRP's, uncovered layers whose plain gradient is right.
    Differences from captum, on purpose: every elementwise activation module gets the rescale
    rule (captum: ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus; others silently plain), and
    a nonlinearity called as a function in ``forward`` is refused by name (captum takes its
    plain gradient).

    Cost: the reference run (no gradient) and the input's run with its backward, about one
    forward pass more than a plain gradient (~3 forward passes; the bound, as the reference's
    values must exist before the input's rule can use them). On native torch a batch runs at
    once with one reference per image (``batch_size`` at a time), the baseline's score is read
    from the reference run, and the input's run is ``explain``'s own pass; the rescale
    multipliers are taken in the forward so that the backward is two passes over each
    activation. The reference and the input are not run as one batch of 2B: the backward would
    then run through both halves (the reference half's gradient unused), twice the backward's
    work to save one call per layer. On Keras with TensorFlow or JAX both runs are one compiled
    program (and the baseline's score a second). Torch modules and Keras Functional/Sequential
    models (max pooling on both). Like LRP it
    explains a logit: a class target on a model ending in softmax is explained on its
    logit.
    """

    name = "deeplift"
    needs_gradients = False
    signed = True
    reduce = "sum"

    def __init__(self, baseline: float | np.ndarray | None = None, plain_layers: Sequence[str] = ()) -> None:
        if isinstance(plain_layers, str) or not all(isinstance(n, str) for n in plain_layers):
            raise TypeError(f"deeplift: plain_layers must be a list of layer names; got {plain_layers!r}")
        self.baseline = baseline
        self.plain_layers = tuple(plain_layers)

    def baselines(self, images: np.ndarray) -> np.ndarray:
        return baselines_for(self.name, self.baseline, images)

    def first_rule(self, images: np.ndarray) -> tuple[Any] | None:
        return (Rescale(self.baselines(images), plain=self.plain_layers),)

    def attribute(self, data: PixelData) -> tuple[np.ndarray, dict[str, Any]]:
        images = _images(self, data)
        bases = self.baselines(images)
        fn = _rule_gradient(self, data)
        every = getattr(data, "rule_gradients", None)
        rule = Rescale(bases, plain=self.plain_layers)
        if every is not None:
            scores, grads = every(rule)
        else:
            parts = [fn(n, images[n : n + 1], Rescale(bases[n : n + 1], plain=self.plain_layers))
                     for n in range(len(images))]
            scores = np.concatenate([p[0] for p in parts])
            grads = np.concatenate([p[1] for p in parts])
        # the baseline's score as the rule explains it (a logit under a final softmax): from the
        # reference run where the adapter gives it, else a run of its own
        ref = np.concatenate(rule.scores) if rule.scores else np.empty(0)
        out = np.empty(images.shape, dtype=np.float32)
        delta = np.empty(len(images))
        error = np.empty(len(images))
        for n in range(len(images)):
            x, b = images[n : n + 1], bases[n : n + 1]
            attr = (x.astype(np.float64) - b) * grads[n : n + 1]
            out[n] = attr[0]
            s0 = float(ref[n]) if len(ref) == len(images) else float(
                fn(n, b, Rescale(b, plain=self.plain_layers))[0][0])
            delta[n] = float(scores[n]) - s0
            error[n] = abs(attr.sum() - delta[n]) / max(abs(delta[n]), 1e-12)
        return out, {"score_delta": delta, "delta_error": error}
