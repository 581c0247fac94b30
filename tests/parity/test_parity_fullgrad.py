"""camlens's FullGrad against pytorch-grad-cam 1.5.7's ``FullGrad`` on the same torch models,
inputs and classes.

Two models: a small CNN (convolutions with biases, batch norms with random statistics, a
functional ReLU) and a ResNet-like one (bias-free convolutions, batch norms, residual blocks
with a projection shortcut). Both maps are compared after the same per-image min-max
normalisation (:func:`_unit`), at the input's resolution.

The one deliberate difference in the formula: grad-cam scales each channel of each term by
``1 / (max - min + 1e-7)``, camlens by ``1 / (max - min)``. On these models the ranges of
``|bias * gradient|`` are 1e-6 to 1e-3, where the ``1e-7`` is far from negligible (the maps
differ by 0.016 on the small CNN). So the parity is checked

* with the explained logit multiplied by ``SCALE`` on both sides (every gradient then is too,
  and the epsilon stops mattering), and camlens's map is checked not to change at all with the
  scale;
* on the plain models with the reference's epsilon put into camlens's per-channel scaling:
  then the maps agree, so the epsilon is the only difference.

Batch norms without a learnt bias (``affine=False``) are counted by camlens and skipped by the
reference (:func:`test_batchnorm_without_affine_is_counted`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("torch models only: checked in the tensorflow run", allow_module_level=True)

STUBS = Path(__file__).resolve().parents[1] / "stubs"


def _import_grad_cam() -> Any:
    spec = importlib.util.spec_from_file_location("_camlens_grad_cam_loader", STUBS / "grad_cam_loader.py")
    assert spec is not None and spec.loader is not None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    try:
        return loader.import_grad_cam()[0]
    except ImportError as err:
        pytest.skip(f"grad-cam is not installed (pip install --no-deps grad-cam): {err}", allow_module_level=True)


pgc = _import_grad_cam()
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import camlens  # noqa: E402
import camlens.methods.fullgrad as fullgrad_module  # noqa: E402

TOL = 1e-4
SCALE = 1e4
#: grad-cam's epsilon in ``scale_cam_image``, which FullGrad's per-channel scaling uses
GRAD_CAM_EPS = 1e-7
CLASSES = [1, 3]
nn = torch.nn


def _randomize_batchnorms(net: Any, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(1.0 + 0.5 * torch.randn(c, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return net.eval()


class SmallCNN(nn.Module):
    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, affine=affine), nn.ReLU()
        self.c2, self.b2 = nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Any) -> Any:
        x = self.r1(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu_out = nn.ReLU()

    def forward(self, x: Any) -> Any:
        return self.relu_out(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1, self.layer2 = Block(8, 8, 1), Block(8, 16, 2)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 4)

    def forward(self, x: Any) -> Any:
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _model(name: str) -> Any:
    torch.manual_seed(0)
    return _randomize_batchnorms(SmallCNN() if name == "cnn" else SmallResNet(), 1)


def _scaled(net: Any) -> Any:
    out = copy.deepcopy(net)
    with torch.no_grad():
        out.fc.weight.mul_(SCALE)
        out.fc.bias.mul_(SCALE)
    return out


def _input(h: int = 16) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 3, h, h)).astype(np.float32)


def _unit(maps: np.ndarray) -> np.ndarray:
    m = np.asarray(maps, dtype=np.float64)
    m = m - m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _reference(net: Any, x: np.ndarray) -> np.ndarray:
    cam = pgc.FullGrad(net, [])
    return _unit(cam(torch.from_numpy(x), targets=[ClassifierOutputTarget(k) for k in CLASSES]))


def _camlens(net: Any, x: np.ndarray) -> np.ndarray:
    return _unit(camlens.explain(net, x, method="fullgrad", target=CLASSES).raw_maps[0])


@pytest.fixture(params=["cnn", "resnet"])
def name(request: Any) -> str:
    return request.param


def test_parity_scaled_score(name: str) -> None:
    net, x = _scaled(_model(name)), _input()
    assert np.abs(_camlens(net, x) - _reference(net, x)).max() < TOL


def test_map_does_not_depend_on_the_score_scale(name: str) -> None:
    net, x = _model(name), _input()
    assert np.abs(_camlens(net, x) - _camlens(_scaled(net), x)).max() < 1e-5


def test_reference_epsilon_is_the_only_difference(name: str, monkeypatch: Any) -> None:
    net, x = _model(name), _input()
    ref, ours = _reference(net, x), _camlens(net, x)

    def with_epsilon(terms: np.ndarray) -> np.ndarray:
        t = np.asarray(terms, dtype=np.float64)
        t = t - t.min(axis=(-3, -2), keepdims=True)
        return t / (GRAD_CAM_EPS + t.max(axis=(-3, -2), keepdims=True))

    monkeypatch.setattr(fullgrad_module, "rescale_channels", with_epsilon)
    assert np.abs(_camlens(net, x) - ref).max() < TOL
    if name == "cnn":  # the difference is real on this model: 0.016
        assert np.abs(ours - ref).max() > 1e-3


def test_layers_read_are_the_references(name: str) -> None:
    net = _model(name)
    exp = camlens.explain(net, _input(), method="fullgrad", target=CLASSES)
    modules = dict(net.named_modules())
    ref = pgc.FullGrad(net, [])
    assert [modules[label] for label in exp.details[0]["layers"]] == list(ref.target_layers)


def test_batchnorm_without_affine_is_counted() -> None:
    torch.manual_seed(0)
    net = _randomize_batchnorms(SmallCNN(affine=False), 1)
    x = _input()
    exp = camlens.explain(net, x, method="fullgrad", target=CLASSES)
    assert exp.details[0]["layers"] == ["c1", "b1", "c2", "b2"]
    ref = pgc.FullGrad(net, [])
    assert net.b1 not in ref.target_layers  # skipped there: it has no learnt bias
    scaled = _scaled(net)
    assert np.abs(_camlens(scaled, x) - _reference(scaled, x)).max() > 1e-3
