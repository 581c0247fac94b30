"""Spearman's rank correlation by hand, and the cascading randomization check on copies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camlens import metrics


def test_spearman_with_ties_by_hand():
    # ranks of a: [1, 2.5, 2.5, 4]; of b: [1, 3, 2, 4]; centred: [-1.5, 0, 0, 1.5], [-1.5, .5, -.5, 1.5]
    # rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert metrics.spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(math.sqrt(0.9))
    assert metrics.spearman([[1, 5], [3, 7]], [[0, 2], [1, 9]]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one size"):
        metrics.spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 200), rng.integers(0, 7, 200)  # many ties
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def _keras_model():
    import keras

    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(x))


IMAGES = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")


def test_keras_cascade_leaves_the_model_unchanged():
    model = _keras_model()
    before = [w.copy() for w in model.get_weights()]
    res = metrics.randomization_check(model, IMAGES, "gradcam", layer="conv2")
    assert res.layers == ["head", "conv2", "conv1"]  # from the output back; bn has no kernel
    assert res.correlations.shape == (3, 2) and len(res.maps) == 3
    assert np.all((res.correlations[np.isfinite(res.correlations)] <= 1 + 1e-12))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    again = metrics.randomization_check(model, IMAGES, "gradcam", layer="conv2")
    np.testing.assert_array_equal(again.correlations, res.correlations)  # seeded
    # the original maps are the model's own
    import camlens

    np.testing.assert_allclose(res.original, camlens.explain(model, IMAGES, layer="conv2").map)
    assert "head" in str(res)


def test_chosen_layers_are_followed_in_order():
    model = _keras_model()
    res = metrics.randomization_check(model, IMAGES, "gradcam", layer="conv2", layers=["head", "conv1"])
    assert res.layers == ["head", "conv1"]
    with pytest.raises(ValueError, match="no layer 'bn' with a kernel.*'head', 'conv2', 'conv1'"):
        metrics.randomization_check(model, IMAGES, layers=["bn"])


def test_torch_cascade_on_a_copy():
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(np.moveaxis(IMAGES, -1, 1).copy())
    res = metrics.randomization_check(net, x, "gradcam", layer="3")
    assert res.layers == ["6", "2", "0"]
    assert res.correlations.shape == (3, 2)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training  # the user's mode is kept too
