"""Score-CAM on plain arrays: exact weights, chunking, constant channels."""

import numpy as np
import pytest

from camlens.methods import ISCAM, SSCAM, FastScoreCAM, ScoreCAM, SiteData, get_method
from camlens.methods.base import noise_key


def _data(calls=None):
    rng = np.random.default_rng(0)
    acts = rng.random((2, 3, 3, 5)).astype("float32")
    acts[1, :, :, 2] = 7.0  # a constant channel: its mask must be all zero, no NaN
    images = rng.random((2, 6, 6, 3)).astype("float32")

    def score(n, batch):
        if calls is not None:
            calls.append(len(batch))
        # a fixed linear "model": weighted sum of the pixels, different per sample
        return (batch * (n + 1)).sum(axis=(1, 2, 3))

    return SiteData(acts, images=images, score=score)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 32])
def test_chunked_equals_one_shot(batch_size):
    calls = []
    one_shot = ScoreCAM(batch_size=5)(_data())
    chunked = ScoreCAM(batch_size=batch_size)(_data(calls))
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-6, atol=1e-7)
    assert max(calls) <= batch_size  # never more masked copies at once than asked


def test_constant_channel_scores_the_black_image_and_weights_by_softmax():
    data = _data()
    method = ScoreCAM()
    s = method.channel_scores(data, 1)
    assert s[2] == 0.0  # all-zero mask, masked image all black, score 0
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    want = np.maximum(np.einsum("hwc,c->hw", data.activations[1], w), 0)
    np.testing.assert_allclose(method(data)[1], want, rtol=1e-5)
    assert np.isfinite(method(data)).all()


def test_needs_images_and_a_scorer():
    with pytest.raises(ValueError, match="needs images and score"):
        ScoreCAM()(SiteData(np.ones((1, 2, 2, 1))))
    with pytest.raises(ValueError, match="batch_size"):
        ScoreCAM(batch_size=0)


# --- hand-computed values of Score-CAM and its variants ---------------------------------------
#
# Activations and image share the 2x2 size, so upsampling is the identity and the masks are the
# min-max scaled channels. The "model" sums the pixels: s_c = sum(x * H_c).
#   A_0 = [[0, 2], [4, 8]]  -> H_0 = [[0, .25], [.5, 1]],  s_0 = .25*2 + .5*3 + 1*4 = 6
#   A_1 = 1 everywhere      -> H_1 = 0 (constant),         s_1 = 0
#   A_2 = [[3, 1], [1, 1]]  -> H_2 = [[1, 0], [0, 0]],     s_2 = 1

A0 = np.array([[0.0, 2.0], [4.0, 8.0]])
A1 = np.ones((2, 2))
A2 = np.array([[3.0, 1.0], [1.0, 1.0]])
X = np.array([[1.0, 2.0], [3.0, 4.0]])
S = np.array([6.0, 0.0, 1.0])


def _hand_data(calls=None):
    acts = np.stack([A0, A1, A2], axis=-1)[None].astype("float32")

    def score(n, batch):
        if calls is not None:
            calls.append(len(batch))
        return batch.sum(axis=(1, 2, 3))

    return SiteData(acts, images=X[None, :, :, None].astype("float32"), score=score)


def _map(w):
    return np.maximum(w[0] * A0 + w[1] * A1 + w[2] * A2, 0.0)


def _softmax(s):
    e = np.exp(np.asarray(s, dtype=float) - np.max(s))
    return e / e.sum()


def test_scorecam_hand_computed():
    data = _hand_data()
    np.testing.assert_array_equal(ScoreCAM().channel_scores(data, 0), S)
    np.testing.assert_allclose(ScoreCAM()(data)[0], _map(_softmax(S)), rtol=1e-6)


def test_fastscorecam_scores_the_channels_of_largest_variance():
    # variances: A_0 35/4, A_1 0, A_2 3/4
    data = _hand_data()
    np.testing.assert_array_equal(FastScoreCAM(k=1)(data)[0], A0)  # softmax over one channel: 1
    w = np.zeros(3)
    w[[0, 2]] = _softmax([6.0, 1.0])
    np.testing.assert_allclose(FastScoreCAM(k=2)(data)[0], _map(w), rtol=1e-6)
    assert FastScoreCAM(k=2).scored_channels(data.activations[0]).tolist() == [0, 2]


@pytest.mark.parametrize("k", [5, 6, 64])
def test_fastscorecam_with_k_at_least_c_is_scorecam_exactly(k):
    np.testing.assert_array_equal(FastScoreCAM(k=k, batch_size=2)(_data()), ScoreCAM(batch_size=2)(_data()))


