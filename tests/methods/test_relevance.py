"""LRP and DeepLIFT (camlens.methods.relevance) on tiny torch nets, by hand."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import camlens  # noqa: E402
from camlens.methods.relevance import LRP, DeepLift  # noqa: E402
from camlens.rules import LayerRules, LinearRule, composite  # noqa: E402

nn = torch.nn


def two_layer() -> object:
    """x (2 pixels) -> h = W1 x -> ReLU -> f = W2 relu(h), no biases.

    At x = [1, 3]: h = [-2, 5], relu(h) = [0, 5], f = 0.5 * 0 + 2 * 5 = 10."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        model[3].weight.copy_(torch.tensor([[0.5, 2.0]]))
    return model.eval()


X = torch.tensor([[[[1.0, 3.0]]]])  # (N, C, H, W) = (1, 1, 1, 2)


def _relevance(method: object, model: object = None) -> np.ndarray:
    exp = camlens.explain(two_layer() if model is None else model, X, method=method, target=0)
    return exp.details[0]["attributions"][0, 0, :, 0]


def test_lrp_epsilon_by_hand() -> None:
    """R_f = 10; the last layer gives it all to h2 (h1's ReLU output is 0): R_h = [0, 10];
    the first layer splits h2 = 2 * 1 + 1 * 3 = 5 by contributions: R_x = [2, 3] * 10 / 5."""
    r = _relevance(LRP(composite="epsilon", epsilon=1e-9))
    np.testing.assert_allclose(r, [4.0, 6.0], rtol=1e-6)
    assert r.sum() == pytest.approx(10.0, rel=1e-6)  # conservation: sum(R) = f(x)


def test_lrp_flat_first_layer_by_hand() -> None:
    """epsilon_plus_flat: flat on the first layer spreads R_h2 = 10 evenly over its 2 inputs."""
    np.testing.assert_allclose(_relevance(LRP()), [5.0, 5.0], rtol=1e-6)


def test_lrp_wsquare_and_zbox_first_layer_by_hand() -> None:
    """w^2: R_x = W1[1]^2 / sum W1[1]^2 * 10 = [4, 1] / 5 * 10 (h1 gets no relevance).
    z^B in [0, 4]: q = 10 / (5 - (2 + 1) * 0 - 0 * 4) = 2; R_x = x W q - low W+ q - high W- q
    = [1 * 2, 3 * 1] * 2 (W1[1] is all positive, low = 0)."""
    eps = LinearRule("epsilon", stabilizer=1e-9)
    wsq = LayerRules("w2", conv=eps, dense=eps, first=LinearRule("wsquare", stabilizer=1e-9))
    np.testing.assert_allclose(_relevance(LRP(composite=wsq)), [8.0, 2.0], rtol=1e-6)
    box = LayerRules("box", conv=eps, dense=eps, first=LinearRule("zbox", stabilizer=1e-9, low=0.0, high=4.0))
    np.testing.assert_allclose(_relevance(LRP(composite=box)), [4.0, 6.0], rtol=1e-6)


def test_lrp_conserves_on_a_bias_free_conv_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3, bias=False),
    ).eval()
    x = np.random.default_rng(0).uniform(0, 1, (2, 6, 6, 3)).astype(np.float32)
    for name in ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1"):
        exp = camlens.explain(model, x, method=LRP(composite=name, epsilon=1e-9, stabilizer=1e-9), target=1)
        np.testing.assert_allclose(exp.details[0]["relevance_sum"], exp.scores, rtol=1e-4, err_msg=name)


