"""explain() on Keras models: exact numbers, call sites, targets, the model left unchanged."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import keras
from keras import layers as L

import camlens
from camlens import targets
from hand_computed import EXPECTED
from keras_models import (
    backend_gradients,
    one_conv_input,
    one_conv_net,
    probe_free,
    siamese,
    small_classifier,
    two_heads,
)

X = one_conv_input()


@pytest.fixture(scope="module")
def net():
    return one_conv_net()


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_one_conv_net_exact_maps(net, method):
    exp = camlens.explain(net, X, method=method, target=0)
    assert exp.sites[0].layer == "conv"
    np.testing.assert_allclose(exp.raw_maps[0][0], EXPECTED[method], rtol=1e-6, atol=1e-6)
    assert exp.maps[0].shape == (1, 4, 4)
    assert exp.maps[0].min() == 0.0 and exp.maps[0].max() == pytest.approx(1.0)


def test_one_conv_net_activations_gradients_and_score(net):
    from camlens.adapters import adapt

    adapter = adapt(net)
    node = adapter.graph().nodes[1]
    cap = adapter.capture([X], [node], targets.RegressionScore(0))
    np.testing.assert_allclose(cap.sites[0].activations[0, :, :, 0], 2 * X[0, :, :, 0])
    np.testing.assert_allclose(cap.sites[0].activations[0, :, :, 1], -X[0, :, :, 0])
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 0], np.full((4, 4), 3 / 16), rtol=1e-6)
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 1], np.full((4, 4), 1 / 16), rtol=1e-6)
    assert cap.scores[0] == pytest.approx(5 * X.mean(), rel=1e-6)  # 5 * 40/16 = 12.5


def test_eigencam_through_the_adapter(net):
    # A has rank one (both channels are multiples of x): the first component is x itself,
    # signed to agree with the activations' channel sum (2x - x = x).
    exp = camlens.explain(net, X, method="eigencam")
    centred = X[0, :, :, 0] - X.mean()
    proj = centred * np.sqrt(5.0)  # |(2, -1)| = sqrt(5)
    np.testing.assert_allclose(exp.raw_maps[0][0], np.maximum(proj, 0), rtol=1e-5, atol=1e-5)


def test_gradcam_equals_relu_cam_over_z_on_a_gap_dense_head():
    model = small_classifier(activation="softmax")
    x = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    cam = camlens.explain(model, x, method="cam", target=targets.Logit(2))
    grad = camlens.explain(model, x, method="gradcam", target=targets.Logit(2))
    z = 16 * 16
    np.testing.assert_allclose(grad.raw_maps[0], np.maximum(cam.raw_maps[0], 0) / z, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------ the siamese model of seed 000
@pytest.fixture(scope="module")
def pair():
    model, encoder = siamese()
    rng = np.random.default_rng(1)
    xa = rng.random((2, 32, 32, 3), dtype=np.float32)
    xb = rng.random((2, 32, 32, 3), dtype=np.float32)
    return model, encoder, xa, xb


def test_siamese_auto_layer_has_one_site_per_image(pair):
    model, _, xa, xb = pair
    exp = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0))
    assert [(s.layer, s.call, s.input_index) for s in exp.sites] == [
        ("encoder/c2", 0, 0),
        ("encoder/c2", 1, 1),
    ]
    assert [m.shape for m in exp.maps] == [(2, 32, 32), (2, 32, 32)]
    np.testing.assert_allclose(exp.scores, model.predict([xa, xb], verbose=0)[:, 0], rtol=1e-5)
    report = camlens.layers(model)
    assert report.chosen == ["encoder/c2", "encoder/c2#1"]
    assert "'input_1' and 'input_2'" in report.reason
    again = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0), layer=report.chosen)
    np.testing.assert_array_equal(again.raw_maps[1], exp.raw_maps[1])


def test_siamese_call_sites_match_an_independent_gradient(pair):
    model, encoder, xa, xb = pair
    exp_sites = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0), method="hirescam")
    from camlens.adapters import adapt

    adapter = adapt(model)
    graph = adapter.graph()
    c2 = [n for n in graph.nodes if n.path == "encoder/c2"]
    cap = adapter.capture([xa, xb], c2, targets.RegressionScore(0))

    # The same computation written by hand with the same layer objects, no camlens involved.
    c1, p1, c2_layer, p2 = encoder.layers
    act_a = keras.ops.convert_to_numpy(c2_layer(p1(c1(xa))))
    act_b = keras.ops.convert_to_numpy(c2_layer(p1(c1(xb))))

    def after_c2(a, b):
        merged = model.get_layer("merged")([p2(a), p2(b)])
        h = model.get_layer("mnet_conv1")(merged)
        return model.get_layer("similarity")(model.layers[-2](h))

    ga, gb = backend_gradients(after_c2, act_a, act_b)
    np.testing.assert_allclose(cap.sites[0].activations, act_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap.sites[1].activations, act_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cap.sites[0].gradients, ga, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(cap.sites[1].gradients, gb, rtol=1e-4, atol=1e-7)
    hires_a = np.maximum((ga * act_a).sum(-1), 0)
    np.testing.assert_allclose(exp_sites.raw_maps[0], hires_a, rtol=1e-4, atol=1e-7)
    assert probe_free(model)


@pytest.mark.filterwarnings("ignore:the map at")
def test_siamese_named_nested_model_and_call_index(pair):
    model, _, xa, xb = pair
    exp = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0), layer="encoder")
    assert [(s.layer, s.call) for s in exp.sites] == [("encoder/p2", 0), ("encoder/p2", 1)]
    second = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0), layer="c2#1")
    assert [(s.layer, s.call, s.input_index) for s in second.sites] == [("encoder/c2", 1, 1)]


def test_nested_sequential_backbone_gets_a_path_name():
    keras.utils.set_random_seed(4)
    backbone = keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, activation="relu", name="first"),
         L.Conv2D(6, 3, activation="relu", name="last_conv")],
        name="backbone",
    )
    inp = keras.Input((16, 16, 3))
    out = L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(backbone(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    exp = camlens.explain(model, x, method="cam")
    assert exp.sites[0].layer == "backbone/last_conv"
    assert exp.class_indices.tolist() == model.predict(x, verbose=0).argmax(-1).tolist()


def test_seed_002_resnet50_in_a_sequential_cam_and_gradcam():
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    model = keras.Sequential([keras.Input((64, 64, 3)), base, L.GlobalAveragePooling2D(), L.Dense(2, activation="softmax")])
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype("float32") * 255
    cam = camlens.explain(model, x, method="cam")
    assert cam.sites[0].layer == f"{base.name}/conv5_block3_out"
    grad = camlens.explain(model, x, method="gradcam", target=targets.Logit())
    np.testing.assert_allclose(grad.raw_maps[0], np.maximum(cam.raw_maps[0], 0) / 4, rtol=1e-3, atol=1e-6)
    overlay = cam.overlay(x)
    assert overlay.shape == (1, 64, 64, 3) and overlay.dtype == np.uint8


# ------------------------------------------------------------ outputs and targets
@pytest.mark.filterwarnings("ignore:the map at")
def test_multi_output_layer_follows_the_output():
    model = two_heads()
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    assert camlens.layers(model).chosen == ["conv_a"]
    assert camlens.layers(model, output="reg").chosen == ["conv_b"]
    exp = camlens.explain(model, x, target=targets.RegressionScore(0, output="reg"))
    assert exp.sites[0].layer == "conv_b"
    np.testing.assert_allclose(exp.scores, model.predict(x, verbose=0)[1][:, 0], rtol=1e-5)
    exp = camlens.explain(model, x, target=1, output="cls")
    assert exp.sites[0].layer == "conv_a" and exp.class_indices.tolist() == [1, 1]
    with pytest.raises(ValueError, match="no output named 'nope'.*'cls', 'reg'"):
        camlens.explain(model, x, output="nope")


def test_class_targets_top_index_and_per_sample():
    model = small_classifier()
    x = np.random.default_rng(5).random((3, 16, 16, 3)).astype("float32")
    probs = model.predict(x, verbose=0)
    top = camlens.explain(model, x)
    np.testing.assert_allclose(top.scores, probs.max(-1), rtol=1e-5)
    per = camlens.explain(model, x, target=[0, 1, 2])
    np.testing.assert_allclose(per.scores, probs[[0, 1, 2], [0, 1, 2]], rtol=1e-5)
    assert per.class_indices.tolist() == [0, 1, 2]


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.filterwarnings("ignore:the map at")
def test_logit_skips_the_final_softmax_and_restores_it(separate):
    keras.utils.set_random_seed(6)
    inp = keras.Input((8, 8, 3))
    h = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu", name="conv")(inp))
    if separate:
        logits = L.Dense(3, name="logits")(h)
        out = L.Activation("softmax", name="probs")(logits)
    else:
        out = L.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    twin = keras.Model(inp, model.get_layer("logits").output if separate else L.Dense(3, name="lin")(h))
    if not separate:
        twin.get_layer("lin").set_weights(model.get_layer("probs").get_weights())
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    want = twin.predict(x, verbose=0)[:, 1]
    exp = camlens.explain(model, x, target=targets.Logit(1))
    np.testing.assert_allclose(exp.scores, want, rtol=1e-5)
    from camlens.adapters import adapt

    grads = []
    for m, t in ((model, targets.Logit(1)), (twin, targets.ClassScore(1))):
        adapter = adapt(m)
        conv = [n for n in adapter.graph().nodes if n.path == "conv"]
        grads.append(adapter.capture([x], conv, t).sites[0].gradients)
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)  # softmax is back
    assert probe_free(model)


@pytest.mark.parametrize("separate", [False, True])
def test_rerun_scores_are_compiled_on_tensorflow_and_jax_and_agree_with_the_model(separate, monkeypatch):
    """``KerasAdapter.score`` (Score-CAM's, RISE's and the metrics' model runs) goes through
    tf.function / jax.jit for class targets: same numbers as the model and as the eager replay;
    a class out of range is refused either way."""
    from camlens.adapters import keras as kad
    from camlens.adapters import adapt

    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3))
    h = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu", name="conv")(inp))
    if separate:
        out = L.Activation("softmax", name="probs")(L.Dense(3, name="logits")(h))
    else:
        out = L.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(1).random((4, 8, 8, 3)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x))
    logits = np.log(probs) - np.log(probs).mean(-1, keepdims=True)  # logits up to a constant
    adapter = adapt(model)
    arrays = adapter.prepare(x)
    compiles = keras.backend.backend() in ("tensorflow", "jax")
    for target, want in ((targets.ClassScore(1), probs[:, 1]),
                         (targets.ClassScore([2, 0, 1, 2]), probs[[0, 1, 2, 3], [2, 0, 1, 2]])):
        kad.clear_compiled_cache()
        np.testing.assert_allclose(adapter.score(arrays, target), want, rtol=1e-5)
        assert (model in kad.PROGRAMS) == compiles
    logit = adapter.score(arrays, targets.Logit(2)) - adapter.score(arrays, targets.Logit(0))
    np.testing.assert_allclose(logit, logits[:, 2] - logits[:, 0], rtol=1e-4, atol=1e-5)
    compiled = [adapter.score(arrays, t) for t in (targets.ClassScore(1), targets.Logit(2))]
    with pytest.raises(ValueError, match="class index 3 is out of range"):
        adapter.score(arrays, targets.ClassScore(3))
    monkeypatch.setattr(kad.KerasAdapter, "_compiles", lambda self: False)  # the eager replay
    eager = [adapter.score(arrays, t) for t in (targets.ClassScore(1), targets.Logit(2))]
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="class index 3 is out of range"):
        adapter.score(arrays, targets.ClassScore(3))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)  # softmax left in place
    assert probe_free(model)


def test_similarity_between_outputs_and_against_a_reference():
    keras.utils.set_random_seed(7)
    encoder = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu", name="conv"),
                                L.GlobalAveragePooling2D(), L.Dense(5)], name="embed")
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    model = keras.Model([a, b], [encoder(a), encoder(b)])
    rng = np.random.default_rng(0)
    xa, xb = rng.random((2, 8, 8, 3), dtype=np.float32), rng.random((2, 8, 8, 3), dtype=np.float32)
    ea, eb = model.predict([xa, xb], verbose=0)
    cos = (ea * eb).sum(-1) / np.linalg.norm(ea, axis=-1) / np.linalg.norm(eb, axis=-1)
    exp = camlens.explain(model, [xa, xb], target=targets.Similarity(0, other=1))
    np.testing.assert_allclose(exp.scores, cos, rtol=1e-5)
    assert [(s.layer, s.input_index) for s in exp.sites] == [("embed/conv", 0), ("embed/conv", 1)]
    # Keras runs the second branch first here; each site must still hold its own image's map.
    conv = encoder.get_layer("conv")
    from camlens.adapters import adapt

    adapter = adapt(model)
    nodes = [n for n in adapter.graph().nodes if n.path == "embed/conv"]
    cap = adapter.capture([xa, xb], nodes, targets.Similarity(0, other=1))
    for node, site in zip(nodes, cap.sites):
        x_own = xa if site.node.call == exp.sites[0].call else xb
        np.testing.assert_allclose(site.activations, keras.ops.convert_to_numpy(conv(x_own)), rtol=1e-5, atol=1e-6)
    ref = np.array([1.0, 0.0, -1.0, 2.0, 0.5], "float32")
    exp = camlens.explain(model, [xa, xb], target=targets.Similarity(1, reference=ref))
    want = (eb @ ref) / np.linalg.norm(eb, axis=-1) / np.linalg.norm(ref)
    np.testing.assert_allclose(exp.scores, want, rtol=1e-5)
    assert [(s.layer, s.input_index) for s in exp.sites] == [("embed/conv", 1)]


def test_segmentation_region_and_callable_targets():
    keras.utils.set_random_seed(8)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inp)
    out = L.Conv2D(2, 1, activation="softmax", name="seg")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    y = model.predict(x, verbose=0)
    exp = camlens.explain(model, x, target=targets.SegmentationRegion(1, mask))
    np.testing.assert_allclose(exp.scores, (y[..., 1] * mask).sum((1, 2)), rtol=1e-5)
    assert exp.sites[0].layer == "feat"
    fn = camlens.explain(model, x, target=lambda out: out[:, 0, 0, 1], layer="feat")
    np.testing.assert_allclose(fn.scores, y[:, 0, 0, 1], rtol=1e-5)


def test_regression_similarity_and_segmentation_targets_compile_and_agree_with_eager(monkeypatch):
    """On TensorFlow and JAX these targets run compiled (frozen into the trace, keyed by their
    fields: an equal target reuses the program, another reference compiles its own); a callable
    target never does. Maps, gradients and scores equal the eager run's on every backend."""
    from camlens.adapters import keras as kad
    from camlens.adapters import adapt

    keras.utils.set_random_seed(9)
    encoder = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu", name="conv"),
                                L.GlobalAveragePooling2D(), L.Dense(5)], name="embed")
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    pair = keras.Model([a, b], [encoder(a), encoder(b)])
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inp)
    seg = keras.Model(inp, [L.Conv2D(2, 1, name="seg")(h), L.Dense(3, name="reg")(L.GlobalAveragePooling2D()(h))])
    rng = np.random.default_rng(2)
    xa, xb = rng.random((3, 8, 8, 3), dtype=np.float32), rng.random((3, 8, 8, 3), dtype=np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[1:4, 2:6] = 1.0
    ref = keras.ops.convert_to_numpy(encoder(xa[:1]))[0]  # how much each image looks like xa[0]
    cases = [
        (pair, [xa, xb], targets.Similarity(0, other=1), "embed/conv"),
        (pair, [xa, xb], targets.Similarity(1, reference=ref), "embed/conv"),
        (seg, xa, targets.SegmentationRegion(1, mask, output=0), "feat"),
        (seg, xa, targets.RegressionScore(2, output=1), "feat"),
    ]
    compiles = keras.backend.backend() in ("tensorflow", "jax")
    kad.clear_compiled_cache()

    def run(model, x, target, layer):
        adapter = adapt(model)
        arrays = adapter.prepare(x)
        nodes = [n for n in adapter.graph().nodes if n.path == layer]
        cap = adapter.capture(arrays, nodes, target)
        exp = camlens.explain(model, x, target=target, layer=layer)
        return exp, cap, adapter.score(arrays, target)

    compiled = []
    for case in cases:
        compiled.append(run(*case))
        again = run(*case)  # the same programs
        np.testing.assert_array_equal(again[0].raw_maps[0], compiled[-1][0].raw_maps[0])
    if compiles:
        assert kad.PROGRAMS.count(pair) == 4  # capture and score, per Similarity
        assert kad.PROGRAMS.count(seg) == 4
    camlens.explain(seg, xa, target=targets.FunctionTarget(lambda out: out[:, 0, 0, 1], output=0), layer="feat")
    assert kad.PROGRAMS.count(seg) == (4 if compiles else 0)  # a callable: eager
    with pytest.raises(ValueError, match="out of range"):
        camlens.explain(seg, xa, target=targets.RegressionScore(5, output=1), layer="feat")
    monkeypatch.setattr(kad.KerasAdapter, "_compiles", lambda self: False)  # the eager runs
    for case, (exp, cap, scores) in zip(cases, compiled):
        eager, eager_cap, eager_scores = run(*case)
        for got, want in zip(exp.raw_maps, eager.raw_maps):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert max(np.abs(site.gradients).max() for site in eager_cap.sites) > 0, case[2]
        for got, want in zip(cap.sites, eager_cap.sites):
            np.testing.assert_allclose(got.gradients, want.gradients, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(got.activations, want.activations, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(exp.scores, eager.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, eager_scores, rtol=1e-5, atol=1e-6)
    assert probe_free(pair) and probe_free(seg)


@pytest.mark.parametrize("guided", [False, True])
def test_input_gradients_compiled_equal_eager_and_leave_relus_alone(guided, monkeypatch):
    from camlens.adapters import keras as kad
    from camlens.rules import GUIDED
    from camlens.adapters import adapt

    keras.utils.set_random_seed(10)
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = L.ReLU(name="r")(L.Conv2D(4, 3, padding="same", name="c2")(h))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 3)).astype("float32")
    adapter = adapt(model)
    arrays = adapter.prepare(x)
    kad.clear_compiled_cache()
    before = adapter.input_gradients(arrays, 0, targets.RegressionScore(2))
    got = [adapter.input_gradients(arrays, 0, t, rule=GUIDED if guided else None)
           for t in (targets.ClassScore([0, 2]), targets.Logit(1), targets.RegressionScore(2))]
    assert (model in kad.PROGRAMS) == (keras.backend.backend() in ("tensorflow", "jax"))
    monkeypatch.setattr(kad.KerasAdapter, "_compiles", lambda self: False)
    want = [adapter.input_gradients(arrays, 0, t, rule=GUIDED if guided else None)
            for t in (targets.ClassScore([0, 2]), targets.Logit(1), targets.RegressionScore(2))]
    for (s1, g1), (s2, g2) in zip(got, want):
        assert np.abs(g2).max() > 0
        np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-8)
    # the guided rule was only inside the runs: plain gradients afterwards are as before
    np.testing.assert_allclose(adapter.input_gradients(arrays, 0, targets.RegressionScore(2))[1],
                               before[1], rtol=1e-5, atol=1e-8)
    assert probe_free(model)


