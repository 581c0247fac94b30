"""metrics.evaluate / get_metric on a real explanation, and ``camlens evaluate`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens import metrics
from camlens.cli import main
from metric_toys import counting

SIZE = 16


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def test_evaluate_matches_the_metric_functions():
    model = _model()
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype("float32")
    exp = camlens.explain(model, x, "gradcam")
    boxes = [(0, 0, 8, 8), (4, 4, 16, 16)]
    res = metrics.evaluate(model, exp, [*metrics.DEFAULT_METRICS, "pointing_game"], objects=boxes, steps=8)
    assert list(res) == ["deletion", "insertion", "average_drop", "increase_in_confidence", "pointing_game"]
    np.testing.assert_allclose(res["deletion"].per_image, metrics.deletion(model, exp, steps=8).auc)
    np.testing.assert_allclose(res["average_drop"].per_image, metrics.average_drop(model, exp).per_image)
    np.testing.assert_allclose(res["pointing_game"].per_image, metrics.pointing_game(exp, boxes).per_image)
    for name, r in res.items():
        assert r.per_image.shape == (2,) and r.higher_is_better == metrics.METRICS[name]


def test_average_drop_and_increase_share_one_pass():
    model = _model()
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype("float32")
    exp = camlens.explain(model, x, "gradcam")
    adapter = counting(model)
    metrics.evaluate(adapter, exp, ["average_drop", "increase_in_confidence"], batch_size=2)
    assert len(adapter.calls) == 2 * 2


def test_get_metric_contract_and_errors():
    model = _model()
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype("float32")
    exp = camlens.explain(model, x, "gradcam")
    values = metrics.get_metric("insertion")(model, exp)
    np.testing.assert_allclose(values["insertion"], metrics.insertion(model, exp).auc)
    with pytest.raises(ValueError, match="unknown metric 'pointing_game' .*boxes.*deletion"):
        metrics.get_metric("pointing_game")
    with pytest.raises(ValueError, match="unknown metric.*'auc'"):
        metrics.evaluate(model, exp, ["auc"])
    with pytest.raises(ValueError, match="objects="):
        metrics.evaluate(model, exp, ["energy_pointing_game"])
    with pytest.raises(TypeError, match="takes an Explanation"):
        metrics.evaluate(model, x)


def test_cli_evaluate_prints_a_table_per_method_and_writes_json(tmp_path, capsys):
    path = tmp_path / "model.keras"
    _model().save(path)
    images = []
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(img).save(images[-1])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "numbers.json"
    rc = main(["evaluate", str(path), *map(str, images), str(broken), "--methods", "gradcam,gradcam++",
               "--steps", "5", "--preprocess", "unit", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and "skipped" in captured.err and "broken.png" in captured.err
    for method in ("gradcam", "gradcam++"):
        assert f"{method} at last_conv" in captured.out
    assert captured.out.count("img0.png") == 2 and captured.out.count("\nmean ") == 2
    data = json.loads(out.read_text())
    assert data["metrics"] == list(metrics.DEFAULT_METRICS) and len(data["failed"]) == 1
    rows = data["methods"]["gradcam"]["images"]
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert data["methods"]["gradcam"]["mean"]["deletion"] == pytest.approx(
        np.mean([r["deletion"] for r in rows]))
    assert all(r["increase_in_confidence"] in (0.0, 100.0) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--metrics", "deletion,bogus"], "unknown metric"),
    (["--methods", "nosuchcam"], "nosuchcam"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_cli_evaluate_bad_options_exit_2(tmp_path, capsys, args, message):
    rc = main(["evaluate", str(tmp_path / "missing.keras"), "x.png", *args])
    assert rc == 2 and message in capsys.readouterr().err


def test_metrics_all_is_complete_and_import_is_light():
    import subprocess
    import sys
    import types

    public = {n for n, v in vars(metrics).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(metrics.__all__), public - set(metrics.__all__)
    code = "import sys, camlens.metrics; print([m for m in ('keras', 'torch', 'jax', 'scipy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
