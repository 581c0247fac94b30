"""Parity with torchcam 0.5.0: Finer-CAM on a small CNN, LeGrad on a small ViT."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
methods = pytest.importorskip("torchcam.methods")

import camlens  # noqa: E402


def _cnn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 7),
    ).eval()
    return net


@pytest.mark.parametrize("target", [None, [3, 5]])
def test_finercam_equals_torchcam(target):
    net = _cnn()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 10, 10)).astype(np.float32))
    with torch.no_grad():
        classes = net(x).argmax(1).tolist() if target is None else target
    with methods.FinerCAM(net, "2", input_shape=(3, 10, 10)) as extractor:
        scores = net(x)
        want = extractor(classes, scores=scores, normalized=False)[0].detach().numpy()
    exp = camlens.explain(net, x, method="finercam", target=target, layer="2")
    assert exp.sites[0].layer == "2"
    assert np.ptp(want) > 0
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-5)
    # and not Grad-CAM of the class: the contrast changes the map
    plain = camlens.explain(net, x, method="gradcam", target=classes, layer="2")
    assert not np.allclose(plain.raw_maps[0], want, rtol=1e-3, atol=1e-4)