# ------------------------------------------------------------ the model is never changed
def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_inference_mode_and_unchanged_weights_and_flags():
    model = small_classifier(bn=True, dropout=0.5)
    model.get_layer("bn").trainable = False
    before = _weights(model)
    trainable = [lyr.trainable for lyr in model.layers]
    x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    one = camlens.explain(model, x)
    two = camlens.explain(model, x)
    np.testing.assert_array_equal(one.raw_maps[0], two.raw_maps[0])  # dropout is off
    np.testing.assert_allclose(one.scores, model.predict(x, verbose=0).max(-1), rtol=1e-5)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)  # no BatchNorm statistics moved
    assert [lyr.trainable for lyr in model.layers] == trainable
    assert probe_free(model)


class Exploding(L.Layer):
    armed = False

    def call(self, x):
        if Exploding.armed:
            raise RuntimeError("boom inside the model")
        return x


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_restored_after_exception_and_interrupt(error):
    keras.utils.set_random_seed(9)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = Exploding(name="exploding")(h)
    out = L.Dense(2, activation="softmax", name="probs")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).random((1, 8, 8, 3)).astype("float32")
    before = _weights(model)
    act = model.get_layer("probs").activation
    if error is RuntimeError:
        Exploding.armed = True
        try:
            with pytest.raises(RuntimeError, match="boom"):
                camlens.explain(model, x, target=targets.Logit(0))
        finally:
            Exploding.armed = False
    else:
        def interrupt(out):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            camlens.explain(model, x, target=interrupt)
    assert probe_free(model)
    assert model.get_layer("probs").activation is act
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
    exp = camlens.explain(model, x)  # still usable
    assert exp.maps[0].shape == (1, 8, 8)


