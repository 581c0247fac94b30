"""LRP and DeepLIFT on Keras models: the compiled run against the eager one, the programs'
keys, the non-negative inputs read from the graph, DeepLIFT through max pooling, and grouped
and depthwise convolutions."""

from __future__ import annotations

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import camlens  # noqa: E402
from camlens.adapters.keras import relevance as krel  # noqa: E402
from camlens.adapters.keras.adapter import KerasAdapter  # noqa: E402
from camlens.adapters.keras.compiled import PROGRAMS  # noqa: E402
from camlens.methods.relevance import LRP, DeepLift  # noqa: E402

L = keras.layers
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
COMPILES = BACKEND in ("tensorflow", "jax")
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def _net(pool: str = "max", bias: bool = True) -> object:
    """A tiny functional net: conv (relu) -> pooling -> conv -> ReLU layer -> a branch and a
    sum -> GAP -> Dense."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=bias)(inp)
    h = (L.MaxPooling2D if pool == "max" else L.AveragePooling2D)(2)(h)
    h = L.Conv2D(4, 3, padding="same", use_bias=bias)(h)
    h = L.ReLU()(h)
    h = L.Add()([h, L.Conv2D(4, 1, activation="relu", use_bias=bias)(h)])
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(3, use_bias=bias)(h))


X = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)


def _rule_programs(model: object) -> int:
    """The compiled relevance programs kept for ``model`` (not the plain forward program that
    a pixel method's first pass, the outputs and the class to explain, also compiles)."""
    return sum(key[0] != "features" for key in PROGRAMS._per_model.get(model, {}))


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KerasAdapter, "_compiles", lambda self: False)


@pytest.mark.skipif(not COMPILES, reason="the Keras torch backend runs eagerly")
@pytest.mark.parametrize("method", [*COMPOSITES, "deeplift"])
def test_compiled_relevance_is_the_eager_one(monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    model = _net()
    m = DeepLift(baseline=0.1) if method == "deeplift" else LRP(composite=method)
    got = camlens.explain(model, X, method=m, target=1)
    assert _rule_programs(model) == 1  # the compiled program ran
    with monkeypatch.context() as mp:
        _eager(mp)
        ref = camlens.explain(model, X, method=m, target=1)
    assert _rule_programs(model) == 1
    scale = np.abs(ref.details[0]["attributions"]).max()
    assert scale > 1e-4
    np.testing.assert_allclose(got.details[0]["attributions"] / scale, ref.details[0]["attributions"] / scale,
                               atol=1e-6)


@pytest.mark.skipif(not COMPILES, reason="the Keras torch backend runs eagerly")
def test_a_new_composite_or_epsilon_compiles_its_own_program(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    settings = [dict(composite="epsilon"), dict(composite="epsilon", epsilon=0.5), dict(composite="epsilon_plus"),
                dict(composite="epsilon_plus", stabilizer=0.5)]
    maps = []
    for n, kw in enumerate(settings, 1):
        maps.append(camlens.explain(model, X, method=LRP(**kw), target=0).details[0]["attributions"])
        assert _rule_programs(model) == n
        with monkeypatch.context() as mp:
            _eager(mp)
            ref = camlens.explain(model, X, method=LRP(**kw), target=0).details[0]["attributions"]
        np.testing.assert_allclose(maps[-1], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    for a, b in zip(maps, maps[1:]):
        assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
    # the same settings in a new LRP object: the same program
    camlens.explain(model, X, method=LRP(composite="epsilon", epsilon=0.5), target=2)
    assert _rule_programs(model) == len(settings)


@pytest.mark.skipif(not COMPILES, reason="the Keras torch backend runs eagerly")
def test_the_relevance_programs_go_with_their_model() -> None:
    import gc
    import weakref

    model = _net()
    for m in (LRP(), DeepLift()):
        camlens.explain(model, X[:1], method=m, target=0)
    assert _rule_programs(model) == 2
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_nonnegative_inputs_are_read_from_the_graph() -> None:
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(2, 3, name="a", activation="relu")(inp)       # after the input: signed
    b = L.Conv2D(2, 1, name="b")(L.MaxPooling2D()(a))           # a relu'd conv, pooled
    c = L.Conv2D(2, 1, name="c")(L.Activation("relu")(b))       # Activation('relu')
    d = L.Conv2D(2, 1, name="d")(L.ReLU()(c))                   # a ReLU layer
    e = L.Conv2D(2, 1, name="e")(L.LeakyReLU()(d))              # leaky: signed
    f = L.Conv2D(2, 1, name="f")(L.Activation("tanh")(e))       # tanh: signed
    shared = L.Conv2D(2, 1, name="shared")
    g = L.Add()([shared(L.ReLU()(f)), shared(f)])              # once signed: signed
    h = L.Dense(2, name="h")(L.Flatten()(L.ZeroPadding2D()(L.ReLU(max_value=6.0)(g))))
    model = keras.Model(inp, h)
    adapter = KerasAdapter(model)
    graph = adapter.graph()
    found = krel.nonnegative_inputs(graph.nodes, adapter._ops.__getitem__)
    linear = [op for op in model.layers if isinstance(op, (L.Conv2D, L.Dense))]
    assert sorted(op.name for op in linear if id(op) in found) == ["b", "c", "d", "h"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="one backend")
@pytest.mark.parametrize("name, after_relu, signed", [
    ("epsilon_plus", 2, 3), ("epsilon_alpha2_beta1", 2, 4), ("epsilon_gamma_box", 2, 4),
])
def test_lrp_runs_fewer_convolutions_after_a_relu(monkeypatch: pytest.MonkeyPatch, name: str, after_relu: int,
                                                  signed: int) -> None:
    """The second convolution's input comes from a ReLU (read from the graph): z+ runs the layer
    and its positive weights (2, was 3), alpha-beta and gamma their two parts (2, was 4); the
    first layer's input is signed."""
    from camlens.rules import LayerRules, composite

    _eager(monkeypatch)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="one", activation="relu"),
                              L.Conv2D(2, 3, name="two"), L.Flatten(), L.Dense(2)])
    calls: list[str] = []
    real = krel._apply

    def counted(layer: object, *args: object) -> object:
        calls.append(layer.name)
        return real(layer, *args)

    monkeypatch.setattr(krel, "_apply", counted)
    conv = composite(name).conv
    calls.clear()
    camlens.explain(model, X[:1, :6, :6, :2], method=LRP(composite=LayerRules("c", conv=conv, dense=conv.__class__(
        "epsilon"), first=conv)), target=0)
    count = {n: calls.count(n) for n in ("one", "two")}
    assert (count["one"], count["two"]) == (signed, after_relu)


