"""Attention rollout, LeGrad and Finer-CAM on given arrays and tiny models, with hand-computed maps."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.targets import ClassScore, ContrastScore, RegressionScore

# ---------------------------------------------------------------------------- Finer-CAM


def test_contrast_score_picks_the_nearest_other_classes():
    z = np.array([[5.0, 4.0, 9.0, 5.5, 0.0], [1.0, 1.0, 3.0, 0.0, 2.0]], np.float32)
    t = ContrastScore(gamma=0.5, references=2)
    refs = t.reference_classes(z, np.array([0, 2]))
    # sample 0: |z - 5| = [inf, 1, 4, 0.5, 5] -> 3, 1; sample 1: |z - 3| = [2, 2, inf, 3, 1] -> 4, 0 (tie: lower)
    assert refs.tolist() == [[3, 1], [4, 0]]
    from camlens.adapters.arrays import NumpyOps

    s = t.score([z], ["out"], NumpyOps)  # index None: the top class (2 and 2)
    np.testing.assert_allclose(s, [9.0 - 0.5 * (5.5 + 5.0) / 2, 3.0 - 0.5 * (2.0 + 1.0) / 2])
    assert ContrastScore(references=9).reference_classes(z, np.array([0, 0])).shape == (2, 4)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        ContrastScore(gamma=-1)
    with pytest.raises(ValueError, match="references must be a positive integer"):
        camlens.methods.get_method("finercam").__class__(references=0)


def _keras_cnn():
    import keras

    inp = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv",
                            kernel_initializer="zeros")(inp)
    out = keras.layers.Dense(6, activation="softmax", name="head", kernel_initializer="zeros")(
        keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for w in model.weights:
        w.assign(rng.normal(0, 1, tuple(w.shape)).astype(np.float32))
    return model


def test_finercam_on_keras_is_gradcam_of_the_logit_contrast():
    """Conv -> GAP -> Dense(softmax): dS/dA is (W[:, c] - gamma mean_t W[:, d_t]) / 25 at every
    position, on the logits (the softmax is skipped)."""
    import keras

    model = _keras_cnn()
    x = np.random.default_rng(2).normal(size=(3, 5, 5, 2)).astype(np.float32)
    exp = camlens.explain(model, x, method="finercam", target=[1, 4, 0], layer="conv")
    acts = np.asarray(keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer("conv").output)(x)))
    kernel, bias = (np.asarray(keras.ops.convert_to_numpy(w)) for w in model.get_layer("head").weights)
    logits = acts.mean(axis=(1, 2)) @ kernel + bias
    for n, c in enumerate([1, 4, 0]):
        dist = np.abs(logits[n] - logits[n, c])
        dist[c] = np.inf
        refs = np.argsort(dist, kind="stable")[:3]
        w = (kernel[:, c] - 0.6 * kernel[:, refs].mean(axis=1)) / 25
        want = np.maximum(acts[n] @ w, 0)
        np.testing.assert_allclose(exp.raw_maps[0][n], want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(exp.scores[n], logits[n, c] - 0.6 * logits[n, refs].mean(), rtol=1e-4)
    assert "closest classes" in exp.target
    same = camlens.explain(model, x, method=camlens.methods.get_method("finercam").__class__(gamma=0.0),
                           target=[1, 4, 0], layer="conv")
    logit = camlens.explain(model, x, method="gradcam", target=camlens.targets.Logit([1, 4, 0]), layer="conv")
    np.testing.assert_allclose(same.raw_maps[0], logit.raw_maps[0], rtol=1e-5, atol=1e-7)


def test_finercam_refuses_a_target_without_classes():
    model = _keras_cnn()
    x = np.zeros((1, 5, 5, 2), np.float32)
    with pytest.raises(ValueError, match="finercam contrasts one class.*method='gradcam'"):
        camlens.explain(model, x, method="finercam", target=RegressionScore(0), layer="conv")
    # a ClassScore with an output name keeps it
    assert camlens.methods.get_method("finercam").retarget(ClassScore(2, output="head")).output == "head"
