"""Score-CAM on plain arrays: exact weights, chunking, constant channels."""

import numpy as np
import pytest

from camlens.methods import ScoreCAM, SiteData


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
