import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import camlens.viz
from camlens.viz import (
    colorize,
    figure_to_png_bytes,
    normalize,
    overlay,
    panel,
    resize_bilinear,
    save_png,
    to_rgb_uint8,
)

# ---------------------------------------------------------------- normalize


def test_normalize_minmax_exact():
    out = normalize(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 0.25], [0.5, 1.0]])


def test_normalize_each_map_of_a_batch_on_its_own():
    maps = np.array([[[0.0, 1.0]], [[10.0, 30.0]]])
    np.testing.assert_array_equal(normalize(maps), [[[0.0, 1.0]], [[0.0, 1.0]]])


def test_normalize_percentile_clips_then_scales():
    # Percentiles of 0..100 in steps of 1 are the values themselves.
    m = np.arange(101, dtype=np.float64).reshape(1, 101)
    out = normalize(m, mode="percentile", percentiles=(10.0, 60.0))
    assert out[0, 0] == 0.0 and out[0, 10] == 0.0
    assert out[0, 35] == pytest.approx(0.5)
    assert out[0, 60] == 1.0 and out[0, 100] == 1.0


def test_normalize_percentile_ignores_an_outlier():
    m = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 1000.0]])
    # 80th percentile of 6 values: index 0.8 * 5 = 4 -> 4.0; the outlier is clipped.
    out = normalize(m, mode="percentile", percentiles=(0.0, 80.0))
    np.testing.assert_allclose(out, [[0.0, 0.25, 0.5, 0.75, 1.0, 1.0]])


def test_normalize_constant_map_warns_once_and_gives_zeros():
    maps = np.stack([np.full((3, 3), 7.0), np.full((3, 3), 0.0), np.eye(3)])
    with pytest.warns(RuntimeWarning, match="constant") as record:
        out = normalize(maps)
    assert len(record) == 1
    assert "2 of 3 maps" in str(record[0].message)
    np.testing.assert_array_equal(out[:2], 0.0)
    np.testing.assert_array_equal(out[2], np.eye(3))
    assert not np.isnan(out).any()


def test_normalize_single_constant_map_mentions_gradient():
    with pytest.warns(RuntimeWarning, match="gradient was zero"):
        out = normalize(np.zeros((2, 2)))
    np.testing.assert_array_equal(out, np.zeros((2, 2)))


def test_normalize_percentile_degenerate_range_warns():
    sparse = np.zeros((10, 20))
    sparse[0, 0] = 5.0  # 0.5% of the pixels: the 1st and 99th percentiles are both 0
    with pytest.warns(RuntimeWarning, match="equal percentiles 1 and 99"):
        out = normalize(sparse, mode="percentile")
    np.testing.assert_array_equal(out, 0.0)


def test_normalize_nan_raises_with_count():
    m = np.array([[np.nan, 1.0], [np.inf, 0.0]])
    with pytest.raises(ValueError, match="2 non-finite"):
        normalize(m)


def test_normalize_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="minmax, percentile"):
        normalize(np.eye(2), mode="zscore")


def test_normalize_rejects_bad_shape_and_percentiles():
    with pytest.raises(ValueError, match="shape"):
        normalize(np.zeros(4))
    with pytest.raises(ValueError, match="percentiles"):
        normalize(np.eye(2), mode="percentile", percentiles=(90, 10))


# ---------------------------------------------------------------- resize_bilinear


def _slow_bilinear(m, out_h, out_w):
    """Reference: per output pixel, the four neighbours of its half-pixel-centred source point."""
    in_h, in_w = m.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = min(max((i + 0.5) * in_h / out_h - 0.5, 0.0), in_h - 1)
            x = min(max((j + 0.5) * in_w / out_w - 0.5, 0.0), in_w - 1)
            top, left = int(y), int(x)
            bottom, right = min(top + 1, in_h - 1), min(left + 1, in_w - 1)
            dy, dx = y - top, x - left
            out[i, j] = (
                m[top, left] * (1 - dy) * (1 - dx)
                + m[top, right] * (1 - dy) * dx
                + m[bottom, left] * dy * (1 - dx)
                + m[bottom, right] * dy * dx
            )
    return out


def test_resize_1x2_to_1x4():
    out = resize_bilinear(np.array([[0.0, 1.0]]), (1, 4))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 0.25, 0.75, 1.0]])


def test_resize_2x2_to_4x4_by_hand():
    # Source coordinates along each axis: 0, 0.25, 0.75, 1; value = 2 * y + x.
    expected = [
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ]
    out = resize_bilinear(np.array([[0.0, 1.0], [2.0, 3.0]]), (4, 4))
    np.testing.assert_array_equal(out, expected)


