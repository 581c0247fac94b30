"""The rest of the toolbox through ``camlens.explain`` on Keras and PyTorch models: pixel
attributions with exact numbers, Integrated Gradients' completeness, chunked == one-shot for
the model-rerunning methods, Guided Backprop leaving the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens import methods, targets
from camlens.adapters import adapt
from hand_computed import SCORE, X
from keras_models import one_conv_net, probe_free, small_classifier
from torch_models import one_conv_net as torch_one_conv_net


def torch_small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


NETS = {"keras": one_conv_net, "torch": torch_one_conv_net}

# S = 5 mean(x) on the 4x4 image X: dS/dx = 5/16 at every pixel.
G = 5 / 16
PIXEL_EXPECTED = {
    "saliency": np.full((4, 4), G),
    "smoothgrad": np.full((4, 4), G),  # the gradient of a linear score is the same at any noise
    "guidedbackprop": np.full((4, 4), G),  # no ReLU: the plain gradient
    "integratedgradients": X[0, :, :, 0] * G,  # (x - 0) * dS/dx, exact for a linear score
    "occlusion": X[0, :, :, 0] * G,  # window 1, stride 1, fill 0: S(x) - S(x without pixel ij)
}


@pytest.mark.filterwarnings("ignore:the map at .* is constant")  # a linear net: flat gradients
@pytest.mark.parametrize("framework", sorted(NETS))
@pytest.mark.parametrize("method", sorted(PIXEL_EXPECTED))
def test_pixel_methods_exact_on_the_one_conv_net(framework, method):
    algo = methods.Occlusion(window=1, stride=1) if method == "occlusion" else method
    exp = camlens.explain(NETS[framework](), X, method=algo, target=0)
    assert exp.sites[0].input_index == 0
    assert exp.raw_maps[0].shape == (1, 4, 4)
    np.testing.assert_allclose(exp.raw_maps[0][0], PIXEL_EXPECTED[method], rtol=1e-5, atol=1e-6)
    assert exp.scores[0] == pytest.approx(SCORE)
    assert exp.details[0]["attributions"].shape == (1, 4, 4, 1)
    assert exp.maps[0].shape == (1, 4, 4)


def test_pixel_methods_take_no_layer():
    with pytest.raises(ValueError, match="uses no layer"):
        camlens.explain(one_conv_net(), X, method="saliency", layer="conv")


def test_integrated_gradients_completeness_within_one_percent_at_64_steps():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 16, 16, 3)).astype("float32")
    for model in (small_classifier(activation=None), torch_small_cnn()):
        exp = camlens.explain(model, x, method=methods.IntegratedGradients(steps=64), target=1)
        err = exp.details[0]["completeness_error"]
        assert err.shape == (2,)
        assert (err < 0.01).all(), err
        # completeness, recomputed here: the attributions add up to S(x) - S(0)
        adapter = adapt(model)
        s0 = adapter.score(adapter.prepare(np.zeros_like(x)), targets.ClassScore(1))
        total = exp.details[0]["attributions"].sum(axis=(1, 2, 3))
        np.testing.assert_allclose(total, exp.scores - s0, rtol=0.01)


def test_guided_backprop_leaves_the_model_activations_and_gradients_as_they_were():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    for model in (small_classifier(activation=None), torch_small_cnn()):
        before = camlens.explain(model, x, method="gradcam", target=2)
        adapter = adapt(model)
        arrays = adapter.prepare(x)
        node = [n for n in adapter.graph().nodes if n.path == before.sites[0].layer]
        cap0 = adapter.capture(arrays, node, targets.ClassScore(2))
        guided = camlens.explain(model, x, method="guidedbackprop", target=2)
        plain = camlens.explain(model, x, method="saliency", target=2)
        assert not np.allclose(guided.details[0]["attributions"], plain.details[0]["attributions"])
        after = camlens.explain(model, x, method="gradcam", target=2)
        cap1 = adapter.capture(arrays, node, targets.ClassScore(2))
        np.testing.assert_array_equal(after.raw_maps[0], before.raw_maps[0])
        np.testing.assert_array_equal(cap1.sites[0].activations, cap0.sites[0].activations)
        np.testing.assert_array_equal(cap1.sites[0].gradients, cap0.sites[0].gradients)
        if not _is_keras(model):
            assert all("forward" not in m.__dict__ for m in model.modules())
        else:
            assert probe_free(model)
            assert all("activation" not in l.__dict__ or l.activation.__name__ != "tf_guided"
                       for l in model.layers)


@pytest.mark.parametrize("make", [lambda: small_classifier(activation=None), torch_small_cnn],
                         ids=["keras", "torch"])
@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "sscam", "iscam"])
def test_chunked_equals_one_shot_through_explain(make, name):
    model = make()
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype("float32")
    cls = type(methods.get_method(name))
    kwargs = {"n_samples": 2, "seed": 0} if name == "sscam" else {"n_steps": 2} if name == "iscam" else {}
    maps = [
        camlens.explain(model, x, method=cls(batch_size=b, **kwargs), target=1, batch_size=eb).raw_maps[0]
        for b, eb in [(1, 1), (3, 2), (8, 16), (100, 16)]
    ]
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: small_classifier(activation=None), torch_small_cnn],
                         ids=["keras", "torch"])
def test_ablation_cam_equals_the_whole_model_computation(make):
    # y_c from the whole model with channel c of the layer zeroed by a hook, by this test
    model = make()
    x = np.random.default_rng(3).normal(size=(1, 16, 16, 3)).astype("float32")
    exp = camlens.explain(model, x, method="ablationcam", target=3)
    adapter = adapt(model)
    arrays = adapter.prepare(x)
    node = [n for n in adapter.graph().nodes if n.path == exp.sites[0].layer][0]
    acts = adapter.capture(arrays, [node], targets.ClassScore(3), False).sites[0].activations
    C = acts.shape[-1]
    y = exp.scores[0]
    ys = []
    for c in range(C):
        ablated = acts.copy()
        ablated[..., c] = 0.0
        ys.append(_whole_model_score(model, node.path, x, ablated, 3))
    w = (y - np.array(ys)) / abs(y)
    expected = np.maximum(np.einsum("hwc,c->hw", acts[0], w), 0.0)
    np.testing.assert_allclose(exp.raw_maps[0][0], expected, rtol=1e-4, atol=1e-5)


def _is_keras(model) -> bool:
    return hasattr(model, "get_layer")  # Keras models are nn.Modules too on the torch backend


def _whole_model_score(model, layer, x, acts, cls):
    if not _is_keras(model):
        mod = dict(model.named_modules())[layer]
        repl = torch.from_numpy(np.moveaxis(acts, -1, 1).copy())
        h = mod.register_forward_hook(lambda m, a, o: repl)
        try:
            with torch.no_grad():
                return float(model(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))[0, cls])
        finally:
            h.remove()
    import keras

    lyr = model.get_layer(layer)
    object.__setattr__(lyr, "call", lambda *a, **k: keras.ops.convert_to_tensor(acts))
    try:
        return float(keras.ops.convert_to_numpy(model(x))[0, cls])
    finally:
        object.__delattr__(lyr, "call")


def test_smooth_gradcampp_without_noise_is_gradcampp():
    model = small_classifier(activation=None)
    x = np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype("float32")
    smooth = camlens.explain(model, x, method=methods.SmoothGradCAMPlusPlus(n_samples=3, sigma=0.0), target=0)
    plain = camlens.explain(model, x, method="gradcam++", target=0)
    np.testing.assert_allclose(smooth.raw_maps[0], plain.raw_maps[0], rtol=1e-5, atol=1e-7)
    noisy = camlens.explain(model, x, method=methods.SmoothGradCAMPlusPlus(n_samples=3, seed=0), target=0)
    assert not np.allclose(noisy.raw_maps[0], plain.raw_maps[0])


@pytest.mark.parametrize("make", [lambda: small_classifier(activation=None), torch_small_cnn],
                         ids=["keras", "torch"])
def test_guided_gradcam_is_guided_backprop_times_the_gradcam_map(make):
    model = make()
    x = np.random.default_rng(5).normal(size=(1, 16, 16, 3)).astype("float32")
    exp = camlens.explain(model, x, method="guidedgradcam", target=1)
    cam = camlens.explain(model, x, method="gradcam", target=1)
    guided = camlens.explain(model, x, method="guidedbackprop", target=1)
    assert exp.sites[0].layer == cam.sites[0].layer
    expected = guided.details[0]["attributions"] * cam.maps[0][..., None]
    np.testing.assert_allclose(exp.details[0]["attributions"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(exp.raw_maps[0], np.abs(expected).max(axis=-1), rtol=1e-5, atol=1e-7)