def test_user_instance_call_attribute_is_put_back():
    model = small_classifier()
    layer = model.get_layer("conv2")
    original = layer.call

    def custom(*args, **kwargs):
        return original(*args, **kwargs)

    object.__setattr__(layer, "call", custom)
    x = np.random.default_rng(0).random((1, 16, 16, 3)).astype("float32")
    camlens.explain(model, x)
    assert layer.__dict__["call"] is custom


# ------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def clf():
    return small_classifier()


def test_wrong_image_size_names_the_fix(clf):
    with pytest.raises(ValueError, match=r"expects images of 16x16.*got 20x16.*img.resize\(\(16, 16\)\)"):
        camlens.explain(clf, np.zeros((1, 20, 16, 3), "float32"))


def test_grayscale_rgba_and_channels_first(clf):
    with pytest.raises(ValueError, match=r"grayscale.*np.repeat\(x, 3, axis=-1\)"):
        camlens.explain(clf, np.zeros((1, 16, 16, 1), "float32"))
    with pytest.raises(ValueError, match=r"alpha channel.*x\[\.\.\., :3\]"):
        camlens.explain(clf, np.zeros((1, 16, 16, 4), "float32"))
    with pytest.raises(ValueError, match="channels-first"):
        camlens.explain(clf, np.zeros((1, 3, 16, 16), "float32"))


