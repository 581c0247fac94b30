"""LRP against zennit 0.5.1 and captum's LRP, DeepLIFT against captum's DeepLift, on a small
VGG-like net (conv, ReLU, max pooling, adaptive average pooling, Linear) and a small
ResNet-like net (torchvision BasicBlocks: batch norm, residual sums, a downsample branch).

camlens's output relevance is the score itself (as captum's), zennit's starts from 1: its
maps times the score are compared with camlens's raw maps (the sum over channels), which is
the same after any normalisation. zennit needs its canonizers for batch norm and the residual
sums (ResNetCanonizer: batch norm merged into the convolution, the sum a module with the Norm
rule); camlens finds both itself. Torch only: run once, on the tensorflow backend's run.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="torch models only: one backend's run"
)

import camlens  # noqa: E402
from camlens.methods.relevance import LRP, DeepLift  # noqa: E402

TOL = 1e-4
TARGET = 2


def vgg_like() -> object:
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5),
    ).eval()


def resnet_like() -> object:
    resnet = pytest.importorskip("torchvision.models.resnet")
    nn = torch.nn
    torch.manual_seed(1)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        resnet.BasicBlock(8, 8), resnet.BasicBlock(8, 16, stride=2, downsample=down),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    with torch.no_grad():  # batch norms with statistics of their own, not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


NETS = {"vgg": vgg_like, "resnet": resnet_like}


def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)


def _zennit(model: object, x: np.ndarray, composite: object) -> np.ndarray:
    from zennit.attribution import Gradient

    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    with Gradient(model, composite) as attributor:
        out, rel = attributor(xt, torch.eye(5)[[TARGET] * len(x)])
    return (rel.sum(1) * out[:, TARGET, None, None]).detach().numpy()


#: camlens's residual sums divide by their sum unstabilized, zennit's Sum by it plus 1e-6 (its
#: rules' stabilizer): on the ResNet-like net that alone moves the maps by 2e-4 of their
#: maximum, so there both use a stabilizer of 1e-9 and agree to float rounding
STABILIZER = {"vgg": 1e-6, "resnet": 1e-9}


def _zennit_composite(name: str, net: str) -> object:
    composites = pytest.importorskip("zennit.composites")
    st = STABILIZER[net]
    canon = []
    if net == "resnet":
        from zennit.torchvision import ResNetCanonizer

        canon = [ResNetCanonizer()]
    if name == "epsilon_plus_flat":
        return composites.EpsilonPlusFlat(stabilizer=st, canonizers=canon)
    if name == "epsilon_gamma_box":
        return composites.EpsilonGammaBox(low=0.0, high=1.0, stabilizer=st, canonizers=canon)
    if name == "epsilon_alpha2_beta1":
        return composites.EpsilonAlpha2Beta1(stabilizer=st, canonizers=canon)
    if name == "epsilon_plus":
        return composites.EpsilonPlus(stabilizer=st, canonizers=canon)
    raise AssertionError(name)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize(
    "composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus"]
)
def test_lrp_matches_zennit(net: str, composite: str) -> None:
    pytest.importorskip("zennit")
    model, x = NETS[net](), images()
    method = LRP(composite=composite, low=0.0, high=1.0, stabilizer=STABILIZER[net])
    ours = camlens.explain(model, x, method=method, target=TARGET)
    ref = _zennit(model, x, _zennit_composite(composite, net))
    scale = np.abs(ref).max()
    assert scale > 1e-6
    np.testing.assert_allclose(ours.raw_maps[0] / scale, ref / scale, atol=TOL)


def test_lrp_matches_zennit_on_other_rules_by_layer() -> None:
    """w^2 on the first layer, alpha=1 beta=0 elsewhere: zennit's rules set by hand."""
    pytest.importorskip("zennit")
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta, Epsilon, WSquare
    from zennit.types import Convolution, Linear

    from camlens.rules import LayerRules, LinearRule

    model, x = vgg_like(), images()
    comp = SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Convolution, AlphaBeta(alpha=1.0, beta=0.0)), (torch.nn.Linear, Epsilon(0.01))],
        first_map=[(Linear, WSquare())],
    )
    rules = LayerRules("mine", conv=LinearRule("alphabeta", alpha=1.0, beta=0.0),
                       dense=LinearRule("epsilon", stabilizer=0.01), first=LinearRule("wsquare"))
    ours = camlens.explain(model, x, method=LRP(composite=rules), target=TARGET).raw_maps[0]
    ref = _zennit(model, x, comp)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours / scale, ref / scale, atol=TOL)


