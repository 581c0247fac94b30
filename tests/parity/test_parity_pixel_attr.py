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


def _grid_mask(size=8, cells=4):
    from camlens.methods.surrogate import segment

    return segment(np.zeros((1, size, size, 3)), "grid", grid=cells)[0]


def test_lime_matches_captum_ridge_with_the_same_coalitions():
    from captum._utils.models.linear_model import SkLearnRidge
    from camlens.methods import Lime

    model, x = _cnn(), _inputs(n=1)
    labels = _grid_mask()
    m, k = int(labels.max()) + 1, 40
    z = (np.random.default_rng(2).random((k, m)) < 0.5).astype(np.int64)
    rows = iter(torch.from_numpy(z[i : i + 1]) for i in range(k))
    lime = captum_attr.Lime(model, interpretable_model=SkLearnRidge(alpha=1.0),
                            perturb_func=lambda inp, **kw: next(rows))
    mask = torch.from_numpy(labels.astype(np.int64))[None, None]
    want = lime.attribute(x, target=0, n_samples=k, feature_mask=mask, baselines=0.0,
                          return_input_shape=False)
    method = Lime(n_samples=k, segments=labels, coalitions=lambda n, im, mm, kk: z, batch_size=7)
    exp = camlens.explain(model, x, method, target=0)
    got = exp.details[0]["weights"][0]
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-4)
    assert exp.details[0]["n_runs"].tolist() == [k] and np.abs(got).max() > 1e-3


def test_kernelshap_matches_captum_with_captum_coalitions():
    from camlens.methods import KernelShap

    class Recording(captum_attr.KernelShap):
        drawn: list = []

        def kernel_shap_perturb_generator(self, original_inp, **kwargs):
            for z in super().kernel_shap_perturb_generator(original_inp, **kwargs):
                self.drawn.append(z.numpy().copy())
                yield z

    model, x = _cnn(), _inputs(n=1)
    labels = _grid_mask()
    m, k = int(labels.max()) + 1, 60
    torch.manual_seed(3)
    shap = Recording(model)
    mask = torch.from_numpy(labels.astype(np.int64))[None, None]
    want = shap.attribute(x, target=0, n_samples=k, feature_mask=mask, baselines=0.0,
                          return_input_shape=False)
    drawn = np.concatenate(shap.drawn)
    assert drawn[0].all() and not drawn[1].any()  # captum's first two: f(1), f(0)
    sampled = drawn[2:k]
    method = KernelShap(n_samples=len(sampled), segments=labels,
                        coalitions=lambda n, im, mm, kk: sampled)
    exp = camlens.explain(model, x, method, target=0)
    got = exp.details[0]["weights"][0]
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-4)
    # efficiency holds exactly in camlens, up to captum's 1e6 end weight there
    d = exp.details[0]
    np.testing.assert_allclose(got.sum(), d["full_score"][0] - d["base_score"][0], rtol=1e-5)
