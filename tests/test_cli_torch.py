"""PyTorch modules and folders of images on the command line: ``FILE.py:NAME`` model specs
(:func:`camlens.io.load_model`), ``--size``, ``--preprocess imagenet``, folder arguments."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.cli import main
from camlens.io import PREPROCESSING, image_files, load_model

torch = pytest.importorskip("torch")

MODEL_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    from helper_layers import Head   # a module beside this file


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
            self.head = Head(6, 3)

        def forward(self, x):
            return self.head(self.features(x))


    def build():
        return Net().eval()


    built = build()
    not_a_model = 42

    def broken():
        raise RuntimeError("weights file missing")
    """
)
HELPER_CODE = textwrap.dedent(
    """
    from torch import nn


    class Head(nn.Module):
        def __init__(self, cin, n):
            super().__init__()
            self.fc = nn.Linear(cin, n)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))
    """
)


@pytest.fixture
def model_py(tmp_path) -> Path:
    (tmp_path / "helper_layers.py").write_text(HELPER_CODE)
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_CODE)
    return path


def _png(path: Path, h: int, w: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return path


def _logits(model, pixels: np.ndarray) -> np.ndarray:
    x = PREPROCESSING["imagenet"](pixels.astype(np.float32))
    with torch.no_grad():
        return model(torch.from_numpy(np.moveaxis(x, -1, 0)[None].copy()))[0].numpy()


# ---------------------------------------------------------------- load_model
def test_python_specs_give_the_module_a_function_builds(model_py):
    for name in ("build", "Net", "built"):
        model = load_model(f"{model_py}:{name}")
        assert isinstance(model, torch.nn.Module) and type(model).__name__ == "Net"
    ref = load_model(f"{model_py}:build")
    same = load_model(f"{model_py}:Net")
    for a, b in zip(ref.parameters(), same.parameters()):
        assert torch.equal(a, b)  # the file's own seed: the same weights every time


def test_python_spec_errors_name_the_problem(model_py, tmp_path):
    with pytest.raises(ValueError, match=r"has no 'nope'; it defines Net, broken, build, built"):
        load_model(f"{model_py}:nope")
    with pytest.raises(ValueError, match="not_a_model is of type int, not a Keras model or torch.nn.Module"):
        load_model(f"{model_py}:not_a_model")
    with pytest.raises(ValueError, match=r"calling broken\(\) failed: RuntimeError: weights file missing"):
        load_model(f"{model_py}:broken")
    with pytest.raises(FileNotFoundError, match="no such Python file"):
        load_model(f"{tmp_path / 'absent.py'}:build")
    with pytest.raises(ValueError, match="cannot import 'no_such_package_xyz.models'.*give a file as FILE.py:build"):
        load_model("no_such_package_xyz.models:build")
    bad = tmp_path / "syntax.py"
    bad.write_text("def build(:\n")
    with pytest.raises(ValueError, match="running .*syntax.py failed: SyntaxError"):
        load_model(f"{bad}:build")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"\x00" * 8)
    with pytest.raises(ValueError, match="holds weights, not code.*FILE.py:FUNCTION"):
        load_model(weights)


