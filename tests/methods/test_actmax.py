"""camlens.visualize: feature visualization by activation maximization.

The parametrisations' gradients against finite differences, the known optimum of a 1x1
convolution under an L2 penalty, the ascent on small CNNs (Keras on the running backend, and a
native torch module), determinism, the logit objective, bad arguments and the command line.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import camlens
from camlens import _visualize as V

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


# ---------------------------------------------------------------------------- numpy parts
@pytest.mark.parametrize("param", ["fourier", "pixels"])
@pytest.mark.parametrize("size", [(6, 8), (5, 7)])  # even and odd widths: the Nyquist column
def test_the_parametrisation_gradient_matches_finite_differences(param, size):
    rng = np.random.default_rng(1)
    img = V._Image(2, *size, param, True, rng)
    params = [p + rng.normal(0, 0.3, p.shape) for p in img.params]
    probe = rng.normal(size=(2, *size, 3))  # f(params) = sum(probe * rgb)
    grads = img.backward(img.rgb(params), probe)
    eps = 1e-6
    for k, p in enumerate(params):
        for flat in rng.choice(p.size, 12, replace=False):
            i = np.unravel_index(flat, p.shape)
            up = [q.copy() for q in params]
            down = [q.copy() for q in params]
            up[k][i] += eps
            down[k][i] -= eps
            numeric = (np.sum(probe * img.rgb(up)) - np.sum(probe * img.rgb(down))) / (2 * eps)
            assert grads[k][i] == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_the_penalty_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    rgb = rng.random((1, 5, 6, 3))

    def value(x):
        dy, dx = np.diff(x, axis=1), np.diff(x, axis=2)
        return -0.7 * np.mean((x - 0.5) ** 2) - 0.3 * (np.mean(dy ** 2) + np.mean(dx ** 2))

    g = V._penalties(rgb, 0.7, 0.3)
    for flat in range(0, rgb.size, 7):
        i = np.unravel_index(flat, rgb.shape)
        up, down = rgb.copy(), rgb.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        assert g[i] == pytest.approx((value(up) - value(down)) / 2e-6, rel=1e-5, abs=1e-10)


def test_channels_are_parsed_as_on_the_command_line():
    assert V.parse_channels("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    with pytest.raises(ValueError, match="0-15"):
        V.parse_channels("3-1")


# ---------------------------------------------------------------------------- models
def _keras_one_by_one(w):
    import keras

    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(1, 1, use_bias=False, name="conv")
    x = keras.layers.GlobalAveragePooling2D()(conv(inp))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(x))
    conv.set_weights([np.asarray(w, np.float32).reshape(1, 1, 3, 1)])
    return model


def _torch_one_by_one(w):
    import torch

    conv = torch.nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.asarray(w, np.float32).reshape(1, 3, 1, 1)))
    return torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_a_one_by_one_convolution_under_l2_reaches_its_known_optimum(kind):
    """Channel mean of ``w . x`` with ``x = 2 rgb - 1`` ("symmetric"), minus
    ``l2 * mean((rgb - 0.5)^2)``: each pixel's optimum is ``rgb = 0.5 + 3 w / l2`` (inside
    the sigmoid's range here), a direction ``w / |w|`` on the model input."""
    if kind == "torch" and BACKEND != "torch":
        pytest.skip("native torch does not depend on the Keras backend: checked in the torch run")
    w = np.array([0.05, -0.03, 0.02])
    model = _keras_one_by_one(w) if kind == "keras" else _torch_one_by_one(w)
    layer = "conv" if kind == "keras" else "0"
    vis = camlens.visualize(model, layer, 0, size=None if kind == "keras" else (8, 8), preprocess="symmetric",
                            param="pixels", decorrelate=False, jitter=0, l2=1.0, steps=150, lr=0.1)
    want = 0.5 + 3 * w
    np.testing.assert_allclose(vis.images[0], np.broadcast_to(want, (8, 8, 3)), atol=1e-3)
    direction = (2 * vis.images[0] - 1).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(direction / np.linalg.norm(direction), w / np.linalg.norm(w), atol=2e-3)
    assert vis.final[0] == pytest.approx(float(2 * w @ (3 * w)), rel=1e-3)  # w . x at the optimum


def _keras_cnn():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU(name="r2")(x))
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))


def _torch_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))


def _rises(vis):
    first, last = vis.objectives[:3].mean(axis=0), vis.objectives[-3:].mean(axis=0)
    assert np.all(last > first + 0.1 * np.abs(first) + 1e-3), (first, last)
    assert np.all(vis.final >= last - 0.05 * np.abs(last))


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_the_objective_rises_on_a_keras_cnn(param):
    if param == "pixels" and BACKEND != "tensorflow":
        pytest.skip("the parametrisation is numpy: one backend is enough")
    vis = camlens.visualize(_keras_cnn(), "c2", [0, 1, 2, 3], steps=25, jitter=2, tv=0.05, l2=0.05,
                            blur_every=8, param=param, batch_size=3)
    assert vis.images.shape == (4, 24, 24, 3) and vis.objectives.shape == (25, 4)
    assert vis.images.min() >= 0 and vis.images.max() <= 1
    assert vis.labels == [f"c2 ch {c}" for c in range(4)]
    _rises(vis)