def test_resize_non_square_matches_slow_loop():
    m = np.array([[0.0, 3.0, 1.0], [5.0, -2.0, 4.0]])
    np.testing.assert_allclose(resize_bilinear(m, (5, 7)), _slow_bilinear(m, 5, 7), atol=1e-6)


def test_resize_down_and_batch_match_slow_loop():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 9, 6))
    out = resize_bilinear(maps, (4, 5))
    assert out.shape == (2, 4, 5)
    for k in range(2):
        np.testing.assert_allclose(out[k], _slow_bilinear(maps[k], 4, 5), atol=1e-6)


def test_resize_upsampling_agrees_with_pil():
    m = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    pil = np.asarray(Image.fromarray(m).resize((11, 7), Image.BILINEAR))
    np.testing.assert_allclose(resize_bilinear(m, (7, 11)), pil, atol=1e-6)


def test_resize_identity_and_single_pixel():
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(resize_bilinear(m, (2, 3)), m)
    out = resize_bilinear(np.array([[0.7]]), (3, 5))
    np.testing.assert_array_equal(out, np.full((3, 5), 0.7, np.float32))


def test_resize_rejects_bad_size():
    with pytest.raises(ValueError, match="positive"):
        resize_bilinear(np.eye(2), (0, 3))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        resize_bilinear(np.eye(2), (3,))


# ---------------------------------------------------------------- to_rgb_uint8


def test_to_rgb_uint8_passes_uint8_rgb_through():
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(to_rgb_uint8(img), img)


@pytest.mark.parametrize("shape", [(2, 2), (2, 2, 1)])
def test_to_rgb_uint8_repeats_grayscale(shape):
    img = np.array([[0, 10], [20, 30]], np.uint8).reshape(shape)
    out = to_rgb_uint8(img)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 1], [[0, 10], [20, 30]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_to_rgb_uint8_drops_alpha():
    img = np.zeros((1, 1, 4), np.uint8)
    img[0, 0] = [1, 2, 3, 99]
    np.testing.assert_array_equal(to_rgb_uint8(img), [[[1, 2, 3]]])


def test_to_rgb_uint8_float_unit_range_is_scaled():
    out = to_rgb_uint8(np.array([[0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255]])


def test_to_rgb_uint8_float_byte_range_is_kept():
    out = to_rgb_uint8(np.array([[0.0, 2.0, 254.6]]))
    np.testing.assert_array_equal(out[..., 0], [[0, 2, 255]])


def test_to_rgb_uint8_float_other_range_is_minmax_scaled():
    x = np.array([[0.0, 127.0, 255.0]])
    out = to_rgb_uint8((x - 127.0) / 128.0)
    np.testing.assert_array_equal(out[..., 0], [[0, 127, 255]])


def test_to_rgb_uint8_uint16_divided_by_257():
    out = to_rgb_uint8(np.array([[0, 257, 65535]], np.uint16))
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255]])


def test_to_rgb_uint8_int_and_bool():
    ints = np.array([[0, 200]], np.int64)
    np.testing.assert_array_equal(to_rgb_uint8(ints)[..., 0], [[0, 200]])
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[-10, 0, 10]]))[..., 0], [[0, 128, 255]])
    np.testing.assert_array_equal(to_rgb_uint8(np.array([[False, True]]))[..., 0], [[0, 255]])


def test_to_rgb_uint8_bad_shape_names_shape_and_expected():
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*got shape \(2, 2, 2\)"):
        to_rgb_uint8(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------- colorize / overlay


def test_colorize_uses_matplotlib_colormap():
    heat = np.array([[0.0, 1.0]])
    lut = matplotlib.colormaps["viridis"]
    expected = np.round(np.array([lut(0.0)[:3], lut(1.0)[:3]]) * 255).astype(np.uint8)
    out = colorize(heat, "viridis")
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], expected)


def test_colorize_unknown_cmap_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean.*'viridis'"):
        colorize(np.zeros((2, 2)), "viridsi")


def test_colorize_rejects_unnormalized_heatmap():
    with pytest.raises(ValueError, match="normalize"):
        colorize(np.array([[0.0, 3.0]]))


def test_overlay_hand_computed_pixel():
    top = np.array(matplotlib.colormaps["jet"](1.0)[:3])
    colored_top = np.round(top * 255)
    expected = np.round(0.4 * colored_top).astype(np.uint8)
    out = overlay(np.zeros((2, 3, 3), np.uint8), np.ones((2, 3)), cmap="jet", alpha=0.4)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(expected, (2, 3, 3)))
    np.testing.assert_array_equal(expected, [51, 0, 0])  # jet's top is (0.5, 0, 0)


