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
        [f"{n}_gradcam_last_conv_{kind}.png" for n in "ab" for kind in ("overlay", "heatmap")]
        + ["results.json"])
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