@pytest.mark.filterwarnings("ignore:the map at")
def test_bad_dtypes_values_and_ranks(clf):
    with pytest.raises(TypeError, match="dtype <U1"):
        camlens.explain(clf, np.full((1, 16, 16, 3), "a"))
    with pytest.raises(ValueError, match="1 NaN"):
        x = np.zeros((1, 16, 16, 3), "float32")
        x[0, 0, 0, 0] = np.nan
        camlens.explain(clf, x)
    with pytest.raises(ValueError, match=r"expects shape \(None, 16, 16, 3\)"):
        camlens.explain(clf, np.zeros((16, 3), "float32"))
    exp = camlens.explain(clf, np.zeros((16, 16, 3), "uint8"))  # one image, ints: cast, batched
    assert exp.maps[0].shape == (1, 16, 16)


def test_missing_layer_suggests_names(clf):
    with pytest.raises(ValueError, match=r"no layer 'conv3'.*Did you mean 'conv1'|no layer 'conv3'.*Did you mean 'conv2'"):
        camlens.explain(clf, np.zeros((1, 16, 16, 3)), layer="conv3")
    with pytest.raises(ValueError, match=r"camlens layers"):
        camlens.explain(clf, np.zeros((1, 16, 16, 3)), layer="totally_unknown")


