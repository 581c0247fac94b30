"""camlens.feature_maps, the feature-map grids and `camlens features`: exact activations on tiny
hand-built models, channel ranking, the grid layout, errors, and the bundled model end to end."""

from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
import torch
from keras import layers as L
from PIL import Image
from torch import nn

import camlens
from camlens import viz
from camlens.adapters.arrays import Recorder
from camlens.adapters.keras import KerasAdapter
from camlens.cli import main
from keras_models import probe_free, siamese

# c1 is a 1x1 convolution without bias: channel c is K[c] * x. On X (values -5..10, mean 2.5)
# the channel means are 2.5, -5, 7.5, 2.5, 0: ranked 2, 0, 3 (tie with 0, kept in order), 4, 1.
K = np.array([1.0, -2.0, 3.0, 1.0, 0.0], "float32")
D = np.array([2.0, 1.0, -1.0, 0.5, 3.0], "float32")  # the depthwise 1x1 weights of dw
X = (np.arange(16, dtype="float32") - 5.0).reshape(4, 4, 1)
RANKED = [2, 0, 3, 4, 1]


def tiny_net() -> keras.Model:
    """image 4x4x1 -> c1 (1x1 conv, kernel K) -> pool (2x2 max) -> dw (1x1 depthwise, D)
    -> flat -> head (Dense 2)."""
    inp = keras.Input((4, 4, 1), name="image")
    a = L.Conv2D(5, 1, use_bias=False, name="c1")(inp)
    p = L.MaxPooling2D(2, name="pool")(a)
    d = L.DepthwiseConv2D(1, use_bias=False, name="dw")(p)
    out = L.Dense(2, name="head")(L.Flatten(name="flat")(d))
    model = keras.Model(inp, out, name="tiny")
    model.get_layer("c1").set_weights([K.reshape(1, 1, 1, 5)])
    model.get_layer("dw").set_weights([D.reshape(1, 1, 5, 1)])
    return model


def expected_c1(x: np.ndarray) -> np.ndarray:
    return x * K  # (4, 4, 1) * (5,) -> (4, 4, 5)


def expected_pool(x: np.ndarray) -> np.ndarray:
    a = expected_c1(x)
    return a.reshape(2, 2, 2, 2, 5).max(axis=(1, 3))