def test_deeplift_through_max_pooling_sums_to_delta() -> None:
    model = _net(pool="max")
    ref = np.full((1, 8, 8, 3), 0.2, np.float32)
    exp = camlens.explain(model, X, method=DeepLift(baseline=0.2), target=2)
    attr = exp.details[0]["attributions"]
    f = keras.ops.convert_to_numpy(model(X))[:, 2]
    f0 = keras.ops.convert_to_numpy(model(ref))[0, 2]
    assert np.abs(f - f0).min() > 1e-3
    np.testing.assert_allclose(attr.reshape(len(X), -1).sum(axis=1), f - f0, rtol=1e-4, atol=1e-6)
    # the max pooling's rule matters: the plain gradient through it does not sum to delta here
    assert np.abs(exp.details[0]["delta_error"]).max() < 1e-4


def _grouped(bias: bool) -> object:
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 4))
    h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=bias)(inp)
    h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=bias)(h)
    h = L.BatchNormalization()(h)
    h = L.ReLU(max_value=6.0)(h)
    h = L.Conv2D(4, 3, groups=2, padding="same", use_bias=bias, activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(3, use_bias=bias)(h))


@pytest.mark.parametrize("name", ["epsilon", "epsilon_plus"])
def test_lrp_conserves_through_depthwise_and_grouped_convolutions(name: str) -> None:
    model = _grouped(bias=False)
    bn = model.layers[3]
    # batch norm merged into the depthwise convolution: its shift would add relevance
    bn.set_weights([np.full(8, 1.5, np.float32), np.zeros(8, np.float32), np.zeros(8, np.float32),
                    np.full(8, 0.5, np.float32)])
    x = np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 4)).astype(np.float32)
    exp = camlens.explain(model, x, method=LRP(composite=name, epsilon=1e-9, stabilizer=1e-9), target=1)
    d = exp.details[0]
    assert np.abs(d["scores"]).min() > 1e-3
    np.testing.assert_allclose(d["relevance_sum"], d["scores"], rtol=1e-4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="one backend: a few seconds")
def test_lrp_runs_on_mobilenetv2() -> None:
    """keras.applications' MobileNetV2 (depthwise convolutions, ReLU6, residual sums, batch norm
    after every convolution), bias-free: epsilon conserves. Its fresh batch norms let the random
    activations fade to about 1e-10 at the head, which any stabilizer would swallow: their
    variances are set from one batch (and their means to 0, adding no bias) first."""
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), alpha=0.35)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    bns = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)  # moving statistics := the batch's
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, np.float32))
    exp = camlens.explain(model, x[:1], method=LRP(composite="epsilon", epsilon=1e-9), target=3)
    d = exp.details[0]
    assert exp.raw_maps[0].shape == (1, 64, 64)
    assert np.isfinite(d["attributions"]).all() and abs(d["scores"][0]) > 1e-3
    np.testing.assert_allclose(d["relevance_sum"], d["scores"], rtol=1e-3)
