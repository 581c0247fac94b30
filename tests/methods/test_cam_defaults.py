"""CAM's defaults on seed 002's model (a GlobalAveragePooling + Dense(softmax) classifier): the
map and the scores are of the class logit, negative evidence is kept unless CAM(relu=True), and
CAM(relu=True) equals Grad-CAM of the logit; at the defaults Grad-CAM explains the probability."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers as L

import camlens
from camlens.methods import CAM, SiteData


def seed_002_model() -> keras.Model:
    """conv -> GlobalAveragePooling2D -> Dense(2, softmax): the blog's ResNet50 head, small."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(6, 3, activation="relu", name="conv"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(2, activation="softmax", name="head"),
    ])


@pytest.fixture(scope="module")
def setup():
    model = seed_002_model()
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    conv = keras.Model(model.inputs[0], model.get_layer("conv").output)
    acts = np.asarray(keras.ops.convert_to_numpy(conv(x)), np.float64)  # (3, 6, 6, 6)
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer("head").get_weights())
    logits = acts.mean(axis=(1, 2)) @ kernel + bias
    return model, x, acts, kernel, logits


def test_cam_explains_the_logit_by_default(setup):
    model, x, acts, kernel, logits = setup
    exp = camlens.explain(model, x, method="cam")
    top = logits.argmax(axis=1)
    assert exp.target == "logit of the top class"
    np.testing.assert_array_equal(exp.class_indices, top)
    np.testing.assert_allclose(exp.scores, logits[np.arange(3), top], rtol=1e-5, atol=1e-6)
    # the paper's M_c = sum_k w_k^c f_k, signed: negative evidence is kept in the raw map
    want = np.einsum("nhwc,cn->nhw", acts, kernel[:, top])
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-5, atol=1e-6)
    assert (want < 0).any() and (want > 0).any()
    # an explicit class score is the logit too: the weights never see the softmax
    named = camlens.explain(model, x, method="cam", target=camlens.targets.ClassScore(1))
    assert named.target == "logit of the class 1"
    np.testing.assert_allclose(named.scores, logits[:, 1], rtol=1e-5, atol=1e-6)


def test_cam_relu_equals_gradcam_of_the_logit_and_defaults_differ(setup):
    model, x, acts, kernel, logits = setup
    z = acts.shape[1] * acts.shape[2]
    cam = camlens.explain(model, x, method="cam")
    logit = camlens.explain(model, x, method="gradcam", target=camlens.targets.Logit())
    # Grad-CAM of the logit = relu(CAM) / Z, raw, and equal maps once normalised
    np.testing.assert_allclose(logit.raw_maps[0], np.maximum(cam.raw_maps[0], 0) / z, rtol=1e-5, atol=1e-7)
    relu = camlens.explain(model, x, method=CAM(relu=True))
    np.testing.assert_allclose(relu.maps[0], logit.maps[0], atol=2e-6)
    np.testing.assert_array_equal(relu.raw_maps[0], np.maximum(cam.raw_maps[0], 0))
    # at the defaults they differ: CAM keeps the negative evidence, Grad-CAM explains the
    # softmax probability p_c, whose gradient p_c (W_c - sum_k p_k W_k) / Z weighs class c
    # against the other
    default = camlens.explain(model, x, method="gradcam")
    assert default.target == "score of the top class"
    assert np.abs(cam.maps[0] - default.maps[0]).max() > 0.1
    top = logits.argmax(axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    w = (kernel[:, top].T - p @ kernel.T) * p[np.arange(3), top][:, None] / z  # (N, C)
    want = np.maximum(np.einsum("nhwc,nc->nhw", acts, w), 0)
    np.testing.assert_allclose(default.raw_maps[0], want, rtol=1e-4, atol=1e-7)


def test_cam_relu_option():
    A = np.stack([np.eye(2), np.ones((2, 2))], axis=-1)[None]
    W = np.array([[2.0, -1.0]])
    assert CAM()(SiteData(A, head_weights=W))[0].tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    assert CAM(relu=True)(SiteData(A, head_weights=W))[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(TypeError, match="cam: relu must be True or False; got 'yes'"):
        CAM(relu="yes")