# ---------------------------------------------------------------- feature_maps on Keras
def test_conv_layers_exact_activations_and_model_untouched():
    model = tiny_net()
    weights = [w.copy() for w in model.get_weights()]
    fm = camlens.feature_maps(model, X)
    assert fm.layers == ["c1", "dw"] and fm.kinds == ["Conv2D", "DepthwiseConv2D"]
    assert fm.reason == "every convolution layer (2 call sites)"
    assert fm["c1"].shape == (1, 4, 4, 5) and fm["dw"].shape == (1, 2, 2, 5)
    np.testing.assert_allclose(fm["c1"][0], expected_c1(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fm.sample("dw"), expected_pool(X) * D, rtol=0, atol=1e-6)
    assert fm.activations[0].dtype == np.float32
    assert probe_free(model)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_layer_sets_and_names():
    model = tiny_net()
    assert camlens.feature_maps(model, X, "spatial").layers == ["c1", "pool", "dw"]
    auto = camlens.feature_maps(model, X, "auto")
    assert auto.layers == ["dw"] and auto.reason.startswith("dw (DepthwiseConv2D, 2x2x5)")
    both = camlens.feature_maps(model, X, ["dw", "pool", "dw"])  # caller's order, no repeats
    assert both.layers == ["dw", "pool"]
    np.testing.assert_allclose(both["pool"][0], expected_pool(X), rtol=0, atol=1e-6)
    assert camlens.feature_maps(model, X, "pool").layers == ["pool"]


def test_batch_keeps_samples_apart_in_one_pass_per_batch():
    rec = Recorder(KerasAdapter(tiny_net()))
    batch = np.stack([X, 2 * X, -X])
    fm = camlens.feature_maps(rec, batch, "spatial")
    assert rec.calls == [("capture", 3, 3, False)]  # one pass records all three layers, no gradient
    assert fm["c1"].shape == (3, 4, 4, 5)
    for i, x in enumerate(batch):
        np.testing.assert_allclose(fm["pool"][i], expected_pool(x), rtol=0, atol=1e-6)
    rec = Recorder(KerasAdapter(tiny_net()))
    chunked = camlens.feature_maps(rec, batch, "spatial", batch_size=2)
    assert rec.calls == [("capture", 2, 3, False), ("capture", 1, 3, False)]
    np.testing.assert_array_equal(chunked["dw"], fm["dw"])


def test_shared_encoder_gives_one_site_per_call():
    model, encoder = siamese(size=16)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    fm = camlens.feature_maps(model, [a, b])
    assert fm.layers == ["encoder/c1", "encoder/c2", "encoder/c1#1", "encoder/c2#1", "mnet_conv1"]
    alone = camlens.feature_maps(encoder, b, ["c2"])
    np.testing.assert_allclose(fm["encoder/c2#1"], alone["c2"], rtol=1e-5, atol=1e-6)
    assert probe_free(model)


def test_errors_name_the_bad_layer_and_the_fix():
    model = tiny_net()
    with pytest.raises(ValueError, match=r"no layer 'c11'.*Did you mean 'c1'"):
        camlens.feature_maps(model, X, "c11")
    with pytest.raises(ValueError, match=r"'head' \(Dense\) has output shape \(2,\).*camlens.layers\(model\)"):
        camlens.feature_maps(model, X, ["c1", "head"])
    with pytest.raises(ValueError, match="'image' is a model input"):
        camlens.feature_maps(model, X, ["image"])
    with pytest.raises(TypeError, match="layers must be 'conv', 'spatial', 'auto'"):
        camlens.feature_maps(model, X, 3)
    with pytest.raises(ValueError, match="batch_size must be .* at least 1; got 0"):
        camlens.feature_maps(model, X, batch_size=0)
    with pytest.raises(KeyError, match=r"no layer 'pool' in these feature maps; they hold \['c1', 'dw'\]"):
        camlens.feature_maps(model, X)["pool"]


def test_model_without_convolutions():
    inp = keras.Input((4, 4, 1))
    p = L.AveragePooling2D(2, name="avg")(inp)
    model = keras.Model(inp, L.Dense(1)(L.Flatten()(p)))
    with pytest.raises(ValueError, match="no convolution layer.*layers='spatial'"):
        camlens.feature_maps(model, X)
    fm = camlens.feature_maps(model, X, "spatial")
    assert fm.layers == ["avg"]
    np.testing.assert_allclose(fm["avg"][0, :, :, 0], [[-2.5, -0.5], [5.5, 7.5]], atol=1e-6)


# ---------------------------------------------------------------- feature_maps on PyTorch
class _FunctionalRelu(nn.Module):
    """A conv, then a ReLU called as a function in forward(): not a module, so no hook; the
    traced graph is run node by node to read it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 1, bias=False)
        self.head = nn.Linear(5, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(K).reshape(5, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_torch_module_exact_activations_and_modes_restored():
    net = nn.Sequential(nn.Conv2d(1, 5, 1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(20, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(K).reshape(5, 1, 1, 1))
    net.train()
    fm = camlens.feature_maps(net, X)  # channels-last numpy image, no batch axis
    assert fm.layers == ["0"] and fm.kinds == ["Conv2d"]
    np.testing.assert_allclose(fm["0"][0], expected_c1(X), rtol=0, atol=1e-6)
    nchw = torch.from_numpy(np.moveaxis(X, -1, 0)[None].copy())
    spatial = camlens.feature_maps(net, nchw, "spatial")
    assert spatial.layers == ["0", "1", "2"]
    np.testing.assert_allclose(spatial["2"][0], np.maximum(expected_pool(X), 0), rtol=0, atol=1e-6)
    assert net.training and all(m.training for m in net.modules())
    assert not any(m._forward_hooks for m in net.modules())


def test_torch_function_calls_are_left_out_of_spatial_but_read_by_name():
    fm = camlens.feature_maps(_FunctionalRelu(), X, "spatial")
    assert fm.layers == ["conv"]
    by_name = camlens.feature_maps(_FunctionalRelu(), X, "relu")
    np.testing.assert_allclose(by_name["relu"][0], np.maximum(expected_c1(X), 0), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- grids
def c1_acts() -> np.ndarray:
    return expected_c1(X)


def test_rank_channels_by_mean_max_and_index():
    a = c1_acts()
    assert viz.rank_channels(a).tolist() == RANKED
    # maxima 10, 10, 30, 10, 0: ties stay in channel order
    assert viz.rank_channels(a, "max").tolist() == [2, 0, 1, 3, 4]
    assert viz.rank_channels(a, "index").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown rank 'median'; use one of mean, max, index"):
        viz.rank_channels(a, "median")


def test_grid_array_layout_and_tiles():
    mosaic, chans = viz.feature_grid_array(c1_acts())
    assert chans == RANKED
    assert mosaic.shape == (2 * 4, 3 * 4) and mosaic.dtype == np.float32  # 5 tiles: 3 cols, 2 rows
    x = X[:, :, 0]
    np.testing.assert_allclose(mosaic[0:4, 0:4], (x + 5) / 15, atol=1e-6)  # ch 2, scaled alone
    np.testing.assert_allclose(mosaic[0:4, 4:8], (x + 5) / 15, atol=1e-6)  # ch 0
    np.testing.assert_array_equal(mosaic[4:8, 0:4], 0.5)  # ch 4 is constant (dead): flat grey
    np.testing.assert_allclose(mosaic[4:8, 4:8], (10 - x) / 15, atol=1e-6)  # ch 1 = -2x
    np.testing.assert_array_equal(mosaic[4:8, 8:12], 0)  # no sixth channel
    assert np.isfinite(mosaic).all()

    capped, top = viz.feature_grid_array(c1_acts(), max_channels=2)
    assert top == [2, 0] and capped.shape == (4, 8)
    column, order = viz.feature_grid_array(c1_acts(), cols=1, pad=1, fill=np.nan)
    assert order == RANKED and column.shape == (5 * 4 + 4, 4)
    assert np.isnan(column[4]).all() and not np.isnan(column[5:9]).any()
    _, by_index = viz.feature_grid_array(c1_acts(), rank="index", max_channels=3)
    assert by_index == [0, 1, 2]


def test_grid_array_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(h, w, channels\); got shape \(2, 4, 4, 5\).*acts\[i\]"):
        viz.feature_grid_array(np.zeros((2, 4, 4, 5)))
    with pytest.raises(ValueError, match="max_channels must be .* at least 1; got 0"):
        viz.feature_grid_array(c1_acts(), max_channels=0)
    with pytest.raises(ValueError, match="cols must be"):
        viz.feature_grid_array(c1_acts(), cols=0)


def test_grid_figure_labels_tiles_title_and_cap():
    fig = viz.feature_grid(c1_acts(), layer="c1", max_channels=3)
    assert [t.get_text() for t in fig.axes[0].texts] == ["ch 2", "ch 0", "ch 3"]
    assert [t.get_text() for t in fig.texts] == [
        "c1  (4x4x5)", "3 of 5 channels, highest mean first, +2 more; 1 dead"]
    full = viz.feature_grid(c1_acts(), layer="c1")
    assert not any("more" in t.get_text() for t in full.texts)
    with pytest.raises(ValueError, match="unknown colormap 'viridus'. Did you mean 'viridis'"):
        viz.feature_grid(c1_acts(), cmap="viridus")


def test_overview_one_row_per_layer():
    fm = camlens.feature_maps(tiny_net(), X, "spatial")
    fig = fm.plot()
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.texts] == [
        "c1  (4x4x5)  ch 2, 0, 3, 4, 1  (1 dead)",  # ch 4 (K = 0) is all zero
        "pool  (2x2x5)  ch 2, 0, 3, 1, 4  (1 dead)",  # means 5, 0, 15, 5, 0
        "dw  (2x2x5)  ch 0, 3, 1, 4, 2  (1 dead)",  # means D * (5, 0, 15, 5, 0) = 10, 0, -15, 2.5, 0
    ]
    few = viz.feature_overview(fm, channels=2)
    assert few.texts[0].get_text() == "c1  (4x4x5)  ch 2, 0, +3 more  (1 dead)"
    assert [t.get_text() for t in fm.plot("pool", max_channels=1).axes[0].texts] == ["ch 2"]


def test_save_writes_a_grid_per_site_an_overview_and_an_index(tmp_path):
    model, _ = siamese(size=16)
    rng = np.random.default_rng(1)
    fm = camlens.feature_maps(model, list(rng.normal(size=(2, 16, 16, 3)).astype("float32")), ["encoder/c1"])
    assert fm.layers == ["encoder/c1", "encoder/c1#1"]
    files = fm.save(tmp_path, max_channels=3)
    assert [f.name for f in files] == ["encoder-c1.png", "encoder-c1-1.png", "overview.png", "index.json"]
    meta = json.loads((tmp_path / "index.json").read_text())
    assert [e["layer"] for e in meta["layers"]] == fm.layers
    for entry, acts in zip(meta["layers"], fm.activations):
        assert entry["shape"] == [16, 16, 4] and entry["channels_total"] == 4 and entry["kind"] == "Conv2D"
        assert entry["channels_shown"] == viz.rank_channels(acts[0]).tolist()[:3]
        with Image.open(tmp_path / entry["file"]) as img:
            assert img.size == (400, 2 * 110 + 75)  # 2x2 tiles of 1.1 in, 4 in wide at least
    assert meta["overview"] == "overview.png"


# ---------------------------------------------------------------- command line
def _png(path, h: int, w: int) -> str:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = L.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    out = L.Dense(3, name="dense")(L.GlobalAveragePooling2D(name="gap")(x))
    path = tmp_path_factory.mktemp("features_model") / "m.keras"
    keras.Model(inp, out).save(path)
    return path


def test_cli_features_on_a_model_file(model_file, tmp_path, capsys):
    image = _png(tmp_path / "photo.png", 20, 30)
    out = tmp_path / "out"
    assert main(["features", str(model_file), image, "-o", str(out), "--preprocess", "unit"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert [(e["layer"], e["kind"], e["shape"]) for e in meta["layers"]] == [
        ("conv_a", "Conv2D", [12, 12, 4]), ("sep", "SeparableConv2D", [12, 12, 6])]
    text = capsys.readouterr().out
    assert "wrote 2 feature grid(s), overview.png and index.json to " + str(out) in text
    assert main(["features", str(model_file), image, "-o", str(out), "--layers", "sep,conv_a",
                 "--max-channels", "2"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert [e["layer"] for e in meta["layers"]] == ["sep", "conv_a"]
    assert all(len(e["channels_shown"]) == 2 for e in meta["layers"])


@pytest.mark.parametrize("args, message", [
    (["--layers", "conv_b"], "no layer 'conv_b'.*Did you mean 'conv_a'"),
    (["--layers", "gap"], "'gap' .* not a \\(height, width, channels\\) feature map"),
    (["--max-channels", "0"], "--max-channels must be at least 1; got 0"),
    (["--cmap", "jett"], "unknown colormap 'jett'"),
])
def test_cli_features_bad_arguments_exit_2(model_file, tmp_path, capsys, args, message):
    image = _png(tmp_path / "photo.png", 12, 12)
    assert main(["features", str(model_file), image, "-o", str(tmp_path / "o"), *args]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_cli_features_broken_image_exits_1_and_bundled_rejects_preprocess(model_file, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["features", str(model_file), str(broken), "-o", str(tmp_path / "o")]) == 1
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["features", "bundled", str(broken), "--preprocess", "unit"]) == 2
    assert "scales pixels itself" in capsys.readouterr().err


def test_cli_features_bundled_model_one_grid_per_conv_layer(tmp_path, capsys):
    from camlens import samples
    from camlens.models import efficientnet_lite0

    photo = tmp_path / "coffee.png"
    Image.fromarray(samples.photo("coffee")).save(photo)
    out = tmp_path / "lite"
    assert main(["features", "bundled", str(photo), "-o", str(out), "--max-channels", "8"]) == 0
    meta = json.loads((out / "index.json").read_text())
    # the real conv layers, from an architecture-only build (no weights needed for the names)
    convs = [(lyr.name, type(lyr).__name__) for lyr in efficientnet_lite0(pretrained=False).layers
             if "Conv" in type(lyr).__name__]
    assert len(convs) == 49
    assert [(e["layer"], e["kind"]) for e in meta["layers"]] == convs
    by_name = {e["layer"]: e for e in meta["layers"]}
    assert by_name["stem_conv"]["shape"] == [112, 112, 32]
    assert by_name["head_conv"]["shape"] == [7, 7, 1280]
    for e in meta["layers"]:
        shown = e["channels_shown"]
        assert len(shown) == 8 and len(set(shown)) == 8
        assert all(0 <= c < e["channels_total"] == e["shape"][2] for c in shown)
        with Image.open(out / e["file"]) as img:  # 8 tiles: 3 columns, 3 rows
            assert img.size == (400, 3 * 110 + 75)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [e["file"] for e in meta["layers"]] + ["overview.png", "index.json"])
    assert f"wrote 49 feature grid(s), overview.png and index.json to {out}/" in capsys.readouterr().out


# ---------------------------------------------------------------- standardized view, dead channels
def test_standardize_exact_pixels_and_dead_channel():
    # mean 1.5, population std sqrt(1.25): (x - 1.5) / 1.1180 * 64 + 128 = 42.1, 99.4, 156.6, 213.9
    assert viz.standardize(np.array([[0.0, 1.0], [2.0, 3.0]])).tolist() == [[42, 99], [156, 213]]
    # mean 0, std 1: -1 and +1 are 64 and 192
    got = viz.standardize(np.array([[-1.0, 1.0], [1.0, -1.0]]))
    assert got.dtype == np.uint8 and got.tolist() == [[64, 192], [192, 64]]
    # one outlier: mean 0.25, std sqrt(15) / 4; 4.0 is +3.87 std (375.9: clipped to 255),
    # the zeros -0.258 std (111.5: truncated to 111); min-max would draw the zeros all black
    spike = np.zeros((4, 4))
    spike[1, 2] = 4.0
    got = viz.standardize(spike)
    assert got[1, 2] == 255 and (np.delete(got.ravel(), 6) == 111).all()
    assert viz.standardize(np.full((3, 3), 7.0)) is None and viz.standardize(np.zeros((2, 2))) is None
    with pytest.raises(ValueError, match=r"one \(h, w\) channel; got shape \(2, 2, 1\)"):
        viz.standardize(np.zeros((2, 2, 1)))


def test_standardized_grid_tiles_and_dead_channel_marked_and_counted(tmp_path):
    a = c1_acts()  # channel 4 is K=0: all zero, dead
    assert viz.dead_channels(a) == [4]
    mosaic, chans = viz.feature_grid_array(a, style="standardized")
    assert chans == RANKED
    x = X[:, :, 0].astype(np.float64)
    want = np.clip((x - x.mean()) / x.std() * 64 + 128, 0, 255).astype(np.uint8) / np.float32(255)
    np.testing.assert_array_equal(mosaic[0:4, 0:4], want.astype(np.float32))  # ch 2 = 3x: same z
    np.testing.assert_array_equal(mosaic[4:8, 0:4], 0.5)  # ch 4, dead: flat grey
    with pytest.raises(ValueError, match="unknown style 'zscore'; use one of minmax, standardized"):
        viz.feature_grid_array(a, style="zscore")

    fig = viz.feature_grid(a, layer="c1", style="standardized")
    assert [t.get_text() for t in fig.axes[0].texts] == ["ch 2", "ch 0", "ch 3", "ch 4 dead", "ch 1"]
    assert len(fig.axes[0].patches) == 1 and len(fig.axes[0].lines) == 2  # grey tile, a cross
    assert fig.texts[1].get_text() == "5 of 5 channels, highest mean first, standardized; 1 dead"

    fm = camlens.feature_maps(tiny_net(), X, "spatial")
    assert fm.dead_channels("c1") == [4] and fm.dead_channels("pool") == [4]
    assert fm.dead_counts() == {"c1": 1, "pool": 1, "dw": 1}
    assert fm.plot(style="standardized").texts[0].get_text() == "c1  (4x4x5)  ch 2, 0, 3, 4, 1  (1 dead)"
    fm.save(tmp_path, style="standardized")
    meta = json.loads((tmp_path / "index.json").read_text())
    assert meta["style"] == "standardized" and meta["dead_count"] == 3
    assert [(e["dead_channels"], e["dead_count"]) for e in meta["layers"]] == [([4], 1)] * 3
    with pytest.raises(ValueError, match="unknown style 'belt'"):
        fm.save(tmp_path / "x", style="belt")
    assert not (tmp_path / "x").exists()


def test_cli_features_style_option(model_file, tmp_path, capsys):
    image = _png(tmp_path / "photo.png", 12, 12)
    out = tmp_path / "out"
    assert main(["features", str(model_file), image, "-o", str(out), "--style", "standardized"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert meta["style"] == "standardized" and all("dead_count" in e for e in meta["layers"])
    with pytest.raises(SystemExit) as stop:
        main(["features", str(model_file), image, "-o", str(out), "--style", "zscore"])
    assert stop.value.code == 2
    assert "invalid choice: 'zscore'" in capsys.readouterr().err
