"""The ``camlens`` command line, run in-process through ``camlens.cli.main`` (and once as the
installed console script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.cli import main

SIZE = 32


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from keras_models import saved_cli_classifier

    return saved_cli_classifier(tmp_path_factory.mktemp("model") / "model.keras", SIZE)


@pytest.fixture(scope="module")
def two_input_model_file(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    a = keras.Input((SIZE, SIZE, 3), name="left")
    b = keras.Input((SIZE, SIZE, 3), name="right")
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    path = tmp_path_factory.mktemp("model2") / "two_inputs.keras"
    keras.Model([a, b], out).save(path)
    return path


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return path


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(5).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _overlay(out: Path, name: str, method: str = "gradcam", layer: str = "last_conv") -> Path:
    return out / f"{name}_{method}_{layer}_overlay.png"


def _heatmap(out: Path, name: str, method: str = "gradcam", layer: str = "last_conv") -> Path:
    return out / f"{name}_{method}_{layer}_heatmap.png"


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture
def two_images(tmp_path) -> list[Path]:
    return [_png(tmp_path / "wide.png", 40, 50, seed=1), _png(tmp_path / "square.png", SIZE, SIZE, seed=2)]


# ---------------------------------------------------------------- layers
def test_layers_lists_layers_and_choice(model_file, capsys):
    assert main(["layers", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "last_conv" in out
    assert "chosen" in out


def test_layers_missing_model_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["layers", str(tmp_path / "nope.keras")])
    assert info.value.code == 2
    assert "nope.keras" in capsys.readouterr().err


# ---------------------------------------------------------------- explain: good runs
def test_explain_two_images_of_different_sizes(model_file, two_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(model_file), *map(str, two_images), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name, (h, w) in (("wide", (40, 50)), ("square", (SIZE, SIZE))):
        over = _overlay(out, name)
        heat = _heatmap(out, name)
        assert over.is_file(), sorted(p.name for p in out.iterdir())
        assert heat.is_file()
        with Image.open(over) as im:  # the photo's own size, not the model's SIZE x SIZE
            arr = np.asarray(im.convert("RGB"))
            assert im.size == (w, h)
        assert arr.shape == (h, w, 3)
        with Image.open(heat) as im:
            assert im.size == (w, h)
    res = _results(out)
    assert res["method"] == "gradcam"
    assert "last_conv" in res["layer"]
    assert [r["image"] for r in res["images"]] == [str(p) for p in two_images]
    assert res["failed"] == []
    for r, name in zip(res["images"], ("wide", "square")):
        assert isinstance(r["class"], int) and 0 <= r["class"] < 3
        assert isinstance(r["score"], float)
        stem = _overlay(out, name).name[: -len("overlay.png")]
        assert sorted(r["files"]) == sorted([_heatmap(out, name).name, _overlay(out, name).name,
                                             stem + "map.npy", stem + "raw.npy"])
    # one summary for the whole run, not a per-batch explanation.json
    assert not (out / "explanation.json").exists()
    assert "wrote 2 explanation(s)" in captured.out
    assert captured.err.count("camlens:") == 0


@pytest.mark.parametrize("method", ["cam", "gradcam++"])
def test_explain_other_methods(model_file, two_images, tmp_path, capsys, method):
    out = tmp_path / "out"
    code = main(["explain", str(model_file), *map(str, two_images), "--method", method, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("wide", "square"):
        assert _overlay(out, name, method).is_file()
        assert _heatmap(out, name, method).is_file()
    res = _results(out)
    assert res["method"] == method
    assert len(res["images"]) == 2


def test_explain_target_class(model_file, two_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(model_file), *map(str, two_images), "--target", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert [r["class"] for r in _results(out)["images"]] == [1, 1]


def test_explain_explicit_layer_and_preprocess(model_file, two_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(model_file), *map(str, two_images), "--layer", "last_conv",
                 "--preprocess", "unit", "--batch-size", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    res = _results(out)
    assert len(res["images"]) == 2
    assert all(_overlay(out, n).is_file() for n in ("wide", "square"))


def test_explain_same_stem_twice_gets_unique_names(model_file, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    imgs = [_png(tmp_path / "a" / "pic.png", SIZE, SIZE, 1), _png(tmp_path / "b" / "pic.png", SIZE, SIZE, 2)]
    out = tmp_path / "out"
    assert main(["explain", str(model_file), *map(str, imgs), "-o", str(out)]) == 0, capsys.readouterr().err
    assert _overlay(out, "pic").is_file()
    assert _overlay(out, "pic-1").is_file()


def test_results_files_belong_to_their_image(model_file, tmp_path, capsys):
    # one name is a prefix of the other, and one needs sanitising for the file system
    imgs = [_png(tmp_path / "cat.png", SIZE, SIZE, 1), _png(tmp_path / "cat_2.png", SIZE, SIZE, 2),
            _png(tmp_path / "my photo.png", SIZE, SIZE, 3)]
    out = tmp_path / "out"
    assert main(["explain", str(model_file), *map(str, imgs), "-o", str(out)]) == 0, capsys.readouterr().err
    res = _results(out)
    for r, stem in zip(res["images"], ("cat", "cat_2", "my-photo")):
        npy = [f"{stem}_gradcam_last_conv_{kind}.npy" for kind in ("map", "raw")]
        assert sorted(r["files"]) == sorted([_heatmap(out, stem).name, _overlay(out, stem).name, *npy])
        assert all((out / f).is_file() for f in r["files"])


# ---------------------------------------------------------------- explain: mixed batch
def test_explain_mixed_batch_reports_broken_files(model_file, tmp_path, capsys):
    good = _png(tmp_path / "good.png", SIZE, SIZE, 1)
    missing = tmp_path / "missing.png"
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    cut = _truncated_jpeg(tmp_path / "cut.jpg")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)).save(deep)
    with Image.open(deep) as im:
        assert im.mode == "I;16"
    alpha = tmp_path / "alpha.png"
    rgba = np.random.default_rng(3).integers(0, 256, size=(SIZE, SIZE, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(alpha)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, size=(20, 24), dtype=np.uint8)).save(gray)

    images = [good, missing, text, cut, tiny, deep, alpha, gray]
    out = tmp_path / "out"
    code = main(["explain", str(model_file), *map(str, images), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    for name, size in (("good", (SIZE, SIZE)), ("deep", (30, 40)), ("alpha", (SIZE, SIZE)), ("gray", (24, 20))):
        assert _overlay(out, name).is_file(), name
        assert _heatmap(out, name).is_file(), name
        with Image.open(_overlay(out, name)) as im:
            assert im.size == size  # the photo's own size
            assert im.mode == "RGB"
    for name in ("missing", "text", "cut", "tiny"):
        assert not _overlay(out, name).exists()
    err = captured.err
    for path in (missing, text, cut, tiny):
        assert path.name in err
    for path in (good, deep, alpha, gray):
        assert f"skipped {path}" not in err
    res = _results(out)
    assert [r["image"] for r in res["images"]] == [str(p) for p in (good, deep, alpha, gray)]
    assert sorted(f["image"] for f in res["failed"]) == sorted(str(p) for p in (missing, text, cut, tiny))
    assert "wrote 4 explanation(s)" in captured.out


def test_explain_all_images_broken_exits_1(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(model_file), str(tmp_path / "gone.png"), "-o", str(out)])
    assert code == 1
    assert "gone.png" in capsys.readouterr().err
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- explain: bad usage
def test_explain_unknown_layer_exits_2(model_file, two_images, tmp_path, capsys):
    code = main(["explain", str(model_file), *map(str, two_images), "--layer", "last_con",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "last_con" in err
    assert "did you mean" in err.lower() and "last_conv" in err
    assert "camlens layers" in err


def test_explain_nonexistent_layer_mentions_layers_command(model_file, two_images, tmp_path, capsys):
    code = main(["explain", str(model_file), *map(str, two_images), "--layer", "nope",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err
    assert "camlens layers" in err


def test_explain_unknown_method_exits_2(model_file, two_images, tmp_path, capsys):
    code = main(["explain", str(model_file), *map(str, two_images), "--method", "nope",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "gradcam" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_explain_missing_model_exits_2(two_images, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", str(tmp_path / "absent.keras"), *map(str, two_images), "-o", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "absent.keras" in capsys.readouterr().err


def test_explain_corrupt_model_exits_2(two_images, tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(SystemExit) as info:
        main(["explain", str(bad), *map(str, two_images)])
    assert info.value.code == 2
    assert "bad.keras" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", ["2", "-0.1"])
def test_explain_bad_alpha_exits_2(model_file, two_images, tmp_path, capsys, alpha):
    code = main(["explain", str(model_file), *map(str, two_images), f"--alpha={alpha}",
                 "-o", str(tmp_path / "out")])
    assert code == 2
    assert "--alpha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explain_bad_batch_size_exits_2(model_file, two_images, tmp_path, capsys):
    code = main(["explain", str(model_file), *map(str, two_images), "--batch-size", "0"])
    assert code == 2
    assert "--batch-size" in capsys.readouterr().err


def test_explain_bogus_target_is_an_argparse_error(model_file, two_images, capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", str(model_file), *map(str, two_images), "--target", "bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "--target" in err


def test_no_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_explain_two_input_model_points_to_pairs(two_input_model_file, two_images, tmp_path, capsys):
    # camlens explain runs models with several image inputs from --pairs (test_cli_outputs.py)
    code = main(["explain", str(two_input_model_file), *map(str, two_images), "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "takes 2 image inputs" in err and "--pairs FILE.csv" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- console script
def _console_script() -> str | None:
    here = Path(sys.executable).parent / ("camlens.exe" if os.name == "nt" else "camlens")
    return str(here) if here.exists() else shutil.which("camlens")


def test_console_script_entry_point(model_file, tmp_path):
    script = _console_script()
    if script is None:
        pytest.skip("the camlens console script is not installed")
    img = _png(tmp_path / "one.png", SIZE, SIZE, 7)
    out = tmp_path / "out"
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    layers = subprocess.run([script, "layers", str(model_file)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert layers.returncode == 0, layers.stderr
    assert "last_conv" in layers.stdout
    run = subprocess.run([script, "explain", str(model_file), str(img), "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _overlay(out, "one").is_file()
    assert _results(out)["images"][0]["image"] == str(img)
    bad = subprocess.run([script, "explain", str(tmp_path / "absent.keras"), str(img)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "absent.keras" in bad.stderr


def test_h5_model_file(model_file, two_images, tmp_path, capsys):
    import keras

    h5 = tmp_path / "model.h5"
    keras.saving.load_model(model_file, compile=False).save(h5)
    assert main(["layers", str(h5)]) == 0
    assert "last_conv" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["explain", str(h5), *map(str, two_images), "-o", str(out)]) == 0
    assert len(_results(out)["images"]) == 2
