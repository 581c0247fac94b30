"""``camlens explain`` options of the CAM methods: several layers (--layer repeated or a comma
list), --fuse, --eigen-smooth, --aug-smooth and --concepts (Deep Feature Factorization). Each
written map equals what the same Python call gives, and each flag is refused, naming the methods
that take it, where the chosen method does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.cli import main
from camlens.io import load_image

SIZE = 32
LAYERS = ["first_conv", "last_conv"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from keras_models import saved_cli_classifier

    return saved_cli_classifier(tmp_path_factory.mktemp("model") / "model.keras", SIZE, first_conv="first_conv")


@pytest.fixture(scope="module")
def model(model_file):
    import keras

    return keras.saving.load_model(model_file)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, seed in (("a", 1), ("b", 2)):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def x(photos) -> np.ndarray:
    """The model inputs ``camlens explain`` makes of the photos (no preprocessing), a then b."""
    return np.stack([load_image(photos / f"{n}.png", (SIZE, SIZE)) for n in "ab"])


def _explain(model_file, photos, out, *flags) -> int:
    return main(["explain", str(model_file), str(photos), "-o", str(out), *flags])


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# ---------------------------------------------------------------- several layers, --fuse
@pytest.mark.parametrize("how", ["max", "mean"])
def test_fuse_writes_explanation_fused_of_the_same_call(model_file, model, photos, x, tmp_path, how):
    out = tmp_path / "out"
    assert _explain(model_file, photos, out, "--layer", ",".join(LAYERS), "--fuse", how) == 0
    want = camlens.explain(model, x, "gradcam", layer=LAYERS).fused(how)
    rows = _results(out)["images"]
    assert [len(r["maps"]) for r in rows] == [1, 1]  # one fused map per image
    for i, row in enumerate(rows):
        entry = row["maps"][0]
        assert entry["layer"] == "first_conv+last_conv"
        np.testing.assert_allclose(np.load(out / entry["raw_npy"]), want.raw_maps[0][i], atol=1e-6)
        np.testing.assert_allclose(np.load(out / entry["map_npy"]), want.maps[0][i], atol=1e-6)
    # max and mean differ on this model: the flag is passed on
    other = camlens.explain(model, x, "gradcam", layer=LAYERS).fused("mean" if how == "max" else "max")
    assert np.abs(other.raw_maps[0] - want.raw_maps[0]).max() > 1e-3


def test_layer_repeated_equals_comma_list_a_map_per_layer(model_file, photos, tmp_path):
    comma, repeated = tmp_path / "comma", tmp_path / "repeated"
    assert _explain(model_file, photos, comma, "--layer", "first_conv, last_conv") == 0
    assert _explain(model_file, photos, repeated, "--layer", "first_conv", "--layers", "last_conv") == 0
    for row in _results(comma)["images"]:
        assert [m["layer"] for m in row["maps"]] == LAYERS
    assert sorted(p.name for p in comma.iterdir()) == sorted(p.name for p in repeated.iterdir())
    for p in comma.glob("*_raw.npy"):
        np.testing.assert_array_equal(np.load(p), np.load(repeated / p.name))


# ---------------------------------------------------------------- --eigen-smooth
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_eigen_smooth_writes_the_smoothed_method(model_file, model, photos, x, tmp_path, method):
    from camlens.methods import get_method

    out = tmp_path / "out"
    assert _explain(model_file, photos, out, "--method", method, "--eigen-smooth") == 0
    smoothed = camlens.explain(model, x, type(get_method(method))(eigen_smooth=True))
    plain = camlens.explain(model, x, method)
    for i, row in enumerate(_results(out)["images"]):
        raw = np.load(out / row["maps"][0]["raw_npy"])
        np.testing.assert_allclose(raw, smoothed.raw_maps[0][i], rtol=1e-4, atol=1e-9)
        full = np.load(out / row["maps"][0]["map_npy"])  # in [0, 1]
        np.testing.assert_allclose(full, smoothed.maps[0][i], atol=1e-5)
        assert np.abs(full - plain.maps[0][i]).max() > 1e-2


# ---------------------------------------------------------------- --aug-smooth
def test_aug_smooth_writes_camlens_tta(model_file, model, photos, x, tmp_path):
    out = tmp_path / "out"
    assert _explain(model_file, photos, out, "--aug-smooth") == 0
    want = camlens.tta(model, x, "gradcam", flips=True, multiply=(0.9, 1.0, 1.1))
    plain = camlens.explain(model, x, "gradcam")
    for i, row in enumerate(_results(out)["images"]):
        entry = row["maps"][0]
        assert entry["map_npy"].startswith(f"{'ab'[i]}_gradcam+tta_last_conv")
        full = np.load(out / entry["map_npy"])
        np.testing.assert_allclose(full, want.maps[0][i], atol=1e-5)
        assert np.abs(full - plain.maps[0][i]).max() > 1e-3


# ---------------------------------------------------------------- --concepts
def test_concepts_write_every_concept_map(model_file, model, photos, x, tmp_path):
    from camlens.methods import DFF

    out = tmp_path / "out"
    assert _explain(model_file, photos, out, "--method", "dff", "--concepts", "3") == 0
    want = camlens.explain(model, x, DFF(k=3))
    for i, row in enumerate(_results(out)["images"]):
        concepts = row["maps"][0]["concepts"]
        np.testing.assert_allclose(np.load(out / concepts["npy"]), want.details[0]["concept_maps"][i],
                                   atol=1e-6)
        assert concepts["shown"] == int(want.details[0]["chosen"][i])
        assert concepts["top_classes"] == want.details[0]["top_classes"][i].tolist()
        assert len(concepts["overlays"]) == 3
        for name in concepts["overlays"]:
            assert Image.open(out / name).size == (SIZE, SIZE)
            assert name in row["files"]


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("flags, message", [
    (["--method", "gradcam,saliency", "--eigen-smooth"],
     "--eigen-smooth does not apply to saliency; it applies to ablationcam, fastscorecam, finercam, "
     "gradcam, gradcam++, gradcamelementwise, hirescam, iscam, layercam, scorecam, smoothgradcam++, "
     "sscam, xgradcam"),
    (["--method", "eigencam", "--eigen-smooth"], "--eigen-smooth does not apply to eigencam; it applies to"),
    (["--concepts", "4"], "--concepts does not apply to gradcam; it applies to dff"),
    (["--method", "dff", "--concepts", "0"], "--concepts must be at least 1; got 0"),
    (["--method", "saliency", "--layer", "first_conv,last_conv", "--fuse", "max"],
     "--fuse does not apply to saliency; it applies to ablationcam, cam,"),
    (["--fuse", "max"], "--fuse max fuses the maps of several layers; give them with --layer a,b"),
    (["--layer", "first_conv", "--fuse", "mean"], "--fuse mean fuses the maps of several layers"),
    (["--layer", "auto,last_conv"], "--layer auto,last_conv: auto chooses one layer; give layer paths only"),
    (["--layer", " , "], "--layer is empty"),
])
def test_flags_refused_with_the_methods_that_take_them(model_file, photos, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert _explain(model_file, photos, out, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"camlens: {message}")
    assert not out.exists()  # refused before anything is written


def test_fuse_choices_are_checked_by_the_parser(model_file, photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _explain(model_file, photos, tmp_path / "out", "--layer", "first_conv,last_conv", "--fuse", "sum")
    assert stop.value.code == 2
    assert "invalid choice: 'sum'" in capsys.readouterr().err
