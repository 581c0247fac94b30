"""``camlens.files``: the folder loops of the command line, called as library functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from camlens import explain
from camlens.files import explain_files

SIZE = 16


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_explain_files_writes_pngs_and_results_and_reports_a_bad_image(model, tmp_path):
    first = _png(tmp_path / "photos" / "a.png", 1)
    _png(tmp_path / "photos" / "b.png", 2)
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    counted = []

    done = explain_files(model, [tmp_path / "photos", broken], tmp_path / "out", preprocess="unit",
                         batch_size=2, progress=counted.append)  # a bad image is no exception

    assert [r["image"] for r in done.images] == [str(tmp_path / "photos" / n) for n in ("a.png", "b.png")]
    assert [path for path, _ in done.failed] == [str(broken)]
    assert "broken.png" in done.failed[0][1]
    assert sum(counted) == 3
    assert sorted(p.name for p in done.written) == sorted(
        [f"{n}_gradcam_last_conv_{kind}" for n in "ab"
         for kind in ("overlay.png", "heatmap.png", "map.npy", "raw.npy")]
        + ["results.json", "results.csv"])
    assert all(p.is_file() for p in done.written)
    saved = json.loads(done.results.read_text())
    assert saved["method"] == "gradcam" and "last_conv" in saved["layer"]
    assert saved["images"] == done.images
    assert saved["failed"] == [{"image": str(broken), "error": done.failed[0][1]}]
    exp = explain(model, first[None] / 255.0, method="gradcam")  # the same numbers as explain
    assert done.images[0]["score"] == pytest.approx(float(exp.scores[0]), rel=1e-5)
    assert done.images[0]["class"] == int(exp.class_indices[0])


def test_explain_files_with_no_readable_image_writes_nothing(model, tmp_path):
    done = explain_files(model, [tmp_path / "gone.png"], tmp_path / "out")
    assert done.images == [] and done.written == [] and done.results is None
    assert "gone.png" in done.failed[0][1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    ({"method": "nope"}, "nope"),
    ({"layer": "last_con"}, "last_conv"),
    ({"size": (9, 9)}, "drop size=(9, 9)"),
    ({"alpha": 2.0}, "alpha must be between 0 and 1"),
    ({"preprocess": "bogus"}, "unknown preprocess 'bogus'"),
])
def test_explain_files_refuses_bad_options_before_reading_images(model, tmp_path, options, message):
    _png(tmp_path / "a.png", 0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        explain_files(model, [tmp_path / "a.png"], tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_evaluate_files_gives_numbers_per_method_and_reports_a_bad_image(model, tmp_path):
    from camlens.files import evaluate_files

    _png(tmp_path / "a.png", 1)
    (tmp_path / "broken.png").write_text("not a picture")
    seen = []
    done = evaluate_files(model, [tmp_path / "a.png", tmp_path / "broken.png"], methods=["gradcam"],
                          metrics=["deletion", "insertion"], steps=3, preprocess="unit",
                          on_method=lambda method, numbers: seen.append(method))
    assert seen == ["gradcam"] and list(done.methods) == ["gradcam"]
    numbers = done.methods["gradcam"]
    assert [r["image"] for r in numbers["images"]] == [str(tmp_path / "a.png")]
    assert 0.0 <= numbers["mean"]["deletion"] <= 1.0 and "last_conv" in numbers["layer"]
    assert done.higher_is_better == {"deletion": False, "insertion": True}
    assert [p for p, _ in done.failed] == [str(tmp_path / "broken.png")]
    with pytest.raises(ValueError, match="steps must be at least 1"):
        evaluate_files(model, [tmp_path / "a.png"], steps=0)


def _photo(path, h, w, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_explain_files_writes_at_the_photos_own_size_and_saves_the_maps(model, tmp_path):
    from camlens.io import load_image
    from camlens.viz import overlay, resize_bilinear

    pixels = _photo(tmp_path / "wide.png", 20, 40, 3)  # squashed to 16x16 for the model
    done = explain_files(model, [tmp_path / "wide.png"], tmp_path / "out", preprocess="unit")

    exp = explain(model, load_image(tmp_path / "wide.png", (SIZE, SIZE))[None] / 255.0)
    full = resize_bilinear(exp.maps[0][0], (20, 40))  # the squash undone: the photo's aspect
    out = tmp_path / "out"
    row = done.images[0]
    site = row["maps"][0]
    assert row["size"] == [20, 40] and site["size"] == [20, 40] and row["target"] == exp.target
    saved = np.load(out / site["map_npy"])
    assert saved.dtype == np.float32 and saved.shape == (20, 40)
    np.testing.assert_allclose(saved, full, atol=1e-6)
    assert 0.0 <= saved.min() and saved.max() <= 1.0
    raw = np.load(out / site["raw_npy"])
    assert raw.shape == (SIZE, SIZE)  # last_conv keeps the input's size (padding="same")
    np.testing.assert_allclose(raw, exp.raw_maps[0][0], rtol=1e-5, atol=1e-6)
    with Image.open(out / site["overlay"]) as im:
        assert im.size == (40, 20)
        drawn = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(drawn, overlay(pixels, saved))  # on the photo, not the 16x16 input
    with Image.open(out / site["heatmap"]) as im:
        assert im.size == (40, 20) and im.mode == "RGB"


def test_explain_files_gray_heatmap_and_results_csv(model, tmp_path):
    import csv

    _photo(tmp_path / "a.png", 24, 18, 4)
    done = explain_files(model, [tmp_path / "a.png"], tmp_path / "out", preprocess="unit",
                         heatmap="gray")
    site = done.images[0]["maps"][0]
    with Image.open(tmp_path / "out" / site["heatmap"]) as im:
        assert im.mode == "L" and im.size == (18, 24)
        gray = np.asarray(im)
    expected = np.rint(np.load(tmp_path / "out" / site["map_npy"]) * 255).astype(np.uint8)
    np.testing.assert_array_equal(gray, expected)
    with open(done.table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    row = rows[0]
    assert row["image"] == str(tmp_path / "a.png") and row["method"] == "gradcam"
    assert row["layer"] == "last_conv" and (row["height"], row["width"]) == ("24", "18")
    assert float(row["score"]) == done.images[0]["score"]
    assert [row[k] for k in ("overlay", "heatmap", "map_npy", "raw_npy")] == [
        site[k] for k in ("overlay", "heatmap", "map_npy", "raw_npy")]
    with pytest.raises(ValueError, match="heatmap must be one of color, gray"):
        explain_files(model, [tmp_path / "a.png"], tmp_path / "out", heatmap="grey")


def siamese(path):
    from keras_models import cosine_siamese

    cosine_siamese(SIZE).save(path)
    return path


def test_read_pairs_header_relative_paths_and_errors(tmp_path):
    from camlens.files import read_pairs

    (tmp_path / "imgs").mkdir()
    for n in "abc":
        _photo(tmp_path / "imgs" / f"{n}.png", 8, 8, 0)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right\nimgs/a.png,imgs/b.png\n\n" + f"{tmp_path / 'imgs' / 'c.png'}, imgs/a.png\n")
    assert read_pairs(pairs, 2) == [
        (str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")),
        (str(tmp_path / "imgs" / "c.png"), str(tmp_path / "imgs" / "a.png"))]
    pairs.write_text("imgs/a.png,imgs/b.png\n")  # no header
    assert len(read_pairs(pairs, 2)) == 1
    pairs.write_text("imgs/a.png,imgs/b.png,imgs/c.png\n")
    with pytest.raises(ValueError, match=r"pairs.csv row 1: 3 cell\(s\).*takes 2 image input"):
        read_pairs(pairs, 2)
    pairs.write_text("left,right\nimgs/a.png,imgs/gone.png\n")
    with pytest.raises(ValueError, match="row 2: no such file imgs/gone.png"):
        read_pairs(pairs, 2)


def test_explain_files_on_pairs_of_a_saved_siamese_model(tmp_path):
    from camlens.files import read_pairs
    from camlens.io import load_model
    from camlens.targets import RegressionScore

    model = load_model(siamese(tmp_path / "siamese.keras"))
    _photo(tmp_path / "a.png", 16, 16, 5)
    _photo(tmp_path / "b.png", 30, 20, 6)
    (tmp_path / "pairs.csv").write_text("a.png,b.png\n")
    done = explain_files(model, read_pairs(tmp_path / "pairs.csv", 2), tmp_path / "out",
                         target=RegressionScore(0), preprocess="unit")
    (row,) = done.images
    assert row["image"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [(m["input"], m["image"], m["size"]) for m in row["maps"]] == [
        (0, str(tmp_path / "a.png"), [16, 16]), (1, str(tmp_path / "b.png"), [30, 20])]
    assert len({m["overlay"] for m in row["maps"]}) == 2  # one overlay per image of the pair
    for m in row["maps"]:
        with Image.open(tmp_path / "out" / m["overlay"]) as im:
            assert im.size == (m["size"][1], m["size"][0])
    first, second = (np.load(tmp_path / "out" / m["raw_npy"]) for m in row["maps"])
    assert first.shape == second.shape == (SIZE, SIZE) and not np.allclose(first, second)
    with pytest.raises(ValueError, match="takes 2 image inputs"):
        explain_files(model, [tmp_path / "a.png"], tmp_path / "out2")
