"""Subclassed Keras models (``call`` written in Python), and Functional models holding one:
the graph comes from one recorded call. Each model here has a twin built from the very same
layer objects with the functional API, so the numbers the Functional path gives (tested on
their own elsewhere) are the expected ones. Run on every backend (tests/run.sh)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import keras
from keras import layers as L
from keras import ops

import camlens
from camlens.adapters import adapt
from camlens.targets import Logit, RegressionScore

from keras_models import one_conv_input

pytestmark = pytest.mark.filterwarnings("ignore:the map at")  # tiny random models: flat maps

RNG = np.random.default_rng(7)
X = RNG.random((2, 8, 8, 3), dtype=np.float32)


def _rows(report):
    return [(r.path, r.kind, r.shape, r.calls, r.dominates, r.chosen) for r in report.rows]


def _state(model):
    """Everything an explanation could leave behind: weights, each layer's instance
    attributes, its class's call, activation and trainable flag."""
    layers = [model, *model._flatten_layers(include_self=False, recursive=True)]
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "dicts": [sorted(vars(lyr)) for lyr in layers],
        "calls": [lyr.__dict__.get("call") for lyr in layers],
        "activations": [getattr(lyr, "activation", None) for lyr in layers],
        "trainable": [lyr.trainable for lyr in layers],
    }


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for x, y in zip(a["weights"], b["weights"]):
        np.testing.assert_array_equal(x, y)
    for key in ("dicts", "calls", "activations", "trainable"):
        assert a[key] == b[key], key


# ---------------------------------------------------------------------------- models
class OneConv(keras.Model):
    """keras_models.one_conv_net written as a subclass: 1x1 conv [2, -1], mean, Dense [3, 1]."""

    def __init__(self):
        super().__init__(name="one_conv_sub")
        self.conv = L.Conv2D(2, 1, use_bias=False, name="conv")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(1, use_bias=False, name="head")

    def call(self, x):
        return self.head(self.gap(self.conv(x)))


class Net(keras.Model):
    """conv1 -> pool -> conv2 -> gap -> softmax head, as the Keras guides write models."""

    def __init__(self, name="net"):
        super().__init__(name=name)
        self.conv1 = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")
        self.pool = L.MaxPooling2D(name="pool")
        self.conv2 = L.Conv2D(6, 3, padding="same", activation="relu", name="conv2")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(3, activation="softmax", name="head")

    def call(self, x, training=False):
        return self.head(self.gap(self.conv2(self.pool(self.conv1(x)))))


def _net():
    keras.utils.set_random_seed(3)
    net = Net()
    net(X)
    return net


def _twin(net):
    """The functional model of the same layer objects (so of the same weights)."""
    inp = keras.Input((8, 8, 3), name="image")
    out = net.head(net.gap(net.conv2(net.pool(net.conv1(inp)))))
    return keras.Model(inp, out, name="twin")


@pytest.fixture(scope="module")
def pair():
    net = _net()
    return net, _twin(net)