class _Flattened(torch.nn.Module):
    """The VGG-like net with its flattening done in forward(): captum's LRP has no rule for a
    Flatten module (and its identity rule fails on the change of shape)."""

    def __init__(self) -> None:
        super().__init__()
        net = vgg_like()
        self.features, self.head = net[:6], net[7:]

    def forward(self, x: object) -> object:
        return self.head(torch.flatten(self.features(x), 1))


def test_lrp_epsilon_matches_captum() -> None:
    """captum's LRP with epsilon on every layer (its default, 1e-9; max pooling by epsilon too,
    which is the winner-take-all gradient); like camlens it starts from the score, not 1."""
    captum_attr = pytest.importorskip("captum.attr")
    model, x = _Flattened().eval(), images()
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    ref = captum_attr.LRP(model).attribute(xt, target=TARGET).sum(1).detach().numpy()
    ours = camlens.explain(model, x, method=LRP(composite="epsilon", epsilon=1e-9), target=TARGET).raw_maps[0]
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours / scale, ref / scale, atol=TOL)


class _Block(torch.nn.Module):
    """A residual block with a ReLU module per use (captum's DeepLift needs that)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()

    def forward(self, x: object) -> object:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)


def deeplift_vgg() -> object:
    """VGG-like with max pooling between convolutions: captum's hooks on two adjacent
    nonlinearities (ReLU then MaxPool) read the same tensor's gradient, and its ReLU then
    sees max pooling's plain gradient (see test_deeplift_summation_where_captum_differs)."""
    nn = torch.nn
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5),
    ).eval()


def deeplift_resnet() -> object:
    nn = torch.nn
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), _Block(8), _Block(8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _captum_deeplift(model: object, x: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    captum_attr = pytest.importorskip("captum.attr")
    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    bt = torch.tensor(np.broadcast_to(base, x.shape).copy()).permute(0, 3, 1, 2).contiguous()
    attr, delta = captum_attr.DeepLift(model).attribute(xt, baselines=bt, target=TARGET,
                                                        return_convergence_delta=True)
    return attr.sum(1).detach().numpy(), delta.detach().numpy()


@pytest.mark.parametrize("make", [deeplift_vgg, deeplift_resnet])
@pytest.mark.parametrize("baseline", [None, 0.25])
def test_deeplift_matches_captum(make: Any, baseline: Any) -> None:
    model, x = make(), images()
    base = np.full((8, 8, 3), baseline or 0.0, np.float32)
    ref, _ = _captum_deeplift(model, x, base)
    ours = camlens.explain(model, x, method=DeepLift(baseline=baseline), target=TARGET)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours.raw_maps[0] / scale, ref / scale, atol=TOL)
    assert ours.details[0]["delta_error"].max() < 1e-4


def test_deeplift_summation_where_captum_differs() -> None:
    """ReLU straight into max pooling: camlens applies both rules and sums to the score's
    difference; captum's ReLU hook reads the gradient before its MaxPool hook rewrote it."""
    model, x = vgg_like(), images()
    base = np.full((8, 8, 3), 0.25, np.float32)
    ref, captum_delta = _captum_deeplift(model, x, base)
    ours = camlens.explain(model, x, method=DeepLift(baseline=0.25), target=TARGET)
    assert ours.details[0]["delta_error"].max() < 1e-5
    assert np.abs(captum_delta).max() > 1e-4