def test_iscam_hand_computed():
    # linear score: s_c averaged over the scales k/4, k = 1..4, is s_c * 10/16
    calls = []
    data = _hand_data(calls)
    np.testing.assert_allclose(ISCAM(n_steps=4).channel_scores(data, 0), S * 10 / 16, rtol=1e-12)
    np.testing.assert_allclose(ISCAM(n_steps=4)(data)[0], _map(_softmax(S * 10 / 16)), rtol=1e-6)
    assert sum(calls) == 2 * 3 * 4  # channel_scores, then the map: 3 channels x 4 steps each
    np.testing.assert_array_equal(ISCAM(n_steps=1)(_data()), ScoreCAM()(_data()))


def test_sscam_adds_the_documented_noise_to_the_mask():
    seed, n_samples, sigma = 7, 3, 0.5
    masks = np.stack([A0 / 8, np.zeros((2, 2)), (A2 - 1) / 2])
    want = np.zeros(3)
    for c in range(3):
        for i in range(n_samples):
            rng = np.random.default_rng(np.random.SeedSequence(noise_key(seed, X[:, :, None]), spawn_key=(c, i)))
            noise = rng.standard_normal((2, 2), dtype=np.float32)
            want[c] += (X * (masks[c] + sigma * noise)).sum() / n_samples
    method = SSCAM(n_samples=n_samples, sigma=sigma, seed=seed)
    np.testing.assert_allclose(method.channel_scores(_hand_data(), 0), want, rtol=1e-5)
    np.testing.assert_allclose(method(_hand_data())[0], _map(_softmax(want)), rtol=1e-5)


def test_sscam_with_sigma_zero_is_scorecam():
    np.testing.assert_array_equal(SSCAM(n_samples=3, sigma=0.0, seed=0)(_data()), ScoreCAM()(_data()))


def test_sscam_seeds():
    a = SSCAM(n_samples=2, seed=1)(_data())
    np.testing.assert_array_equal(a, SSCAM(n_samples=2, seed=1)(_data()))
    assert not np.array_equal(a, SSCAM(n_samples=2, seed=2)(_data()))
    np.testing.assert_array_equal(SSCAM(n_samples=2)(_data()), SSCAM(n_samples=2, seed=0)(_data()))
    assert not np.array_equal(SSCAM(n_samples=2, seed=None)(_data()), SSCAM(n_samples=2, seed=None)(_data()))


VARIANTS = {
    "scorecam": lambda bs: ScoreCAM(batch_size=bs),
    "fastscorecam": lambda bs: FastScoreCAM(k=3, batch_size=bs),
    "sscam": lambda bs: SSCAM(n_samples=3, sigma=0.3, seed=0, batch_size=bs),
    "iscam": lambda bs: ISCAM(n_steps=3, batch_size=bs),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("batch_size", [1, 3, 5, 10])  # 1, 3, C and C + 5 with C = 5
def test_variants_chunked_equal_one_shot(name, batch_size):
    calls = []
    one_shot = VARIANTS[name](1000)(_data())
    chunked = VARIANTS[name](batch_size)(_data(calls))
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-6, atol=1e-7)
    assert max(calls) <= batch_size


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_constant_and_zero_channels_give_no_nan(name):
    data = _data()
    flat = SiteData(np.zeros_like(data.activations), images=data.images, score=data.score)
    if name == "sscam":  # noise on the all-zero masks still moves the score
        out = VARIANTS[name](2)(flat)
    else:  # every mask is zero: every copy is the black image, one score, nothing to weigh
        with pytest.warns(UserWarning, match=rf"{name}: the model's score did not change .* images \[0, 1\]"):
            out = VARIANTS[name](2)(flat)
    np.testing.assert_array_equal(out, np.zeros_like(out))
    assert np.isfinite(VARIANTS[name](2)(data)).all()


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: FastScoreCAM(k=0), ValueError, "k must be at least 1; got 0"),
        (lambda: FastScoreCAM(k=2.5), TypeError, "k must be an integer"),
        (lambda: SSCAM(n_samples=0), ValueError, "n_samples must be at least 1"),
        (lambda: SSCAM(sigma=-1.0), ValueError, "sigma must be a finite number of at least 0; got -1.0"),
        (lambda: SSCAM(seed=-3), ValueError, "seed must be None or an integer"),
        (lambda: ISCAM(n_steps=0), ValueError, "n_steps must be at least 1"),
        (lambda: ISCAM(batch_size=0), ValueError, "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_wrong_number_of_scores_is_reported():
    data = _data()
    bad = SiteData(data.activations, images=data.images, score=lambda n, b: np.zeros(len(b) + 1))
    with pytest.raises(ValueError, match="one score per copy"):
        ScoreCAM(batch_size=2)(bad)


@pytest.mark.parametrize(
    "name, cls", [("fastscorecam", FastScoreCAM), ("SS-CAM", SSCAM), ("is_cam", ISCAM)]
)
def test_registered(name, cls):
    assert type(get_method(name)) is cls
