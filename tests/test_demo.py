"""`camlens demo` end to end, and the pretrained model's explanations on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens import samples
from camlens.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, main(["demo", "-o", str(out)])


def test_demo_writes_overlays_and_a_summary(demo_run, capsys):
    out, status = demo_run
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["images"]) == set(samples.PHOTOS)
    assert summary["methods"] == ["gradcam", "cam"]
    assert summary["layer"].startswith("head_relu")
    for name, info in summary["images"].items():
        assert info["files"] == [f"{name}_gradcam.png", f"{name}_cam.png"]
        for f in info["files"]:
            with Image.open(out / f) as img:
                assert img.size == (224, 224) and img.mode == "RGB"
        assert len(info["top3"]) == 3
    assert summary["images"]["coffee"]["top3"][0]["name"] == "espresso"
    assert summary["images"]["chelsea"]["top3"][0]["class"] in (281, 282, 285)  # cat classes
    assert (out / "summary.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def lite():
    from camlens.models import efficientnet_lite0

    return efficientnet_lite0()


def test_gradcam_on_the_coffee_photo_sits_on_the_cup(lite):
    from camlens.models import preprocess

    x = preprocess(samples.photo("coffee"))[None]
    exp = camlens.explain(lite, x, method="gradcam")
    assert exp.class_indices.tolist() == [967]  # espresso
    heat = exp.map[0]
    # the cup, rim and handle in the 224 px centre crop (rows 0-160, columns 25-190): 53% of
    # the picture. Measured: 83% of the map's mass lies inside it.
    cup = heat[0:160, 25:190]
    assert cup.size / heat.size == pytest.approx(0.526, abs=1e-3)
    assert cup.sum() / heat.sum() > 0.75


def test_demo_with_own_images_and_a_broken_one(tmp_path, capsys):
    good = tmp_path / "mine.png"
    Image.fromarray(samples.photo("flower")).save(good)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    out = tmp_path / "out"
    status = main(["demo", "--image", str(good), "--image", str(bad), "--method", "gradcam++", "-o", str(out)])
    assert status == 1
    err = capsys.readouterr().err
    assert "notes.jpg" in err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["images"]) == ["mine"]
    assert (out / "mine_gradcam++.png").is_file()


def test_demo_bad_method_exits_2(tmp_path, capsys):
    assert main(["demo", "--method", "gradcam,nope", "-o", str(tmp_path)]) == 2
    assert "no method 'nope'" in capsys.readouterr().err