def test_layer_without_spatial_output(clf):
    with pytest.raises(ValueError, match="'predictions'.*not a spatial"):
        camlens.explain(clf, np.zeros((1, 16, 16, 3)), layer="predictions")


def test_class_index_out_of_range(clf):
    with pytest.raises(ValueError, match=r"class index 4 is out of range: the output has 4 classes \(0..3\)"):
        camlens.explain(clf, np.zeros((1, 16, 16, 3)), target=4)
    assert probe_free(clf)


def test_zero_gradient_gives_zero_map_and_warning(clf):
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    with pytest.warns(RuntimeWarning, match="constant for sample.*Logit"):
        exp = camlens.explain(clf, x, target=lambda out: out[:, 0] * 0.0)
    assert np.isfinite(exp.maps[0]).all() and (exp.maps[0] == 0).all()


def test_cam_needs_a_gap_dense_head():
    model, _ = siamese()
    x = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="CAM needs.*global average pooling.*after 'encoder/c2' the model has encoder/p2.*method='gradcam'"):
        camlens.explain(model, [x, x], method="cam", target=0)


def test_model_with_no_spatial_layer():
    inp = keras.Input((8, 8, 3))
    out = L.Dense(2)(L.Flatten()(inp))
    model = keras.Model(inp, out)
    with pytest.raises(ValueError, match="no layer with a spatial output"):
        camlens.explain(model, np.zeros((1, 8, 8, 3)))


