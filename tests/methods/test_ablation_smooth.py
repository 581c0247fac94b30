"""Ablation-CAM and Smooth Grad-CAM++ on plain arrays, with hand-computed maps."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import (
    AblationCAM,
    GradCAMPlusPlus,
    SiteData,
    SmoothGradCAMPlusPlus,
    get_method,
)
from camlens.methods.base import noise_key

# --- Ablation-CAM -------------------------------------------------------------------------------
#
# Three 2x2 channels with spatial sums 14, 4 and 6, and a linear "rest of the model"
# S(A) = sum_c v_c sum_ij A_c + b. Ablating channel c (to 0) removes v_c * sum_c, so
# y - y_c = v_c * sum_c.

A0 = np.array([[0.0, 2.0], [4.0, 8.0]])
A1 = np.ones((2, 2))
A2 = np.array([[3.0, 1.0], [1.0, 1.0]])
ACTS = np.stack([A0, A1, A2], axis=-1)[None].astype("float32")


def linear_site(v, b=0.0, calls=None):
    v = np.asarray(v, dtype=np.float64)

    def score_site(n, acts):
        if calls is not None:
            calls.append(len(acts))
        assert acts.shape[1:] == (2, 2, 3)
        return acts.sum(axis=(1, 2)) @ v + b

    return SiteData(ACTS, score_site=score_site)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])  # 1, 2, C and C + 5
def test_ablation_hand_computed_at_every_batch_size(batch_size):
    # v = (1, -1, 2): y = 14 - 4 + 12 = 22; w = (14, -4, 12) / 22
    # 14 A0 - 4 A1 + 12 A2 = [[0,28],[56,112]] - 4 + [[36,12],[12,12]] = [[32,36],[64,120]]
    calls = []
    out = AblationCAM(batch_size=batch_size)(linear_site([1, -1, 2], calls=calls))
    np.testing.assert_allclose(out[0], np.array([[32, 36], [64, 120]]) / 22, rtol=1e-6)
    assert calls[0] == 1 and max(calls[1:]) <= batch_size
    assert len(calls) == 1 + -(-3 // batch_size)  # one unablated run, then ceil(C / batch_size)


def test_ablation_negative_score_divides_by_its_magnitude():
    # v = (1, -1, -3): y = 14 - 4 - 18 = -8; w = (14, -4, -18) / |y|
    # (14 A0 - 4 A1 - 18 A2) / 8 = [[-58, 6], [34, 90]] / 8; dividing by y would flip the map
    out = AblationCAM()(linear_site([1, -1, -3]))
    np.testing.assert_allclose(out[0], [[0.0, 0.75], [4.25, 11.25]], rtol=1e-6)


def test_ablation_zero_score_uses_the_raw_drop():
    out = AblationCAM()(linear_site([1, -1, 2], b=-22.0))  # y = 0: w = (14, -4, 12)
    np.testing.assert_allclose(out[0], [[32, 36], [64, 120]], rtol=1e-6)
    assert np.isfinite(out).all()


def test_ablation_value_is_configurable():
    # ablating to 1 removes v_c * (sum_c - 4): w = (10, 0, 4) / 22
    out = AblationCAM(ablation_value=1.0)(linear_site([1, -1, 2]))
    np.testing.assert_allclose(out[0], np.array([[12, 24], [44, 84]]) / 22, rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 5, 10])  # 1, 3, C and C + 5 with C = 5
def test_ablation_chunked_equals_one_shot_on_a_nonlinear_site(batch_size):
    rng = np.random.default_rng(0)
    acts = rng.random((2, 3, 3, 5)).astype("float32")
    weights = rng.standard_normal((2, 5))

    def score_site(n, a):
        return np.tanh(a.mean(axis=(1, 2)) @ weights[n]) + (a[..., 0] * a[..., 3]).sum(axis=(1, 2))

    data = SiteData(acts, score_site=score_site)
    one_shot = AblationCAM(batch_size=5)(data)
    np.testing.assert_array_equal(AblationCAM(batch_size=batch_size)(data), one_shot)
    # and by hand: ablate each channel of each sample one at a time
    want = np.zeros((2, 3, 3))
    for n in range(2):
        y = score_site(n, acts[n][None])[0]
        for c in range(5):
            ablated = acts[n].copy()
            ablated[..., c] = 0
            want[n] += (y - score_site(n, ablated[None])[0]) / abs(y) * acts[n, :, :, c]
    np.testing.assert_allclose(one_shot, np.maximum(want, 0), rtol=1e-5, atol=1e-6)


def test_ablation_needs_a_site_scorer_and_checks_its_output():
    with pytest.raises(ValueError, match="needs score_site"):
        AblationCAM()(SiteData(ACTS))
    with pytest.raises(ValueError, match="one score per copy"):
        AblationCAM()(SiteData(ACTS, score_site=lambda n, a: np.zeros(2)))
    with pytest.raises(ValueError, match="batch_size must be at least 1; got 0"):
        AblationCAM(batch_size=0)


# --- Smooth Grad-CAM++ --------------------------------------------------------------------------


def queued_capture(pairs, seen=None):
    """A capture that hands out the given (A, G) pairs, one per copy, in order."""
    queue = list(pairs)

    def capture(n, batch):
        if seen is not None:
            seen.append(batch.copy())
        taken = [queue.pop(0) for _ in range(len(batch))]
        return np.stack([a for a, _ in taken]), np.stack([g for _, g in taken])

    return capture


def as_site(row):
    return np.asarray(row, dtype="float32").reshape(1, 2, 1)  # (h=1, w=2, C=1)


def test_smooth_gradcampp_hand_computed():
    # G_1 = [1, 2], G_2 = [1, 0]: D1 = [1, 1], D2 = [1, 2], D3 = [1, 4]
    # A_1 = [1, 1], A_2 = [1, 3]: mean A = [1, 2], its sum 3
    # alpha = D2 / (2 D2 + 3 D3) = [1/5, 2/16]; w = 1/5 + 1/8 = 13/40; map = 13/40 * [1, 2]
    # (Grad-CAM++ of the mean gradient would give alpha = 1/5 twice, w = 2/5.)
    pairs = [(as_site([1, 1]), as_site([1, 2])), (as_site([1, 3]), as_site([1, 0]))]
    seen = []
    images = np.arange(6, dtype="float32").reshape(1, 1, 2, 3)  # values 0..5, range 5
    data = SiteData(np.zeros((1, 1, 2, 1)), images=images, capture=queued_capture(pairs, seen))
    out = SmoothGradCAMPlusPlus(n_samples=2, sigma=0.1, seed=3)(data)
    np.testing.assert_allclose(out[0], [[13 / 40, 26 / 40]], rtol=1e-6)
    # the copies are the image plus the documented noise, std = sigma * range = 0.5, keyed by
    # the seed and the image's content
    for m, copy in enumerate(np.concatenate(seen)):
        noise = np.random.default_rng(np.random.SeedSequence(noise_key(3, images[0]), spawn_key=(m,)))
        want = images[0] + np.float32(0.5) * noise.standard_normal((1, 2, 3), dtype=np.float32)
        np.testing.assert_allclose(copy, want, rtol=1e-6)


def test_smooth_gradcampp_with_sigma_zero_is_gradcampp_exactly():
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    grads = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    images = rng.random((2, 6, 8, 3)).astype("float32")

    def capture(n, batch):
        np.testing.assert_array_equal(batch, np.repeat(images[n][None], len(batch), axis=0))
        return np.repeat(acts[n][None], len(batch), 0), np.repeat(grads[n][None], len(batch), 0)

    data = SiteData(acts, images=images, capture=capture)
    want = GradCAMPlusPlus()(SiteData(acts, grads))
    for n_samples, batch_size in [(1, 1), (8, 3), (7, 16)]:
        method = SmoothGradCAMPlusPlus(n_samples=n_samples, sigma=0.0, batch_size=batch_size)
        np.testing.assert_array_equal(method(data), want)


def _nonlinear_capture_data(calls=None):
    rng = np.random.default_rng(2)
    images = rng.random((2, 2, 2, 3)).astype("float32")
    w_a, w_g = rng.standard_normal((2, 3, 4))

    def capture(n, batch):  # a tiny "model": per-pixel features of the noisy image
        if calls is not None:
            calls.append(len(batch))
        return np.maximum(batch @ w_a, 0), np.tanh(batch @ w_g + n)

    return SiteData(np.zeros((2, 2, 2, 4)), images=images, capture=capture)


@pytest.mark.parametrize("batch_size", [1, 3, 6, 11])  # 1, 3, n_samples and n_samples + 5
def test_smooth_gradcampp_chunked_equals_one_shot(batch_size):
    calls = []
    one_shot = SmoothGradCAMPlusPlus(n_samples=6, seed=5, batch_size=6)(_nonlinear_capture_data())
    chunked = SmoothGradCAMPlusPlus(n_samples=6, seed=5, batch_size=batch_size)(_nonlinear_capture_data(calls))
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-6, atol=1e-7)
    assert max(calls) <= batch_size and sum(calls) == 2 * 6


def test_smooth_gradcampp_seeds():
    data = _nonlinear_capture_data()
    a = SmoothGradCAMPlusPlus(seed=4)(data)
    np.testing.assert_array_equal(a, SmoothGradCAMPlusPlus(seed=4)(data))
    assert not np.array_equal(a, SmoothGradCAMPlusPlus(seed=5)(data))
    np.testing.assert_array_equal(SmoothGradCAMPlusPlus()(data), SmoothGradCAMPlusPlus(seed=0)(data))
    assert not np.array_equal(SmoothGradCAMPlusPlus(seed=None)(data), SmoothGradCAMPlusPlus(seed=None)(data))


def test_smooth_gradcampp_zero_gradients_give_zeros_not_nan():
    data = SiteData(
        np.ones((1, 2, 2, 2)),
        images=np.zeros((1, 2, 2, 1)),
        capture=lambda n, b: (np.ones((len(b), 2, 2, 2)), np.zeros((len(b), 2, 2, 2))),
    )
    np.testing.assert_array_equal(SmoothGradCAMPlusPlus(seed=0)(data), np.zeros((1, 2, 2)))


def test_smooth_gradcampp_checks():
    with pytest.raises(ValueError, match="needs images and capture"):
        SmoothGradCAMPlusPlus()(SiteData(np.ones((1, 2, 2, 1))))
    bad = SiteData(
        np.ones((1, 2, 2, 1)),
        images=np.zeros((1, 4, 4, 3)),
        capture=lambda n, b: (np.ones((len(b), 2, 2, 2)), np.ones((len(b), 2, 2, 2))),
    )
    with pytest.raises(ValueError, match=r"shape \(8, 2, 2, 1\)"):
        SmoothGradCAMPlusPlus()(bad)
    with pytest.raises(ValueError, match="n_samples must be at least 1; got 0"):
        SmoothGradCAMPlusPlus(n_samples=0)
    with pytest.raises(ValueError, match="sigma must be a finite number of at least 0; got -0.1"):
        SmoothGradCAMPlusPlus(sigma=-0.1)


@pytest.mark.parametrize(
    "name, cls",
    [("ablationcam", AblationCAM), ("Ablation-CAM", AblationCAM), ("Smooth Grad-CAM++", SmoothGradCAMPlusPlus)],
)
def test_registered(name, cls):
    assert type(get_method(name)) is cls
    assert cls.needs_gradients is False