def test_the_objective_rises_on_a_torch_cnn_for_channels_and_a_neuron():
    if BACKEND != "torch":
        pytest.skip("native torch does not depend on the Keras backend: checked in the torch run")
    model = _torch_cnn()
    _rises(camlens.visualize(model, "2", [0, 1, 2, 3], size=(24, 24), steps=25, jitter=2))
    neuron = camlens.visualize(model, "2", [1], position=(3, 5), size=(24, 24), steps=25, jitter=0)
    assert neuron.labels == ["2 ch 1 at (3, 5)"]
    _rises(neuron)


def test_the_logit_objective_is_the_logit_before_the_softmax():
    model = _keras_cnn()
    vis = camlens.visualize(model, classes=[0, 2], steps=20, jitter=2)
    _rises(vis)
    relu = camlens.feature_maps(model, vis.images * 255.0, ["r2"])["r2"].mean(axis=(1, 2))
    kernel, bias = model.get_layer("head").get_weights()
    logits = relu @ kernel + bias
    np.testing.assert_allclose(vis.final, logits[[0, 1], [0, 2]], rtol=1e-4, atol=1e-5)


_DEAD_OK = pytest.mark.filterwarnings("ignore:.*the gradient was zero")  # a random tiny model


@_DEAD_OK
def test_a_seed_gives_the_same_images_whatever_the_batch_size():
    model = _keras_cnn()
    a = camlens.visualize(model, "c1", [0, 3, 5], steps=6, seed=3)
    b = camlens.visualize(model, "c1", [0, 3, 5], steps=6, seed=3, batch_size=1)
    c = camlens.visualize(model, "c1", [0, 3, 5], steps=6, seed=4)
    np.testing.assert_allclose(a.images, b.images, atol=1e-5)
    np.testing.assert_array_equal(a.images, camlens.visualize(model, "c1", [0, 3, 5], steps=6, seed=3).images)
    assert np.abs(a.images - c.images).max() > 1e-2


def test_a_channel_that_never_gets_a_gradient_is_said():
    import keras

    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="conv")
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(conv(inp)))
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[..., 1] = 1.0  # channel 0 is -1 everywhere before its ReLU, channel 1 fires
    conv.set_weights([kernel, np.array([-1.0, 0.0], np.float32)])
    with pytest.warns(RuntimeWarning, match="^conv ch 0: the gradient was zero at every step"):
        vis = camlens.visualize(model, "conv", [0, 1], steps=3)
    assert vis.flat == [0]


@_DEAD_OK
def test_save_writes_the_grid_the_images_and_the_index(tmp_path):
    vis = camlens.visualize(_keras_cnn(), "c2", [2, 0], steps=3, jitter=1)
    written = vis.save(tmp_path)
    assert sorted(p.name for p in written) == ["c2-ch-0.png", "c2-ch-2.png", "grid.png", "index.json"]
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["layer"] == "c2" and [e["unit"] for e in meta["images"]] == [2, 0]
    assert meta["settings"]["steps"] == 3 and meta["settings"]["objective"] == "channel mean"
    from PIL import Image

    assert Image.open(tmp_path / "c2-ch-2.png").size == (24, 24)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer="c2", channels=[0, 4]), r"channel 4 is out of range: layer 'c2' has 4 channels \(0-3\)"),
    (dict(layer="nope", channels=[0]), "no layer 'nope'"),
    (dict(layer="spatial", channels=[0]), "no layer 'spatial'"),  # one layer, by name
    (dict(layer="head", channels=[0]), "not a \\(height, width, channels\\) feature map"),
    (dict(layer="c2", channels=[0], classes=[1]), "not both"),
    (dict(classes=[3]), r"class 3 is out of range: the model gives 3 classes"),
    (dict(layer="c2"), "give layer= and channels="),
    (dict(layer="c2", channels=[0], position=(12, 0)), r"position must be \(y, x\) on the layer's 12x12 map"),
    (dict(layer="c2", channels=[0], size=(32, 32)), "differs from the model's input size"),
    (dict(layer="c2", channels=[0], param="lucent"), "unknown param 'lucent'"),
    (dict(layer="c2", channels=[0], steps=0), "steps must be a whole number of at least 1"),
    (dict(layer="c2", channels=[0], preprocess=lambda x: np.sqrt(x)), "does not scale pixels linearly"),
])
def test_bad_arguments_give_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        camlens.visualize(_keras_cnn(), **kwargs)


def test_a_torch_module_needs_a_size():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"give size=\(H, W\)"):
        camlens.visualize(_torch_cnn(), "2", [0])


# ---------------------------------------------------------------------------- command line
@_DEAD_OK
def test_the_command_line_writes_the_files_and_refuses_a_bad_channel(tmp_path, capsys):
    from camlens.cli import main
    from keras_models import saved_cli_classifier

    path = saved_cli_classifier(tmp_path / "m.keras", size=16)
    out = tmp_path / "vis"
    assert main(["visualize", str(path), "--layer", "last_conv", "--channels", "0-2,5", "--steps", "4",
                 "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png", "index.json", "last_conv-ch-0.png", "last_conv-ch-1.png", "last_conv-ch-2.png",
        "last_conv-ch-5.png"]
    assert main(["visualize", str(path), "--classes", "2", "--steps", "2", "-o", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "index.json").read_text())["images"][0]["label"] == "logit of class 2"
    capsys.readouterr()
    assert main(["visualize", str(path), "--layer", "last_conv", "--channels", "8", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "camlens: channel 8 is out of range: layer 'last_conv' has 8 channels (0-7)")
    assert main(["visualize", str(path), "--channels", "1", "-o", str(out)]) == 2
    assert "give --layer and --channels" in capsys.readouterr().err