def test_deeplift_by_hand() -> None:
    """Baseline 0: the ReLU's multipliers are [0/(-2), 5/5] = [0, 1], the input's
    W1^T (W2 * m) = [4, 2], attributions x * [4, 2] = [4, 6]. Baseline 1: h0 = [0, 3],
    multipliers [0, (5 - 3) / 2], attributions (x - 1) * [4, 2] = [0, 4] = f(x) - f(1) in sum."""
    np.testing.assert_allclose(_relevance(DeepLift()), [4.0, 6.0], rtol=1e-6)
    exp = camlens.explain(two_layer(), X, method=DeepLift(baseline=1.0), target=0)
    np.testing.assert_allclose(exp.details[0]["attributions"][0, 0, :, 0], [0.0, 4.0], rtol=1e-6)
    assert exp.details[0]["score_delta"][0] == pytest.approx(4.0)
    assert exp.details[0]["delta_error"][0] < 1e-6


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: object) -> object:
        return x * self.scale


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: object) -> object:
        y = self.conv(x)
        return (y * torch.sigmoid(y)).mean(dim=(2, 3))


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_uncovered_layers_are_refused_by_name(method: str) -> None:
    x = np.ones((1, 4, 4, 3), np.float32)
    custom = nn.Sequential(nn.Conv2d(3, 2, 1), _Custom(), nn.Flatten(), nn.Linear(32, 2)).eval()
    with pytest.raises(ValueError, match=r"layer '1' \(_Custom\)"):
        camlens.explain(custom, x, method=method, target=0)
    with pytest.raises(ValueError, match="sigmoid"):
        camlens.explain(_Gated().eval(), x, method=method, target=0)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown LRP composite 'plus'"):
        LRP(composite="plus")
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        LinearRule("alphabeta", alpha=2.0, beta=2.0)
    with pytest.raises(ValueError, match="first layer only"):
        LayerRules("bad", conv=LinearRule("flat"), dense=LinearRule("epsilon"))
    assert composite("epsilon_gamma_box", low=-1.0, high=1.0).first == LinearRule("zbox", low=-1.0, high=1.0)
    with pytest.raises(ValueError, match="baseline of shape"):
        camlens.explain(two_layer(), X, method=DeepLift(baseline=np.zeros(5)), target=0)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="one backend")
def test_keras_refusals_name_the_fix() -> None:
    keras = pytest.importorskip("keras")
    L = keras.layers
    x = np.ones((1, 4, 4, 3), np.float32)
    plain = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(2, 1), L.Flatten(), L.Dense(2)])
    pooled = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(2, 1), L.MaxPooling2D(name="mp"), L.Flatten(),
                               L.Dense(2)])
    for model in (plain, pooled):  # max pooling has its rescale rule (tests/methods/test_relevance_keras.py)
        assert camlens.explain(model, x, method="deeplift", target=0).maps[0].shape == (1, 4, 4)
    normed = keras.Sequential([keras.Input((4, 4, 3)), L.Conv2D(2, 1), L.LayerNormalization(name="ln"),
                               L.Flatten(), L.Dense(2)])
    with pytest.raises(ValueError, match=r"layer 'ln' \(LayerNormalization\).*plain_layers=\['ln'\]"):
        camlens.explain(normed, x, method="lrp", target=0)

    class Sub(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.flat, self.dense = L.Conv2D(2, 1), L.Flatten(), L.Dense(2)

        def call(self, x: object) -> object:
            return self.dense(self.flat(self.conv(x)))

    sub = Sub()
    sub(x)
    for method in ("lrp", "deeplift"):
        with pytest.raises(ValueError, match="Functional or Sequential"):
            camlens.explain(sub, x, method=method, target=0)


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_a_final_softmax_is_skipped_for_a_class(method: str) -> None:
    """A class target is explained on its logit; a target of the probabilities is refused."""
    from camlens.targets import Logit

    model = nn.Sequential(*two_layer(), nn.Softmax(dim=1)).eval()
    for target in (0, Logit(0)):
        got = camlens.explain(model, X, method=method, target=target).details[0]["attributions"]
        np.testing.assert_allclose(got[0, 0, :, 0], _relevance(method), rtol=1e-6)
    with pytest.raises(ValueError, match=r"explains a logit.*Softmax '4'.*Logit\(k\)"):
        camlens.explain(model, X, method=method, target=lambda y: y[:, 0])


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_in_place_relus_give_the_same_maps(method: str) -> None:
    """torchvision's nets use ReLU(inplace=True): the rules must read the values before it."""
    def net(inplace: bool) -> object:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 3),
                             nn.LeakyReLU(0.1, inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 2)).eval()

    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32)
    for name in ("epsilon", "epsilon_plus_flat") if method == "lrp" else ("",):
        m = LRP(composite=name) if method == "lrp" else DeepLift(baseline=0.1)
        a = camlens.explain(net(True), x, method=m, target=1).raw_maps[0]
        b = camlens.explain(net(False), x, method=m, target=1).raw_maps[0]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, after_relu, signed", [
    ("epsilon_plus", 2, 3), ("epsilon_alpha2_beta1", 2, 4), ("epsilon_gamma_box", 2, 4),
])
def test_lrp_runs_each_convolution_only_as_often_as_its_rule_needs(monkeypatch, name, after_relu, signed) -> None:
    """Convolutions run per layer: after a ReLU z+ needs the layer and its positive weights (2),
    alpha-beta and gamma their positive and negative parts only, the layer being their sum (2,
    was 3); on a signed input (the first layer, under ``LayerRules``) the four signed parts
    (alpha-beta and gamma: 4, was 5)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2)).eval()
    calls = _count_convolutions(monkeypatch)
    x = torch.randn(1, 2, 6, 6)  # signed: the first layer's rule sees negative inputs
    counts = []
    # epsilon: one run per layer; its first call also traces the model (not counted)
    for conv in (LinearRule("epsilon"), LinearRule("epsilon"), composite(name).conv):
        calls.clear()
        rules = LayerRules("counted", conv=conv, dense=LinearRule("epsilon"), first=conv)
        camlens.explain(net, x, method=LRP(composite=rules), target=0)
        counts.append((calls.count(3), calls.count(2)))
    _, (eps1, eps2), (first, second) = counts
    assert (first - eps1 + 1, second - eps2 + 1) == (signed, after_relu)


def _count_convolutions(monkeypatch) -> list[int]:
    import torch.nn.functional as F

    calls: list[int] = []
    real = F.conv2d

    def counted(x, w, *args, **kwargs):
        calls.append(w.shape[0])
        return real(x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", counted)
    return calls


@pytest.mark.parametrize("method, first, second", [
    ("saliency", 1, 1), ("inputxgradient", 1, 1), ("epsilon", 1, 1), ("epsilon_plus_flat", 2, 2),
    ("epsilon_plus", 3, 2), ("epsilon_alpha2_beta1", 4, 2), ("epsilon_gamma_box", 4, 2), ("deeplift", 2, 2),
])
def test_a_batch_runs_each_convolution_once_per_rule_term(monkeypatch, method, first, second) -> None:
    """The whole explain call on a batch of 3 (batch_size 4): one run of the batch, whose outputs
    are the explanation's (no capture pass of their own), each convolution called as often as
    its rule's terms need: epsilon, saliency 1 (was 1 + 3, the capture pass and a run per image),
    z+ the layer and W+ after a ReLU (2), on the signed input 3; flat the layer and the ones
    kernel; alpha-beta and gamma their parts (2 after a ReLU, 4 signed; z^B the layer and its
    three terms); DeepLIFT the reference run and the input's (2, was 3 + 3 * 4)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(3, 2, 6, 6)  # signed: the first layer's rule sees negative inputs
    m = method if method in ("saliency", "inputxgradient", "deeplift") else LRP(composite=method)
    camlens.explain(net, x, method=m)  # the first call traces the model (its shapes): not counted
    calls = _count_convolutions(monkeypatch)
    exp = camlens.explain(net, x, method=m, batch_size=4)
    assert (calls.count(3), calls.count(2)) == (first, second)
    with torch.no_grad():
        np.testing.assert_allclose(exp.scores, net(x).max(dim=1).values.numpy(), rtol=1e-5)


