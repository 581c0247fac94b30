"""camlens' element-wise Grad-CAM, KPCA-CAM, Deep Feature Factorization and the eigen and
augmentation smoothing against pytorch-grad-cam 1.5.7 on a small torch CNN.

Same model, input batch (two random images) and classes on both sides. As in
``test_parity_pytorch_grad_cam.py`` (whose ``_unit`` / ``_max_diff`` these tests reuse), both maps
are compared after relu and per-image min-max; here within ``TOL = 1e-4``, at the layer's
resolution (camlens' ``raw_maps`` against grad-cam's ``get_cam_image`` on the activations and
gradients grad-cam itself recorded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_parity_pytorch_grad_cam import _max_diff, _unit, pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import camlens  # noqa: E402

TOL = 1e-4
LAYER = "relu2"
CLASSES = [1, 3]


class _Net(torch.nn.Module):
    """16x16x3 -> 8x8x16 at ``relu2`` -> GAP -> 5 logits."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Any) -> Any:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def net() -> Any:
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def grad_cam_layer_map(cam: Any, module: Any, x: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """grad-cam's per-layer map (before its relu and normalisation) of ``CLASSES``, from the
    activations and gradients it recorded itself."""
    xt = torch.from_numpy(x)
    targets = [ClassifierOutputTarget(k) for k in CLASSES]
    try:
        cam(input_tensor=xt, targets=targets, eigen_smooth=eigen_smooth)
        rec = cam.activations_and_grads
        acts = rec.activations[0].numpy()
        grads = rec.gradients[0].numpy() if rec.gradients else None
        return np.asarray(cam.get_cam_image(xt, module, targets, acts, grads, eigen_smooth))
    finally:
        cam.activations_and_grads.release()


def test_gradcamelementwise_parity(net: Any, x: np.ndarray) -> None:
    exp = camlens.explain(net, x, "gradcamelementwise", target=CLASSES, layer=LAYER)
    ref = grad_cam_layer_map(pgc.GradCAMElementWise(net, [net.relu2]), net.relu2, x)
    assert exp.raw_maps[0].shape == ref.shape == (2, 8, 8)
    assert _max_diff(exp.raw_maps[0], ref) < TOL
    # and it is not HiResCAM's map: the negative products matter on this model
    hires = grad_cam_layer_map(pgc.HiResCAM(net, [net.relu2]), net.relu2, x)
    assert _max_diff(exp.raw_maps[0], hires) > 100 * TOL