# ---------------------------------------------------------------------------- exact numbers
def test_one_conv_subclass_exact_numbers():
    net = OneConv()
    x = one_conv_input()
    net(x)
    net.conv.set_weights([np.array([2.0, -1.0], "float32").reshape(1, 1, 1, 2)])
    net.head.set_weights([np.array([[3.0], [1.0]], "float32")])
    adapter = adapt(net)
    adapter.prepare(x)
    node = [n for n in adapter.graph().nodes if n.path == "conv"][0]
    cap = adapter.capture([x], [node], RegressionScore(0))
    np.testing.assert_allclose(cap.sites[0].activations[0, :, :, 0], 2 * x[0, :, :, 0])
    np.testing.assert_allclose(cap.sites[0].activations[0, :, :, 1], -x[0, :, :, 0])
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 0], np.full((4, 4), 3 / 16), rtol=1e-6)
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 1], np.full((4, 4), 1 / 16), rtol=1e-6)
    assert cap.scores[0] == pytest.approx(5 * x.mean(), rel=1e-6)
    exp = camlens.explain(net, x, target=0)
    assert exp.sites[0].layer == "conv"
    # Grad-CAM: relu(3/16 * 2x + 1/16 * (-x)) = relu(5x / 16)
    np.testing.assert_allclose(exp.raw_maps[0][0], np.maximum(5 * x[0, :, :, 0] / 16, 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam", "ablationcam", "cam"])
def test_subclassed_equals_its_functional_twin(pair, method):
    net, twin = pair
    a = camlens.explain(net, X, method)
    b = camlens.explain(twin, X, method)
    assert [s.label for s in a.sites] == [s.label for s in b.sites] == ["conv2"]
    np.testing.assert_array_equal(a.class_indices, b.class_indices)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.raw_maps[0], b.raw_maps[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.maps[0], b.maps[0], rtol=1e-4, atol=1e-5)


def test_logit_target_and_explicit_layer_equal_the_twin(pair):
    net, twin = pair
    a = camlens.explain(net, X, target=Logit(2), layer="conv1")
    b = camlens.explain(twin, X, target=Logit(2), layer="conv1")
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.raw_maps[0], b.raw_maps[0], rtol=1e-4, atol=1e-6)
    logits = keras.ops.convert_to_numpy(net.head.kernel)
    assert not np.allclose(a.scores, 1 / 3)  # logits, not probabilities
    assert logits.shape == (6, 3)


def test_layers_table_equals_the_twin(pair):
    net, twin = pair
    sub, fun = camlens.layers(net), camlens.layers(twin)
    assert _rows(sub) == _rows(fun)
    assert sub.chosen == fun.chosen == ["conv2"]
    assert [r.path for r in sub.rows] == ["conv1", "pool", "conv2", "gap", "head"]
    # the shape the model was first called with is known; another one is given
    assert _rows(camlens.layers(net, input_shape=(1, 16, 16, 3)))[0][2] == "16x16x4"


def test_feature_maps_of_a_subclassed_model(pair):
    net, _ = pair
    fmaps = camlens.feature_maps(net, X)
    assert fmaps.layers == ["conv1", "conv2"]
    np.testing.assert_allclose(fmaps["conv1"], keras.ops.convert_to_numpy(net.conv1(X)), rtol=1e-5, atol=1e-6)
    one = camlens.feature_maps(net, X[0], layers="pool")
    assert one["pool"].shape == (1, 4, 4, 4)


def test_the_model_is_left_as_it_was(pair):
    net, _ = pair
    before = _state(net)
    for method in ("gradcam", "scorecam", "guidedbackprop", "ablationcam"):
        camlens.explain(net, X, method, target=Logit(1))
    camlens.feature_maps(net, X)
    camlens.layers(net)
    _assert_same_state(before, _state(net))


def test_an_unbuilt_subclassed_model_is_refused_and_stays_unbuilt():
    net = Net(name="unbuilt")
    with pytest.raises(ValueError, match="not built yet"):
        camlens.explain(net, X)
    assert not net.built and not net.conv1.built


# ---------------------------------------------------------------------------- shared layers
class Siamese(keras.Model):
    """One encoder (a custom layer holding two convs) called on two images."""

    def __init__(self):
        super().__init__(name="siamese_sub")
        self.encoder = Encoder(name="encoder")
        self.merge = L.Concatenate(name="merge")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.out = L.Dense(1, name="similarity")

    def call(self, inputs):
        a, b = inputs
        return self.out(self.gap(self.merge([self.encoder(a), self.encoder(b)])))


class Encoder(L.Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.c1 = L.Conv2D(3, 3, padding="same", activation="relu", name="c1")
        self.c2 = L.Conv2D(4, 3, padding="same", activation="tanh", name="c2")

    def call(self, x):
        return self.c2(self.c1(x))


def test_a_shared_sublayer_gives_one_call_site_per_input():
    keras.utils.set_random_seed(4)
    model = Siamese()
    xa, xb = X[:1], X[1:]
    model([xa, xb])
    report = camlens.layers(model)
    rows = {r.path: r for r in report.rows}
    assert rows["encoder/c2"].calls == 2 and rows["encoder/c1"].calls == 2
    assert report.chosen == ["encoder/c2", "encoder/c2#1"]
    exp = camlens.explain(model, [xa, xb], target=RegressionScore(0))
    assert [s.label for s in exp.sites] == ["encoder/c2", "encoder/c2#1"]
    assert [s.input_index for s in exp.sites] == [0, 1]
    # the twin of the same layers: the same two maps
    a = keras.Input((8, 8, 3), name="a")
    b = keras.Input((8, 8, 3), name="b")
    enc = model.encoder
    feats = [enc.c2(enc.c1(a)), enc.c2(enc.c1(b))]
    twin = keras.Model([a, b], model.out(model.gap(model.merge(feats))))
    ref = camlens.explain(twin, [xa, xb], target=RegressionScore(0), layer=["c2#0", "c2#1"])
    np.testing.assert_allclose(exp.scores, ref.scores, rtol=1e-5)
    for m, r in zip(exp.raw_maps, ref.raw_maps):
        np.testing.assert_allclose(m, r, rtol=1e-4, atol=1e-6)
    # the encoder's own path names its output at each call
    by_name = camlens.explain(model, [xa, xb], target=RegressionScore(0), layer="encoder")
    assert [s.label for s in by_name.sites] == ["encoder/c2", "encoder/c2#1"]


# ---------------------------------------------------------------------------- nesting
class Backbone(keras.Model):
    def __init__(self):
        super().__init__(name="backbone")
        self.conv1 = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")
        self.conv2 = L.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="conv2")

    def call(self, x):
        return self.conv2(self.conv1(x))


def test_a_functional_model_wrapping_a_subclassed_backbone():
    keras.utils.set_random_seed(5)
    backbone = Backbone()
    backbone(X)
    inp = keras.Input((8, 8, 3), name="image")
    gap, head = L.GlobalAveragePooling2D(name="gap"), L.Dense(3, name="head")
    model = keras.Model(inp, head(gap(backbone(inp))))
    flat = keras.Model(inp, head(gap(backbone.conv2(backbone.conv1(inp)))))
    report = camlens.layers(model)
    assert [r.path for r in report.rows] == ["backbone/conv1", "backbone/conv2", "gap", "head"]
    assert report.chosen == ["backbone/conv2"]
    auto = camlens.explain(model, X)
    given = camlens.explain(model, X, layer="backbone/conv2")
    ref = camlens.explain(flat, X, layer="conv2")
    assert auto.sites[0].label == given.sites[0].label == "backbone/conv2"
    for exp in (auto, given):
        np.testing.assert_allclose(exp.raw_maps[0], ref.raw_maps[0], rtol=1e-4, atol=1e-6)
    early = camlens.explain(model, X, "ablationcam", layer="backbone/conv1")
    ref1 = camlens.explain(flat, X, "ablationcam", layer="conv1")
    np.testing.assert_allclose(early.raw_maps[0], ref1.raw_maps[0], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- raw operations
class RawRelu(keras.Model):
    """keras.ops.relu between the layers: what each layer reads is a value, not a layer's
    output."""

    def __init__(self, late_relu=True):
        super().__init__(name="raw_relu")
        self.late_relu = late_relu
        self.conv1 = L.Conv2D(4, 3, padding="same", name="conv1")
        self.conv2 = L.Conv2D(4, 3, padding="same", name="conv2")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(3, name="head")

    def call(self, x):
        x = self.conv2(ops.relu(self.conv1(x)))
        if self.late_relu:
            x = ops.relu(x)
        return self.head(self.gap(x))


def test_raw_ops_before_the_last_spatial_layer_give_a_sound_choice():
    keras.utils.set_random_seed(6)
    model = RawRelu(late_relu=False)
    model(X)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*(computes between|cannot be read)", RuntimeWarning)
        exp = camlens.explain(model, X)
    assert exp.sites[0].label == "conv2"
    assert "computes between its layers" in exp.reason
    report = camlens.layers(model)
    assert {r.path: r.dominates for r in report.rows}["conv1"] is False  # bypassed: sound


def test_raw_ops_after_the_last_spatial_layer_warn():
    keras.utils.set_random_seed(6)
    model = RawRelu()
    model(X)
    with pytest.warns(RuntimeWarning, match="computes between its layers"):
        exp = camlens.explain(model, X)
    assert exp.sites[0].label == "conv2"
    given = camlens.explain(model, X, layer="conv2")
    np.testing.assert_allclose(exp.raw_maps[0], given.raw_maps[0])
    # the explicit layer is what the model computes: the gradient through the raw relu
    inp = keras.Input((8, 8, 3))
    h = L.ReLU()(model.conv2(L.ReLU()(model.conv1(inp))))
    twin = keras.Model(inp, model.head(model.gap(h)))
    ref = camlens.explain(twin, X, layer=model.conv2.name)
    np.testing.assert_allclose(given.raw_maps[0], ref.raw_maps[0], rtol=1e-4, atol=1e-6)


class Residual(L.Layer):
    """A block ending in relu(b(a(x)) + x): its output is no layer's output."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.a = L.Conv2D(4, 3, padding="same", activation="relu", name="a")
        self.b = L.Conv2D(4, 3, padding="same", name="b")

    def call(self, x):
        return ops.relu(self.b(self.a(x)) + x)


class ResNet(keras.Model):
    def __init__(self):
        super().__init__(name="resnet_sub")
        self.stem = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")
        self.block = Residual(name="block")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(3, name="head")

    def call(self, x):
        return self.head(self.gap(self.block(self.stem(x))))


def test_a_block_ending_in_a_raw_op_is_a_call_site():
    keras.utils.set_random_seed(8)
    model = ResNet()
    model(X)
    report = camlens.layers(model)
    rows = {r.path: r for r in report.rows}
    assert rows["block"].kind == "Residual" and rows["block"].dominates
    assert not rows["block/b"].dominates  # the skip connection goes round it
    assert report.chosen == ["block"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*(computes between|cannot be read)", RuntimeWarning)
        exp = camlens.explain(model, X, target=1)
        abl = camlens.explain(model, X, "ablationcam", target=1)
    blk = model.block
    inp = keras.Input((8, 8, 3))
    s = model.stem(inp)
    out = L.ReLU(name="block_out")(L.Add()([blk.b(blk.a(s)), s]))
    twin = keras.Model(inp, model.head(model.gap(out)))
    ref = camlens.explain(twin, X, target=1, layer="block_out")
    ref_abl = camlens.explain(twin, X, "ablationcam", target=1, layer="block_out")
    np.testing.assert_allclose(exp.raw_maps[0], ref.raw_maps[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(abl.raw_maps[0], ref_abl.raw_maps[0], rtol=1e-4, atol=1e-6)


class RawSoftmax(Net):
    def call(self, x, training=False):
        return ops.softmax(self.head(self.gap(self.conv2(self.pool(self.conv1(x))))))


def test_an_output_made_after_the_last_layer_warns_for_logits():
    keras.utils.set_random_seed(3)
    model = RawSoftmax(name="raw_softmax")
    model(X)
    with pytest.warns(RuntimeWarning, match="computes between its layers"):
        report = camlens.layers(model)  # the model's own call is a node, read by it all
    assert report.rows[-1].path == "raw_softmax" and report.chosen == ["conv2"]
    with pytest.warns(RuntimeWarning, match="cannot tell whether it ends in a softmax"):
        camlens.explain(model, X, target=Logit(0))


def test_a_functional_model_holding_a_custom_layer_with_sublayers():
    keras.utils.set_random_seed(9)
    enc = Encoder(name="enc")
    inp = keras.Input((8, 8, 3))
    gap, head = L.GlobalAveragePooling2D(name="gap"), L.Dense(3, name="head")
    model = keras.Model(inp, head(gap(enc(inp))))
    flat = keras.Model(inp, head(gap(enc.c2(enc.c1(inp)))))
    report = camlens.layers(model)
    assert [r.path for r in report.rows] == ["enc/c1", "enc/c2", "gap", "head"]
    assert report.chosen == ["enc/c2"]
    for layer in ("enc/c1", "enc"):  # the layer's own path names its output
        exp = camlens.explain(model, X, target=2, layer=layer)
        ref = camlens.explain(flat, X, target=2, layer="c1" if layer == "enc/c1" else "c2")
        np.testing.assert_allclose(exp.raw_maps[0], ref.raw_maps[0], rtol=1e-4, atol=1e-6)