def test_imagenet_scaling_and_folders(tmp_path):
    px = np.array([[[0.0, 127.5, 255.0]]], np.float32)
    want = (px / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(PREPROCESSING["imagenet"](px), want, rtol=1e-6)
    with pytest.raises(ValueError, match="3 colour channels"):
        PREPROCESSING["imagenet"](np.zeros((2, 2, 1), np.float32))
    a = _png(tmp_path / "set" / "b.png", 8, 8, 0)
    b = _png(tmp_path / "set" / "sub" / "a.JPG", 8, 8, 1)
    _png(tmp_path / "set" / ".hidden" / "c.png", 8, 8, 2)
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    loose = tmp_path / "loose.png"
    assert image_files([str(tmp_path / "set"), str(loose)]) == [str(a), str(b), str(loose)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: the folder holds no image file"):
        image_files([str(tmp_path / "empty")])


# ---------------------------------------------------------------- commands
def test_explain_a_torch_module_on_a_folder_of_mixed_sizes(model_py, tmp_path, capsys):
    folder = tmp_path / "photos"
    wide = _png(folder / "wide.png", 12, 20, 0)
    square = _png(folder / "square.png", 16, 16, 1)
    out = tmp_path / "out"
    code = main(["explain", f"{model_py}:build", str(folder), "--preprocess", "imagenet",
                 "--layer", "features.3", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = json.loads((out / "results.json").read_text())
    assert [r["image"] for r in res["images"]] == [str(square), str(wide)]
    model = load_model(f"{model_py}:build")
    for r, path in zip(res["images"], (square, wide)):
        pixels = np.asarray(Image.open(path), np.float32)
        logits = _logits(model, pixels)  # each image at its own size: no --size
        assert r["class"] == int(np.argmax(logits))
        assert r["score"] == pytest.approx(float(logits.max()), rel=1e-5)
        for f in r["files"]:
            if f.endswith("_map.npy"):
                assert np.load(out / f).shape == pixels.shape[:2]
            if f.endswith(".npy"):
                continue
            with Image.open(out / f) as im:
                assert im.size == pixels.shape[1::-1]
    assert "features.3" in res["layer"]


def test_size_resizes_every_image_and_layers_needs_it(model_py, tmp_path, capsys):
    folder = tmp_path / "photos"
    _png(folder / "a.png", 12, 20, 0)
    _png(folder / "b.png", 16, 16, 1)
    out = tmp_path / "out"
    assert main(["explain", f"{model_py}:Net", str(folder), "--size", "10,14", "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    for r, size in zip(res["images"], ((20, 12), (16, 16))):
        # the model saw 10x14; the files are drawn back on the photo at its own size
        for f in r["files"]:
            if f.endswith(".png"):
                with Image.open(out / f) as im:
                    assert im.size == size
        (site,) = r["maps"]
        assert np.load(out / site["map_npy"]).shape == size[::-1]
    capsys.readouterr()
    assert main(["layers", f"{model_py}:build", "--size", "16"]) == 0
    listing = capsys.readouterr().out
    assert "features.3" in listing and "features.2" in listing
    assert main(["layers", f"{model_py}:build"]) == 2
    assert "no input size of its own: give --size H,W" in capsys.readouterr().err


def test_size_must_agree_with_a_keras_model_that_has_one(tmp_path, capsys):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    path = tmp_path / "m.keras"
    model.save(path)
    img = _png(tmp_path / "a.png", 8, 8, 0)
    assert main(["explain", str(path), str(img), "--size", "9,9", "-o", str(tmp_path / "o")]) == 2
    assert "the model takes 8x8 images; drop --size 9,9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", str(path), str(img), "--size", "9,x"])
    assert "bad size '9,x'" in capsys.readouterr().err


def test_features_evaluate_and_report_take_a_torch_module(model_py, tmp_path, capsys):
    img = _png(tmp_path / "a.png", 16, 16, 0)
    spec = f"{model_py}:build"
    assert main(["features", spec, str(img), "--size", "16", "-o", str(tmp_path / "f")]) == 0
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    assert [layer["layer"] for layer in index["layers"]] == ["features.0", "features.2"]
    capsys.readouterr()
    code = main(["evaluate", spec, str(img), "--methods", "gradcam", "--metrics", "deletion",
                 "--steps", "4", "--json", str(tmp_path / "e.json")])
    assert code == 0, capsys.readouterr().err
    ev = json.loads((tmp_path / "e.json").read_text())
    assert 0.0 <= ev["methods"]["gradcam"]["mean"]["deletion"] <= 1.0
    page = tmp_path / "r.html"
    assert main(["report", spec, str(tmp_path), "--size", "16", "--methods", "gradcam",
                 "-o", str(page)]) == 0
    assert "a.png" in page.read_text()


def test_the_app_serves_a_torch_module_at_its_size(model_py):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from camlens.app import create_app

    model = load_model(f"{model_py}:build")
    with pytest.raises(ValueError, match=r"no input size of its own: give input_size=\(H, W\)"):
        create_app(model)
    client = TestClient(create_app(model, input_size=(16, 16), preprocess="imagenet"))
    info = client.get("/api/info").json()
    assert info["input"] == {"size": [16, 16], "channels": 3}
    assert info["auto_layer"] == ["features.3"]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    r = client.post("/api/explain", files={"file": ("x.png", buf.getvalue(), "image/png")},
                    data={"method": "gradcam", "layer": "auto", "target": "top"})
    assert r.status_code == 200, r.text
