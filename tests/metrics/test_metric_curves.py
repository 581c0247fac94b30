"""Deletion and insertion (RISE protocol): exact curves and AUCs on models known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

import camlens
from camlens import metrics, targets
from metric_toys import (
    DELETION_MEANS,
    IMAGE,
    INSERTION_MEANS,
    MAP,
    counting,
    mean_model,
    sigmoid,
    torch_mean_model,
)


# ------------------------------------------------------------------ the AUC itself
def test_auc_trapezoid_by_hand():
    assert metrics.auc([0.0, 1.0, 0.0]) == pytest.approx(0.5)
    # uneven axis: 0.5 * (1 + 3) / 2 + 0.25 * (3 + 2) / 2 + 0.25 * (2 + 0) / 2 = 1.875
    assert metrics.auc([1.0, 3.0, 2.0, 0.0], x=[0.0, 0.5, 0.75, 1.0]) == pytest.approx(1.875)
    np.testing.assert_allclose(metrics.auc([[1.0, 1.0], [0.0, 2.0]]), [1.0, 1.0])
    with pytest.raises(ValueError, match="at least 2 points"):
        metrics.auc([1.0])
    with pytest.raises(ValueError, match="x has shape"):
        metrics.auc([1.0, 2.0], x=[0.0, 0.5, 1.0])


# ------------------------------------------------------------------ exact curves
def test_deletion_logit_curve_and_auc_by_hand():
    res = metrics.deletion(mean_model(), IMAGE, MAP, steps=4, score="logit")
    np.testing.assert_allclose(res.x, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(res.curve[0], DELETION_MEANS, rtol=1e-6)
    # 0.25 * ((2.5 + 1.5) + (1.5 + 1) + (1 + 0.75) + (0.75 + 0)) / 2 = 1.125
    assert res.auc[0] == pytest.approx(1.125, rel=1e-6)
    assert res.value == pytest.approx(1.125, rel=1e-6)
    assert res.metric == "deletion" and not res.higher_is_better
    assert res.score == "logit of the explained class"


@pytest.mark.parametrize("softmax", [False, True])
def test_deletion_probability_same_for_logit_and_softmax_models(softmax):
    res = metrics.deletion(mean_model(softmax=softmax), IMAGE, MAP, steps=4)
    want = sigmoid(2 * DELETION_MEANS)  # p_0 = e^m / (e^m + e^-m)
    np.testing.assert_allclose(res.curve[0], want, rtol=1e-6)
    assert res.auc[0] == pytest.approx(0.25 * (want.sum() - (want[0] + want[-1]) / 2), rel=1e-6)
    how = "already a probability" if softmax else "softmax of the model's output"
    assert how in res.score


def test_insertion_from_a_constant_by_hand():
    res = metrics.insertion(mean_model(), IMAGE, MAP, steps=4, baseline=0.0, score="logit")
    np.testing.assert_allclose(res.curve[0], INSERTION_MEANS, rtol=1e-6)
    assert res.auc[0] == pytest.approx(1.375, rel=1e-6)  # 0.25 * (0.5 + 1.25 + 1.625 + 2.125)
    assert res.higher_is_better


def test_insertion_starts_from_the_blurred_image():
    rng = np.random.default_rng(0)
    x = rng.random((1, 6, 6, 1)).astype("float32")
    m = rng.random((1, 6, 6))
    res = metrics.insertion(mean_model((6, 6)), x, m, steps=3, blur_sigma=2.0, blur_size=5, score="logit")
    blurred = metrics.gaussian_blur(x[0], 2.0, 5)
    assert res.curve[0, 0] == pytest.approx(blurred.mean(), rel=1e-5)
    assert res.curve[0, -1] == pytest.approx(x.mean(), rel=1e-5)
    # step 1: the 12 top-ranked pixels come from the image, the rest from the blur
    top = np.argsort(-m[0].ravel(), kind="stable")[:12]
    mixed = blurred[..., 0].ravel().copy()
    mixed[top] = x[0, ..., 0].ravel()[top]
    assert res.curve[0, 1] == pytest.approx(mixed.mean(), rel=1e-5)


def test_steps_that_do_not_divide_the_pixels():
    # 2x3 = 6 pixels, 4 steps: ceil(6 / 4) = 2 pixels per step, changed counts 0, 2, 4, 6, 6
    x = np.arange(1, 7, dtype="float32").reshape(1, 2, 3, 1)  # 1..6, sum 21
    m = -np.arange(6, dtype=float).reshape(1, 2, 3)  # ranks in row-major order
    res = metrics.deletion(mean_model((2, 3)), x, m, steps=4, score="logit")
    np.testing.assert_allclose(res.fraction, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(res.curve[0], np.array([21, 18, 11, 0, 0]) / 6, rtol=1e-6)
    # more steps than pixels: one pixel a step, then the empty image
    res = metrics.deletion(mean_model((2, 3)), x, m, steps=8, score="logit")
    np.testing.assert_allclose(res.curve[0], np.array([21, 20, 18, 15, 11, 6, 0, 0, 0]) / 6, rtol=1e-6)


def test_baseline_per_channel_and_raw_target():
    x = np.ones((1, 2, 2, 1), "float32")
    res = metrics.deletion(mean_model(), x, MAP, targets.Logit(0), steps=2, baseline=[3.0], score="raw")
    np.testing.assert_allclose(res.curve[0], [1.0, 2.0, 3.0], rtol=1e-6)
    assert res.score == "logit of the class 0"


def test_explicit_class_and_two_images():
    x = np.concatenate([IMAGE, -IMAGE])
    maps = np.concatenate([MAP, MAP])
    top = metrics.deletion(mean_model(), x, maps, steps=4, score="logit")
    # image 2 is negative: its top class is 1, whose logit is -m
    np.testing.assert_allclose(top.curve, [DELETION_MEANS, DELETION_MEANS], rtol=1e-6)
    fixed = metrics.deletion(mean_model(), x, maps, target=0, steps=4, score="logit")
    np.testing.assert_allclose(fixed.curve, [DELETION_MEANS, -DELETION_MEANS], rtol=1e-6)
    prob = metrics.deletion(mean_model(), x, maps, target=[0, 0], steps=4)
    np.testing.assert_allclose(prob.curve[1], sigmoid(-2 * DELETION_MEANS), rtol=1e-6)


def test_torch_module_same_curves():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.moveaxis(IMAGE, -1, 1).copy())
    res = metrics.deletion(torch_mean_model(), x, MAP, steps=4)
    np.testing.assert_allclose(res.curve[0], sigmoid(2 * DELETION_MEANS), rtol=1e-6)
    res = metrics.insertion(torch_mean_model(), x, MAP, steps=4, baseline=0.0, score="logit")
    np.testing.assert_allclose(res.curve[0], INSERTION_MEANS, rtol=1e-6)


def test_other_inputs_are_pinned_to_their_image():
    import keras

    img = keras.Input((2, 2, 1), name="image")
    shift = keras.Input((1,), name="shift")
    h = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(img), shift])
    out = keras.layers.Dense(1, use_bias=False, name="head")(h)
    model = keras.Model([img, shift], out)
    model.get_layer("head").set_weights([np.array([[1.0], [10.0]], "float32")])
    x = [np.concatenate([IMAGE, IMAGE]), np.array([[1.0], [2.0]], "float32")]
    res = metrics.deletion(model, x, np.concatenate([MAP, MAP]), targets.RegressionScore(0),
                           steps=4, score="raw", batch_size=2)
    np.testing.assert_allclose(res.curve, [DELETION_MEANS + 10, DELETION_MEANS + 20], rtol=1e-6)
    with pytest.raises(ValueError, match="score='raw'"):
        metrics.deletion(model, x, np.concatenate([MAP, MAP]), targets.RegressionScore(0))
    # an explanation of that target keeps it: the metric measures it again without target=
    exp = camlens.explain(model, x, method="saliency", target=targets.RegressionScore(0))
    assert exp.class_indices is None and isinstance(exp.target_spec, targets.RegressionScore)
    again = metrics.deletion(model, exp, np.concatenate([MAP, MAP]), steps=4, score="raw", batch_size=2)
    np.testing.assert_array_equal(again.curve, res.curve)
    with pytest.raises(ValueError, match="non-class target .* use score='raw'"):
        metrics.deletion(model, exp, steps=4)


def test_an_explanation_gives_images_maps_and_classes():
    from camlens.explanation import Explanation, Site

    x = np.concatenate([IMAGE, -IMAGE])
    maps = np.concatenate([MAP, MAP[:, ::-1]])
    exp = Explanation(maps=[maps], raw_maps=[maps], sites=[Site("image", 0, 0, (2, 2, 1))],
                      method="hand", target="class", scores=np.zeros(2),
                      class_indices=np.array([0, 0]), reason="", inputs=[x])
    got = metrics.deletion(mean_model(), exp, steps=4)
    want = metrics.deletion(mean_model(), x, maps, target=[0, 0], steps=4)
    np.testing.assert_array_equal(got.curve, want.curve)
    # image 2's class is the explained class 0, not its top class 1
    np.testing.assert_allclose(got.curve[0], sigmoid(2 * DELETION_MEANS), rtol=1e-6)
    assert got.curve[1, 0] == pytest.approx(sigmoid(-5.0), rel=1e-6)
    swapped = metrics.deletion(mean_model(), exp, maps[::-1], steps=4)  # given maps win
    np.testing.assert_allclose(swapped.curve[1, :2], sigmoid(-2 * DELETION_MEANS[:2]), rtol=1e-6)
    with pytest.raises(ValueError, match="site=3 is out of range"):
        metrics.deletion(mean_model(), exp, site=3)


# ------------------------------------------------------------------ cost
@pytest.mark.parametrize("batch_size", [1, 4, 11, 64])
def test_one_image_costs_ceil_steps_plus_one_over_batch_size_calls(batch_size):
    x = np.concatenate([IMAGE, IMAGE * 2])
    maps = np.concatenate([MAP, MAP])
    for fn in (metrics.deletion, metrics.insertion):
        for target in (None, 0):  # the top class comes from the unmodified image, no extra call
            adapter = counting(mean_model())
            fn(adapter, x, maps, target, steps=10, batch_size=batch_size)
            assert len(adapter.calls) == 2 * math.ceil(11 / batch_size)
            assert max(n for _, n in adapter.calls) <= batch_size


def test_logit_with_unknown_top_class_takes_one_more_pass():
    adapter = counting(mean_model())
    metrics.deletion(adapter, np.concatenate([IMAGE, IMAGE]), np.concatenate([MAP, MAP]),
                     steps=10, batch_size=4, score="logit")
    assert len(adapter.calls) == 1 + 2 * 3


# ------------------------------------------------------------------ blur
def test_gaussian_blur_by_hand():
    assert np.allclose(metrics.gaussian_blur(np.full((7, 9, 3), 2.5)), 2.5)  # constant stays
    impulse = np.zeros((15, 15))
    impulse[7, 7] = 1.0
    g = np.exp(-(np.arange(-2, 3) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    want = np.zeros((15, 15))
    want[5:10, 5:10] = np.outer(g, g)
    np.testing.assert_allclose(metrics.gaussian_blur(impulse, sigma=1.5, size=5), want, atol=1e-12)


def test_gaussian_blur_matches_scipy_mirror():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(1).random((2, 12, 9, 3))
    got = metrics.gaussian_blur(x, sigma=5.0, size=11)
    want = ndimage.gaussian_filter(x, sigma=(0, 5.0, 5.0, 0), mode="mirror", truncate=1.0)
    np.testing.assert_allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------ errors
def test_errors_name_the_value_and_the_fix():
    model = mean_model()
    with pytest.raises(ValueError, match="steps must be a whole number of at least 1; got 0"):
        metrics.deletion(model, IMAGE, MAP, steps=0)
    with pytest.raises(ValueError, match=r"maps have shape \(1, 1, 1\).*resize_bilinear"):
        metrics.deletion(model, IMAGE, np.ones((1, 1, 1)))
    with pytest.raises(ValueError, match="give the maps"):
        metrics.deletion(model, IMAGE)
    with pytest.raises(ValueError, match="score must be one of"):
        metrics.deletion(model, IMAGE, MAP, score="prob")
    with pytest.raises(ValueError, match="baseline of shape"):
        metrics.deletion(model, IMAGE, MAP, baseline=[1.0, 2.0])
    with pytest.raises(ValueError, match="batch_size"):
        metrics.deletion(model, IMAGE, MAP, batch_size=0)
    with pytest.raises(ValueError, match="odd"):
        metrics.insertion(model, IMAGE, MAP, blur_size=4)
    with pytest.raises(ValueError, match="class index 5 is out of range"):
        metrics.deletion(model, IMAGE, MAP, target=5)
    with pytest.raises(ValueError, match="NaN"):
        metrics.deletion(model, IMAGE, np.full((1, 2, 2), np.nan))