@pytest.mark.parametrize("method", ["saliency", "epsilon", "epsilon_plus_flat", "epsilon_gamma_box",
                                    "epsilon_alpha2_beta1", "deeplift"])
def test_a_batch_in_one_run_gives_each_image_its_own_map(method) -> None:
    """One run per batch: each image's map and score as explained alone (z^B's default bounds
    are each image's own, DeepLIFT's baseline one per image, each image's own top class)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.randn(3, 2, 6, 6) * torch.tensor([1.0, 5.0, 0.2]).reshape(3, 1, 1, 1)
    m = (DeepLift(baseline=np.linspace(-0.5, 0.5, 72, dtype=np.float32).reshape(6, 6, 2)) if method == "deeplift"
         else method if method == "saliency" else LRP(composite=method))
    whole = camlens.explain(net, x, method=m)
    for n in range(3):
        alone = camlens.explain(net, x[n : n + 1], method=m)
        np.testing.assert_allclose(whole.details[0]["attributions"][n], alone.details[0]["attributions"][0],
                                   rtol=1e-5, atol=1e-7)
        for key, value in alone.details[0].items():
            if key != "attributions":  # delta_error: a ratio of float rounding, to 1e-5
                np.testing.assert_allclose(whole.details[0][key][n], value[0], rtol=1e-5,
                                           atol=1e-5 if key == "delta_error" else 1e-7)


def test_deeplift_score_delta_is_of_the_input_class_on_both_runs() -> None:
    """The baseline's score comes from the reference run, for the class explained on the input
    (not the baseline's own top class): S(x)[k] - S(x0)[k], k the input's top class."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.0]))
    x = torch.tensor([[[[3.0, 1.0]]]])  # top class 0: S(x) = 3
    base = np.array([[[0.0], [4.0]]], np.float32)  # (H, W, c): the baseline's top class is 1; its class-0 score 0
    info = camlens.explain(model, x, method=DeepLift(baseline=base)).details[0]
    assert info["score_delta"].tolist() == [3.0]
    assert info["delta_error"].tolist() == [0.0]
