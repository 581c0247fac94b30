"""Occlusion and RISE on numpy "models": exact values, chunking, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from camlens.methods import RISE, Occlusion, PixelData, get_method
from camlens.viz import resize_bilinear

RNG = np.random.default_rng(3)
X = RNG.normal(size=(2, 6, 7, 3)).astype(np.float32)
W = RNG.normal(size=(2, 6, 7, 3))


def linear(calls: list[int] | None = None, images: np.ndarray = X) -> PixelData:
    def score(n, b):
        if calls is not None:
            calls.append(len(b))
        return (b * W[n]).sum(axis=(1, 2, 3))

    return PixelData(images, score)


def pixel(i: int, j: int, images: np.ndarray = X) -> PixelData:
    """S(x) = sum_c x[i, j, c]."""
    return PixelData(images, lambda n, b: b[:, i, j].sum(axis=-1))


def test_registered_names():
    assert type(get_method("occlusion")) is Occlusion
    assert type(get_method("RISE")) is RISE
    assert not Occlusion.needs_gradients and not RISE.needs_gradients and not RISE.needs_layer


def test_occlusion_single_pixel_window_finds_the_read_pixel():
    attr, info = Occlusion(window=1, stride=1).attribute(pixel(2, 3))
    want = np.zeros((2, 6, 7, 1), dtype=np.float32)
    want[:, 2, 3, 0] = X[:, 2, 3].sum(axis=-1)
    np.testing.assert_allclose(attr, want, rtol=1e-6)
    np.testing.assert_allclose(info["scores"], X[:, 2, 3].sum(axis=-1), rtol=1e-6)


def test_occlusion_linear_score_averages_window_drops():
    # linear S, fill 0: the drop of window R is sum_{R} W x; pixel p averages that over windows with p
    occ = Occlusion(window=(2, 3), stride=(2, 2))
    wins = occ.windows((6, 7))
    assert [(t, l) for t, l, _, _ in wins] == [(t, l) for t in (0, 2, 4) for l in (0, 2, 4)]
    attr, _ = occ.attribute(linear())
    contrib = (X * W).sum(axis=-1)
    for n in range(2):
        total, count = np.zeros((6, 7)), np.zeros((6, 7))
        for t, l, h, w in wins:
            total[t : t + h, l : l + w] += contrib[n, t : t + h, l : l + w].sum()
            count[t : t + h, l : l + w] += 1
        np.testing.assert_allclose(attr[n, ..., 0], total / count, rtol=1e-4, atol=1e-5)


def test_occlusion_edge_window_and_defaults():
    # 7 wide, window 3, stride 3: starts 0, 3 and one flush with the edge at 4
    assert [l for t, l, _, _ in Occlusion(window=3, stride=3).windows((6, 7)) if t == 0] == [0, 3, 4]
    # defaults: window = side // 8 (at least 1), stride = window // 2 (at least 1)
    wins = Occlusion().windows((32, 17))
    assert {(h, w) for _, _, h, w in wins} == {(4, 2)}
    assert sorted({t for t, _, _, _ in wins})[:3] == [0, 2, 4] and sorted({l for _, l, _, _ in wins})[:3] == [0, 1, 2]


def test_occlusion_mean_fill():
    # S reads pixel (0, 0): with fill "mean" the drop is x[0,0] - mean over the image, per channel
    attr, _ = Occlusion(window=1, stride=1, fill="mean").attribute(pixel(0, 0))
    np.testing.assert_allclose(attr[:, 0, 0, 0], (X[:, 0, 0] - X.mean(axis=(1, 2))).sum(-1), rtol=1e-5)
    assert np.count_nonzero(attr[:, 1:, :]) == 0 and np.count_nonzero(attr[:, :, 1:]) == 0


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_occlusion_chunks_equal_one_shot(batch_size):
    calls: list[int] = []
    one_shot, _ = Occlusion(window=2, stride=1, batch_size=1000).attribute(linear())
    chunked, _ = Occlusion(window=2, stride=1, batch_size=batch_size).attribute(linear(calls))
    np.testing.assert_array_equal(chunked, one_shot)
    assert max(calls) == min(batch_size, 30)  # 5 x 6 windows per image


def test_occlusion_errors():
    with pytest.raises(ValueError, match=r"window \(7, 2\) is larger than the image \(6, 7\)"):
        Occlusion(window=(7, 2)).attribute(linear())
    with pytest.raises(ValueError, match="window must be a positive int"):
        Occlusion(window=0)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        Occlusion(stride=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill must be a number or 'mean'; got 'blur'"):
        Occlusion(fill="blur")


def test_rise_masks_follow_the_paper_procedure():
    rise = RISE(n_masks=20, cell=3, p=0.5, seed=11)
    masks = rise.masks((6, 7))
    assert masks.shape == (20, 6, 7) and masks.dtype == np.float32
    assert masks.min() >= 0 and masks.max() <= 1
    # the same draws, by hand: grids, shifts below one cell (2 x 3 pixels), upsample to 8 x 12, crop
    rng = np.random.default_rng(11)
    grids = rng.random((20, 3, 3)) < 0.5
    dy, dx = rng.integers(0, 2, 20), rng.integers(0, 3, 20)
    up = resize_bilinear(grids.astype(np.float32), (8, 12))
    want = np.stack([up[k, dy[k] : dy[k] + 6, dx[k] : dx[k] + 7] for k in range(20)])
    np.testing.assert_array_equal(masks, want)
    np.testing.assert_array_equal(rise.masks((6, 7), 5, 9), masks[5:9])


def test_rise_is_the_score_weighted_mask_sum():
    rise = RISE(n_masks=50, cell=2, p=0.3, seed=0, batch_size=7)
    images = np.ones((1, 6, 7, 1), dtype=np.float32)
    sal = rise(pixel(1, 5, images))
    m = rise.masks((6, 7)).astype(np.float64)
    np.testing.assert_allclose(sal[0], (m[:, 1, 5, None, None] * m).sum(axis=0) / (50 * 0.3), rtol=1e-5)
    gray = X[..., :1]  # S_n(x) = sum_c sum_ij W[n, i, j, c] x[i, j, 0]
    attr, _ = rise.attribute(linear(images=gray))
    scores = np.stack([((gray[n] * m[..., None]) * W[n]).sum(axis=(1, 2, 3)) for n in range(2)])
    np.testing.assert_allclose(attr[..., 0], np.einsum("nk,khw->nhw", scores, m) / 15, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 1000])
def test_rise_chunks_equal_one_shot_and_seed_reproduces(batch_size):
    calls: list[int] = []
    one_shot, _ = RISE(n_masks=40, cell=3, seed=4, batch_size=40).attribute(linear())
    chunked, _ = RISE(n_masks=40, cell=3, seed=4, batch_size=batch_size).attribute(linear(calls))
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-6, atol=1e-7)
    assert max(calls) == min(batch_size, 40)
    other, _ = RISE(n_masks=40, cell=3, seed=5).attribute(linear())
    assert not np.allclose(other, one_shot)


def test_rise_seeds_zero_by_default_and_none_keeps_its_masks():
    assert RISE().seed == 0
    np.testing.assert_array_equal(RISE(n_masks=5, cell=2).masks((4, 4)), RISE(n_masks=5, cell=2, seed=0).masks((4, 4)))
    rise = RISE(n_masks=5, cell=2, seed=None)  # a random seed, fixed at construction
    np.testing.assert_array_equal(rise.masks((4, 4)), rise.masks((4, 4)))
    assert isinstance(rise.seed, int)
    with pytest.raises(ValueError, match="rise: seed must be None or an integer of at least 0; got -1"):
        RISE(seed=-1)


def test_rise_errors():
    with pytest.raises(ValueError, match="n_masks must be at least 1.*got 0"):
        RISE(n_masks=0)
    with pytest.raises(ValueError, match="cell .* must be at least 1; got 0"):
        RISE(cell=0)
    with pytest.raises(ValueError, match=r"p .* must be in \(0, 1\]; got 0"):
        RISE(p=0)
    with pytest.raises(ValueError, match=r"cell 7 is finer than the image \(6, 5\); use cell <= 5"):
        RISE(n_masks=2, cell=7).masks((6, 5))
