"""``finish_maps``: raw maps resized and normalised, a constant one reported once, in its words."""

from __future__ import annotations

import warnings

import numpy as np

from camlens.explanation import finish_maps

RAW = np.array([
    [[0.0, 1.0], [2.0, 3.0]],
    [[5.0, 5.0], [5.0, 5.0]],  # constant
    [[4.0, 0.0], [0.0, 0.0]],
], np.float32)


def _finish(mode):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = finish_maps(RAW, (2, 2), mode, "gradcam @ conv")
    return maps, [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]


def test_a_constant_map_in_a_batch_gives_one_warning_naming_the_sample_and_zeros():
    maps, said = _finish("minmax")
    assert len(said) == 1
    assert said[0].startswith("the map at gradcam @ conv is constant for sample(s) [1]: ")
    assert "Logit" in said[0] and "of 3 maps" not in said[0]
    assert maps.dtype == np.float32 and maps.shape == (3, 2, 2)
    np.testing.assert_array_equal(maps[0], np.float32([[0.0, 1 / 3], [2 / 3, 1.0]]))
    np.testing.assert_array_equal(maps[1], 0.0)
    np.testing.assert_array_equal(maps[2], [[1.0, 0.0], [0.0, 0.0]])


def test_percentile_mode_names_only_the_constant_map():
    # sample 0 is 0 but for one pixel in 200: its 1st and 99th percentiles are both 0, so it is
    # zeros too, without a word (normalize's own warning about it stays quiet here)
    raw = np.zeros((2, 10, 20), np.float32)
    raw[0, 3, 4] = 5.0
    raw[1] = 7.0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = finish_maps(raw, (10, 20), "percentile", "gradcam @ conv")
    said = [str(w.message) for w in record]
    assert len(said) == 1 and "constant for sample(s) [1]:" in said[0]
    assert maps.dtype == np.float32
    np.testing.assert_array_equal(maps, 0.0)
