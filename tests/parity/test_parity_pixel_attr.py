"""Input x Gradient, GradientSHAP, LIME and KernelSHAP against captum on a small torch CNN,
with the same random draws (captum's recorded or reproduced): per value within 1e-4."""

from __future__ import annotations

import os

import numpy as np
import pytest

import camlens
from camlens.methods import GradientShap, InputXGradient

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("torch-only parity: run once, on the tensorflow leg", allow_module_level=True)


def _cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3),
    ).eval()
    return model


def _inputs(n=2, size=8):
    return torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32))


def _nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def test_inputxgradient_matches_captum():
    model, x = _cnn(), _inputs()
    want = captum_attr.InputXGradient(model).attribute(x.clone().requires_grad_(), target=2)
    exp = camlens.explain(model, x, InputXGradient(), target=2)
    got = exp.details[0]["attributions"]
    np.testing.assert_allclose(got, _nhwc(want), atol=1e-4)
    np.testing.assert_allclose(exp.raw_maps[0], _nhwc(want).sum(-1), atol=1e-4)


def test_gradientshap_matches_captum_with_the_same_draws():
    model, x = _cnn(), _inputs(n=1)
    bases = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32))
    k, stdevs = 6, 0.2
    torch.manual_seed(5)
    np.random.seed(5)
    want = captum_attr.GradientShap(model).attribute(x, bases, n_samples=k, stdevs=stdevs, target=1)
    # captum's order of draws (N = 1): baseline indices (numpy), noise (torch, NCHW), alphas
    torch.manual_seed(5)
    np.random.seed(5)
    idx = np.random.choice(len(bases), k)
    noise = torch.normal(0, torch.tensor(stdevs).repeat((k, 3, 8, 8))).numpy()
    alpha = np.random.uniform(0.0, 1.0, k)
    draws = lambda n, image, kk: (idx, np.moveaxis(noise, 1, -1), alpha)
    method = GradientShap(baselines=_nhwc(bases), n_samples=k, stdevs=stdevs, draws=draws, batch_size=4)
    got = camlens.explain(model, x, method, target=1).details[0]["attributions"]
    np.testing.assert_allclose(got, _nhwc(want), atol=1e-4)
    assert np.abs(got).max() > 1e-3  # not trivially equal
