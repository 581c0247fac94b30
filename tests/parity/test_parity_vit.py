"""Parity with torchcam 0.5.0: Finer-CAM on a small CNN, LeGrad on a small ViT."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
methods = pytest.importorskip("torchcam.methods")

import os  # noqa: E402

import camlens  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "torch",
    reason="native torch does not depend on the Keras backend: checked in the torch run",
)


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


def _torchvision_vit():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    vit = tv.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                               mlp_dim=32, num_classes=5).eval()
    with torch.no_grad():  # torchvision starts the head and the class token at zero
        vit.heads.head.weight.normal_()
        vit.class_token.normal_()
    return vit


def test_legrad_of_the_last_block_equals_torchcam():
    """torchcam differentiates each block's own score (its tokens through the final norm and
    head); for the last block with the model's own pooling (the class token) that is the model's
    score, which camlens differentiates for every block."""
    vit = _torchvision_vit()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32))
    classes = [1, 3]

    def head(tokens):  # the model's own head: final norm, class token, classifier
        return vit.heads(vit.encoder.ln(tokens)[:, 0])

    with methods.LeGrad(vit, [vit.encoder.layers[-1]], score_projection=head) as extractor:
        scores = vit(x)
        want = extractor(classes, scores=scores, normalized=False)[0].detach().numpy()
    assert want.shape == (2, 4, 4) and np.ptp(want) > 0
    got = camlens.explain(vit, x, method=camlens.methods.LeGrad(blocks=[-1]), target=classes)
    np.testing.assert_allclose(got.raw_maps[0], want, rtol=1e-4, atol=1e-7)
    # every block: the first block's gradient joins the mean, so the map changes
    both = camlens.explain(vit, x, method="legrad", target=classes)
    assert not np.allclose(both.raw_maps[0], want, rtol=1e-3, atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())