def test_overlay_alpha_extremes():
    img = np.full((2, 2, 3), 100, np.uint8)
    heat = np.zeros((2, 2))
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0), colorize(heat))


def test_overlay_resizes_heatmap_to_image():
    img = np.zeros((4, 6, 3), np.uint8)
    heat = np.array([[0.0, 1.0]])
    out = overlay(img, heat, alpha=1.0)
    np.testing.assert_array_equal(out, colorize(resize_bilinear(heat, (4, 6))))


def test_overlay_batch():
    images = np.zeros((2, 4, 4, 3), np.uint8)
    heats = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    out = overlay(images, heats, alpha=1.0)
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(out[0], colorize(np.zeros((4, 4))))
    np.testing.assert_array_equal(out[1], colorize(np.ones((4, 4))))
    with pytest.raises(ValueError, match="batch of 2"):
        overlay(images[:1], heats)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_overlay_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=alpha)


# ---------------------------------------------------------------- panel / output


def test_panel_one_axes_per_entry_and_png_bytes():
    img = np.zeros((4, 4, 3), np.uint8)
    heat = np.linspace(0, 1, 16).reshape(4, 4)
    rows = [[img, heat, overlay(img, heat)], [img, heat]]
    fig = panel(rows, titles=[["image", "heatmap", "overlay"], ["b", None]])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == ["image", "heatmap", "overlay", "b", ""]
    assert all(not ax.axison for ax in fig.axes)
    png = figure_to_png_bytes(fig, dpi=20)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_panel_titles_shape_must_match():
    with pytest.raises(ValueError, match="same shape"):
        panel([[np.zeros((2, 2, 3), np.uint8)]], titles=[["a", "b"]])


def test_save_png_creates_parents(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    path = save_png(arr, tmp_path / "a" / "b" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
    with pytest.raises(ValueError, match="uint8"):
        save_png(arr.astype(np.float32), tmp_path / "y.png")


def test_import_is_cheap_and_pyplot_free():
    code = (
        "import sys, numpy as np, camlens.viz as v\n"
        "assert 'matplotlib' not in sys.modules and 'PIL' not in sys.modules\n"
        "v.figure_to_png_bytes(v.panel([[np.zeros((2, 2, 3), np.uint8)]]))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    src = str(Path(camlens.viz.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_resize_and_normalize_one_map_at_a_time_give_the_whole_stack_formula():
    # the map-by-map loops (speed) must give the bits of the plain float64 formula
    from camlens._image import _source_taps

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        raw = (rng.standard_normal((3, 7, 5)) * 40).astype(dtype)
        raw[1] = 2.5  # a constant map stays zeros
        y0, y1, wy = _source_taps(7, 30)
        x0, x1, wx = _source_taps(5, 22)
        s = raw.astype(np.float64)
        rows = s[:, y0, :] * (1.0 - wy[:, None]) + s[:, y1, :] * wy[:, None]
        want_up = (rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx).astype(np.float32)
        up = resize_bilinear(raw, (30, 22))
        assert up.dtype == np.float32 and np.array_equal(up, want_up)
        u = up.astype(np.float64)
        lo, hi = u.min(axis=(1, 2), keepdims=True), u.max(axis=(1, 2), keepdims=True)
        want = np.where(hi == lo, 0.0, (u - lo) / np.where(hi == lo, 1.0, hi - lo)).astype(np.float32)
        with pytest.warns(RuntimeWarning, match="1 of 3 maps are constant"):
            got = normalize(up)
        assert np.array_equal(got, want) and got[0].max() == 1.0


def test_normalize_finds_a_lone_negative_infinity():
    m = np.zeros((2, 4, 4), np.float32)
    m[1, 2, 3] = -np.inf
    with pytest.raises(ValueError, match="1 non-finite"):
        normalize(m)


@pytest.mark.parametrize("shape", [(1, 7, 7), (8, 7, 7), (2, 13, 9), (3, 1, 1), (1, 5, 64)])
def test_the_matrix_columns_give_the_maps_the_gathers_give(shape, monkeypatch):
    """Small maps take their columns as one product with the interpolation matrix (issue 18:
    3-4x faster for 7 -> 224); the float32 maps equal the two-gather path's."""
    from camlens import _image

    maps = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32) * 1e3
    fast = _image.resize_bilinear(maps, (224, 200))
    monkeypatch.setattr(_image, "_MATRIX_COLUMNS", 0)
    np.testing.assert_array_equal(fast, _image.resize_bilinear(maps, (224, 200)))
