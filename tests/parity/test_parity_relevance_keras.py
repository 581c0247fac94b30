"""LRP and DeepLIFT on a Keras model against the same network in torch with identical weights
(conv, batch norm (merged into the conv by LRP), ReLU layer and fused activation, pooling,
global average pooling, Dense): the maps agree on every Keras backend."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import camlens  # noqa: E402
from camlens.methods.relevance import LRP, DeepLift  # noqa: E402
from camlens.targets import Logit  # noqa: E402

TOL = 1e-4


def _twins(softmax: bool = False, deeplift: bool = False, maxpool: bool = False) -> tuple[object, object]:
    """``deeplift``: average pooling (``maxpool``: max pooling) and tanh."""
    nn, L = torch.nn, keras.layers
    torch.manual_seed(0)
    tm = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                       nn.AvgPool2d(2) if deeplift and not maxpool else nn.MaxPool2d(2),
                       nn.Conv2d(4, 4, 3, padding=1), nn.Tanh() if deeplift else nn.ReLU(),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    bn = tm[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same")(inp)
    x = L.BatchNormalization(epsilon=1e-5)(x)
    x = L.ReLU()(x)
    x = (L.AveragePooling2D if deeplift and not maxpool else L.MaxPooling2D)(2)(x)
    x = L.Conv2D(4, 3, padding="same", activation="tanh" if deeplift else "relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    km = keras.Model(inp, L.Dense(3, activation="softmax" if softmax else None)(x))

    def conv(t: object) -> list:
        return [t.weight.detach().numpy().transpose(2, 3, 1, 0), t.bias.detach().numpy()]

    layers = [layer for layer in km.layers if layer.weights]
    layers[0].set_weights(conv(tm[0]))
    layers[1].set_weights([bn.weight.detach().numpy(), bn.bias.detach().numpy(), bn.running_mean.numpy(),
                           bn.running_var.numpy()])
    layers[2].set_weights(conv(tm[4]))
    layers[3].set_weights([tm[8].weight.detach().numpy().T, tm[8].bias.detach().numpy()])
    return tm, km


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_keras_and_torch_give_the_same_lrp_maps(composite: str) -> None:
    tm, km = _twins()
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    ours = camlens.explain(km, x, method=LRP(composite=composite), target=1).raw_maps[0]
    ref = camlens.explain(tm, x, method=LRP(composite=composite), target=1).raw_maps[0]
    scale = np.abs(ref).max()
    assert scale > 1e-6
    np.testing.assert_allclose(ours / scale, ref / scale, atol=TOL)


def test_keras_softmax_head_explains_the_logit() -> None:
    tm, km = _twins(softmax=True)
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"explains a logit.*Logit\(k\)"):
        camlens.explain(km, x, method="lrp", target=lambda y: y[:, 1])
    ref = camlens.explain(tm, x, method="lrp", target=1).raw_maps[0]
    for target in (1, Logit(1)):  # a class is explained on its logit
        ours = camlens.explain(km, x, method="lrp", target=target).raw_maps[0]
        np.testing.assert_allclose(ours / np.abs(ref).max(), ref / np.abs(ref).max(), atol=TOL)


@pytest.mark.parametrize("maxpool", [False, True])
def test_keras_and_torch_give_the_same_deeplift_maps(maxpool: bool) -> None:
    """Max pooling: the rescale rule through the max-pool gradient of both runs, as captum. Its
    baseline is not constant: on a constant one the windows' values tie up to rounding, and
    which one wins (where the rest of the change goes) is the frameworks' rounding."""
    tm, km = _twins(softmax=True, deeplift=True, maxpool=maxpool)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    base = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32) if maxpool else 0.25
    ref = camlens.explain(tm, x, method=DeepLift(baseline=base), target=1).raw_maps[0]
    ours = camlens.explain(km, x, method=DeepLift(baseline=base), target=1)
    np.testing.assert_allclose(ours.raw_maps[0] / np.abs(ref).max(), ref / np.abs(ref).max(), atol=TOL)
    assert ours.details[0]["delta_error"].max() < 1e-3  # tanh in float32: rounding of small deltas
