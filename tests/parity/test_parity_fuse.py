"""``Explanation.fused`` against torchcam 0.5.0's ``fuse_cams`` (the classmethod every torchcam
CAM has; its default: the maps resized bilinearly to the largest height and width, then the
element-wise maximum).

torchcam's ``fuse_cams`` takes maps already normalised (its extractors scale each map by
``(x - min) / (max + 1e-8)`` when they make it); camlens's fusion scales each site's raw map to
``[0, 1]`` itself. So the same normalised maps go to both (:func:`test_same_maps`, 1e-6), and the
whole path, torchcam's Grad-CAM at two layers then ``fuse_cams`` against ``explain(...,
layer=[a, b]).fused()``, agrees to 1e-4 (:func:`test_through_explain`: the 1e-8 and float32
rounding of two Grad-CAM implementations). torchcam's LayerCAM passes maps through
``tanh(2 x)`` before fusing; camlens does not, for any method (not compared here).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchcam_methods = pytest.importorskip("torchcam.methods")
if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("torch models only: checked in the tensorflow run", allow_module_level=True)

import camlens  # noqa: E402
from camlens.explanation import fuse_maps  # noqa: E402

nn = torch.nn
CLASSES = [1, 2]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Any) -> Any:
        return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).mean((2, 3)))


def _net() -> Any:
    torch.manual_seed(0)
    return Net().eval()


X = np.random.default_rng(0).standard_normal((2, 3, 15, 17)).astype(np.float32)


def test_same_maps() -> None:
    exp = camlens.explain(_net(), X, method="gradcam", layer=["r1", "r2"], target=CLASSES)
    assert [m.shape[1:] for m in exp.raw_maps] == [(15, 17), (8, 9)]
    normalised = [camlens.viz.normalize(m) for m in exp.raw_maps]
    ref = torchcam_methods.GradCAM.fuse_cams([torch.from_numpy(m) for m in normalised]).numpy()
    assert np.abs(exp.fused().raw_maps[0] - ref).max() < 1e-6
    assert np.abs(fuse_maps(exp.raw_maps) - ref).max() < 1e-6


def test_through_explain() -> None:
    net = _net()
    extractor = torchcam_methods.GradCAM(net, target_layer=[net.r1, net.r2])
    try:
        cams = extractor(class_idx=CLASSES, scores=net(torch.from_numpy(X)))
        ref = extractor.fuse_cams(cams).detach().numpy()
    finally:
        extractor.remove_hooks()
    fused = camlens.explain(net, X, method="gradcam", layer=["r1", "r2"], target=CLASSES).fused()
    assert np.abs(fused.raw_maps[0] - ref).max() < 1e-4