def test_unbuilt_models_are_refused():
    class Net(keras.Model):  # subclassed models work once built (tests/test_keras_subclassed.py)
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="not built yet"):
        camlens.explain(Net(), np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="no known input shape"):
        camlens.explain(keras.Sequential([L.Conv2D(2, 3)]), np.zeros((1, 8, 8, 3)))
    with pytest.raises(TypeError, match="camlens explains Keras 3 models"):
        camlens.explain(object(), np.zeros((1, 8, 8, 3)))


def test_two_input_model_needs_two_arrays(pair):
    model, _, xa, _ = pair
    with pytest.raises(ValueError, match="takes 2 inputs"):
        camlens.explain(model, xa)


def test_batches_give_the_same_result(clf):
    x = np.random.default_rng(2).random((5, 16, 16, 3)).astype("float32")
    whole = camlens.explain(clf, x, batch_size=16)
    parts = camlens.explain(clf, x, batch_size=2)
    np.testing.assert_allclose(whole.raw_maps[0], parts.raw_maps[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="batch_size"):
        camlens.explain(clf, x, batch_size=0)


def test_save_and_overlay(clf, tmp_path):
    x = (np.random.default_rng(3).random((2, 16, 16, 3)) * 255).astype("uint8")
    exp = camlens.explain(clf, x.astype("float32"))
    files = exp.save(tmp_path, images=x, names=["a", "b"])
    names = sorted(p.name for p in files)
    assert "explanation.json" in names and "a_gradcam_conv2_overlay.png" in names
    import json

    meta = json.loads((tmp_path / "explanation.json").read_text())
    assert meta["sites"][0]["layer"] == "conv2" and len(meta["scores"]) == 2
    big = exp.overlay(np.zeros((2, 40, 30, 3), "uint8"), alpha=1.0)
    assert big.shape == (2, 40, 30, 3)
    png = exp._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_square_input_maps_keep_the_input_size():
    keras.utils.set_random_seed(10)
    inp = keras.Input((12, 20, 3))
    h = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inp)
    out = L.Dense(2)(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).random((2, 12, 20, 3)).astype("float32")
    exp = camlens.explain(model, x, method="layercam", normalize="percentile")
    assert exp.raw_maps[0].shape == (2, 6, 10) and exp.maps[0].shape == (2, 12, 20)
    assert exp.overlay().shape == (2, 12, 20, 3)


def test_scorecam_on_the_siamese_pair_masks_one_image_and_holds_the_other(pair):
    model, encoder, xa, xb = pair
    exp = camlens.explain(model, [xa, xb], method="scorecam", target=targets.RegressionScore(0))
    assert [(s.layer, s.input_index) for s in exp.sites] == [("encoder/c2", 0), ("encoder/c2", 1)]
    # by hand for sample 1, second image: masks from its own activations, first image fixed
    c1, p1, c2, _ = encoder.layers
    acts = keras.ops.convert_to_numpy(c2(p1(c1(xb))))[1]  # (16, 16, 8)
    from camlens.viz import resize_bilinear

    masks = resize_bilinear(np.moveaxis(acts, -1, 0), (32, 32))
    lo, hi = masks.min((1, 2), keepdims=True), masks.max((1, 2), keepdims=True)
    masks = np.where(hi > lo, (masks - lo) / np.where(hi > lo, hi - lo, 1), 0)
    masked_b = xb[1][None] * masks[..., None]
    fixed_a = np.repeat(xa[1:2], len(masks), axis=0)
    s = model.predict([fixed_a, masked_b], verbose=0)[:, 0].astype(np.float64)
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    want = np.maximum(np.einsum("hwc,c->hw", acts, w), 0)
    np.testing.assert_allclose(exp.raw_maps[1][1], want, rtol=1e-4, atol=1e-6)


def test_an_edit_to_a_layers_activation_is_seen_by_the_next_explain():
    # the keras.io recipe: softmax -> logits by `model.layers[-1].activation = None` after a
    # first explain; the compiled programs are keyed on each layer's activation, so the second
    # explain runs the edited model (it used to return the old maps and scores on TF and JAX)
    keras.utils.set_random_seed(11)
    inp = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="head")(L.GlobalAveragePooling2D()(h)))
    x = np.random.default_rng(4).random((2, 6, 6, 3), dtype=np.float32)
    first = camlens.explain(model, x, target=1, layer="conv")
    np.testing.assert_allclose(first.scores, keras.ops.convert_to_numpy(model(x))[:, 1], rtol=1e-5)
    model.layers[-1].activation = None
    logits = keras.ops.convert_to_numpy(model(x))[:, 1]
    second = camlens.explain(model, x, target=1, layer="conv")
    np.testing.assert_allclose(second.scores, logits, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.scores, second.scores)
    again = camlens.explain(model, x, method="scorecam", target=1, layer="conv")  # score programs too
    np.testing.assert_allclose(again.scores, logits, rtol=1e-5, atol=1e-6)
