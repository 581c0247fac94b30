"""The adapters' reruns: scoring with a layer's activations replaced (only the layers after it
run), input gradients, and the Guided Backpropagation ReLU swap (restored afterwards)."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import torch
from keras import layers as L
from torch import nn

from camlens.adapters import adapt
from camlens.rules import GUIDED
from camlens.targets import ClassScore, RegressionScore

from keras_models import one_conv_input, one_conv_net, probe_free, siamese

# ----------------------------------------------------------------------------- Keras


def _residual_net() -> keras.Model:
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    y = L.Conv2D(5, 3, padding="same", activation="relu", name="c2")(x)
    z = L.Add(name="add")([L.Conv2D(5, 1, name="c3")(y), y])
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(z))
    return keras.Model(inp, out)


def _replaced_whole_model(model, layer_name, inputs, acts):
    """Reference: the whole model run with ``layer_name``'s output replaced by ``acts``."""
    layer = model.get_layer(layer_name)
    object.__setattr__(layer, "call", lambda *a, **k: keras.ops.convert_to_tensor(acts))
    try:
        return keras.ops.convert_to_numpy(model(inputs, training=False))
    finally:
        object.__delattr__(layer, "call")


def _count_calls(layer, counter):
    original = layer.call

    def counting(*a, **k):
        counter[layer.name] = counter.get(layer.name, 0) + 1
        return original(*a, **k)

    object.__setattr__(layer, "call", counting)


def _scorer_at(model, inputs, path, target, call=0):
    """The activations of ``path`` (its ``call``-th call) on ``inputs`` and the adapter's
    ``site_scorer`` there: the set-up every site-scorer test shares."""
    adapter = adapt(model)
    arrays = adapter.prepare(inputs)
    node = next(n for n in adapter.graph().nodes if n.path == path and n.call == call)
    acts = adapter.capture(arrays, [node], target, need_gradients=False).sites[0].activations
    return acts, adapter.site_scorer(arrays, node, target)


def test_keras_site_scorer_equals_the_whole_model_and_runs_only_the_layers_after():
    model = _residual_net()
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype("float32")
    acts, scorer = _scorer_at(model, x, "c2", ClassScore(2))
    batch = np.repeat(acts, 4, axis=0)
    batch[1, ..., 0] = 0.0
    batch[2] *= 2.0
    batch[3] = 0.0
    counter: dict[str, int] = {}
    for name in ("c1", "c2", "c3", "head"):
        _count_calls(model.get_layer(name), counter)
    try:
        got = scorer(batch)
    finally:
        for name in ("c1", "c2", "c3", "head"):
            object.__delattr__(model.get_layer(name), "call")
    assert counter == {"c3": 1, "head": 1}  # c1 and c2 did not run again
    ref = _replaced_whole_model(model, "c2", np.repeat(x, 4, axis=0), batch)[:, 2]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got[0] == pytest.approx(float(keras.ops.convert_to_numpy(model(x))[0, 2]), rel=1e-5)
    assert probe_free(model)


def test_keras_site_scorer_keeps_the_other_branch_of_a_siamese_model():
    model, encoder = siamese(16)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 1, 16, 16, 3)).astype("float32")
    acts, scorer = _scorer_at(model, [a, b], "encoder/c2", RegressionScore(0))
    batch = np.concatenate([acts, acts * 0.5, np.zeros_like(acts)])
    got = scorer(batch)
    # reference: the whole model with the first call of c2 replaced, the second left alone
    layer = encoder.get_layer("c2")
    original = layer.call
    calls = []

    def first_call_replaced(*args, **kwargs):
        calls.append(1)
        return keras.ops.convert_to_tensor(batch) if len(calls) == 1 else original(*args, **kwargs)

    object.__setattr__(layer, "call", first_call_replaced)
    try:
        ref = keras.ops.convert_to_numpy(model([np.repeat(a, 3, 0), np.repeat(b, 3, 0)]))[:, 0]
    finally:
        object.__delattr__(layer, "call")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert probe_free(model)


def test_keras_input_gradients_are_exact_on_the_one_conv_net():
    # S = 5 mean(x) over 16 pixels: dS/dx = 5/16 everywhere
    adapter = adapt(one_conv_net())
    scores, grads = adapter.input_gradients(adapter.prepare(one_conv_input()), 0, ClassScore(0))
    assert scores.tolist() == [12.5]
    np.testing.assert_allclose(grads, np.full((1, 4, 4, 1), 5 / 16), rtol=1e-6)


def _relu_pair_keras(activation_layer: bool) -> keras.Model:
    """S = sum_ij relu(x_ij) - 2 relu(-x_ij): a 1x1 conv with kernels [1, -1], a ReLU (as the
    conv's activation or as a ReLU layer), a 1x1 conv with weights [1, -2]."""
    inp = keras.Input((3, 3, 1))
    if activation_layer:
        h = L.ReLU(name="relu")(L.Conv2D(2, 1, use_bias=False, name="u")(inp))
    else:
        h = L.Conv2D(2, 1, use_bias=False, activation="relu", name="u")(inp)
    s = L.Conv2D(1, 1, use_bias=False, name="v")(h)
    out = L.Flatten()(L.GlobalAveragePooling2D()(s))
    model = keras.Model(inp, out)
    model.get_layer("u").set_weights([np.array([1.0, -1.0], "float32").reshape(1, 1, 1, 2)])
    model.get_layer("v").set_weights([np.array([1.0, -2.0], "float32").reshape(1, 1, 2, 1)])
    return model


@pytest.mark.parametrize("activation_layer", [False, True])
def test_keras_guided_backprop_gradient_by_hand_and_model_restored(activation_layer):
    # plain: dS/dx = 1/9 where x > 0 (first unit) and (-2)(-1)/9 = 2/9 where x < 0;
    # guided: the second unit's upstream gradient -2/9 is negative, so it is stopped: 0 there
    model = _relu_pair_keras(activation_layer)
    x = np.array([[1.0, -2.0, 3.0], [-1.0, 0.5, -0.5], [2.0, -3.0, 1.0]], "float32").reshape(1, 3, 3, 1)
    adapter = adapt(model)
    arrays = adapter.prepare(x)
    u = model.get_layer("u")
    before = (u.__dict__.get("activation"), dict(model.get_layer("relu").__dict__) if activation_layer else None)
    _, plain = adapter.input_gradients(arrays, 0, ClassScore(0))
    _, guided = adapter.input_gradients(arrays, 0, ClassScore(0), rule=GUIDED)
    _, plain_again = adapter.input_gradients(arrays, 0, ClassScore(0))
    np.testing.assert_allclose(plain[0, ..., 0], np.where(x[0, ..., 0] > 0, 1 / 9, 2 / 9), rtol=1e-6)
    np.testing.assert_allclose(guided[0, ..., 0], np.where(x[0, ..., 0] > 0, 1 / 9, 0.0), rtol=1e-6)
    np.testing.assert_array_equal(plain_again, plain)
    assert u.__dict__.get("activation") is before[0]
    if activation_layer:
        assert "call" not in model.get_layer("relu").__dict__
    assert probe_free(model)


# ----------------------------------------------------------------------------- PyTorch


class _TorchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(4, 5, 3, padding=1)
        self.c3 = nn.Conv2d(5, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = self.relu(self.c2(self.relu(self.c1(x))))
        z = self.c3(y) + y
        return self.fc(z.mean((2, 3)).view(x.size(0), -1))  # reads the batch size


def test_torch_site_scorer_equals_the_whole_model_and_runs_only_the_layers_after():
    model = _TorchNet()
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype("float32")
    acts, scorer = _scorer_at(model, x, "c2", ClassScore(1))
    batch = np.concatenate([acts, acts * 0.0, acts * 3.0])
    ran: list[str] = []
    handles = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: ran.append(n))
               for n in ("c1", "c2", "c3", "fc")]
    try:
        got = scorer(batch)
        assert ran == ["c3", "fc"]  # the batch size is read off the input; c1 and c2 never rerun
        ran.clear()
        again = scorer(batch[::-1].copy())
    finally:
        for h in handles:
            h.remove()
    assert ran == ["c3", "fc"]
    with torch.no_grad():
        z = torch.relu(torch.from_numpy(np.moveaxis(batch, -1, 1).copy()))
        ref = model.fc((model.c3(z) + z).mean((2, 3)))[:, 1].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again, ref[::-1], rtol=1e-5, atol=1e-6)


class _TorchSkipNet(nn.Module):
    """A skip connection from before the explained layer (c2) to after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c0 = nn.Conv2d(3, 4, 1)
        self.c1 = nn.Conv2d(4, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.c1(self.c0(x)))
        return self.fc((torch.relu(self.c2(h)) + h).mean((2, 3)))


def test_torch_site_scorer_runs_what_a_skip_connection_needs_once_per_batch_size():
    model = _TorchSkipNet()
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 3)).astype("float32")
    acts, scorer = _scorer_at(model, x, "c2", ClassScore(0))
    ran: list[str] = []
    handles = [getattr(model, n).register_forward_hook(lambda m, a, o, n=n: ran.append(n))
               for n in ("c0", "c1", "c2", "fc")]
    batch = np.concatenate([acts, acts * -1.0, acts * 2.0])
    try:
        got = [scorer(batch), scorer(batch[:2].copy()), scorer(batch), scorer(batch[:2].copy())]
    finally:
        for h in handles:
            h.remove()
    # c0 and c1 feed the skip: once for batch 3, once for batch 2; c2 (replaced) never runs
    assert ran == ["c0", "c1", "fc", "c0", "c1", "fc", "fc", "fc"]
    with torch.no_grad():
        h = torch.relu(model.c1(model.c0(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))))
        a = torch.from_numpy(np.moveaxis(batch, -1, 1).copy())  # c2's output, replaced
        ref = model.fc((torch.relu(a) + h).mean((2, 3)))[:, 0].numpy()
    for g, want in zip(got, [ref, ref[:2], ref, ref[:2]]):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_torch_input_gradients_match_autograd_and_guided_rule_is_restored():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        model[2].weight.copy_(torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1))
    x = np.array([[1.0, -2.0, 3.0], [-1.0, 0.5, -0.5], [2.0, -3.0, 1.0]], "float32").reshape(1, 3, 3, 1)
    adapter = adapt(model)
    arrays = adapter.prepare(x)
    _, plain = adapter.input_gradients(arrays, 0, ClassScore(0))
    _, guided = adapter.input_gradients(arrays, 0, ClassScore(0), rule=GUIDED)
    np.testing.assert_allclose(plain[0, ..., 0], np.where(x[0, ..., 0] > 0, 1 / 9, 2 / 9), rtol=1e-6)
    np.testing.assert_allclose(guided[0, ..., 0], np.where(x[0, ..., 0] > 0, 1 / 9, 0.0), rtol=1e-6)
    assert "forward" not in model[1].__dict__
    _, plain_again = adapter.input_gradients(arrays, 0, ClassScore(0))
    np.testing.assert_array_equal(plain_again, plain)


def test_torch_guided_rule_restored_after_an_exception():
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.relu = nn.ReLU()
            self.explode = False

        def forward(self, x):
            y = self.relu(self.conv(x))
            if self.explode:
                raise RuntimeError("boom")
            return y.mean((1, 2, 3))

    model = Boom()
    adapter = adapt(model)
    arrays = adapter.prepare(np.ones((1, 3, 3, 1), np.float32))
    adapter.graph()
    model.explode = True
    seen = []
    model.relu.register_forward_hook(lambda m, a, o: seen.append(m.__dict__.get("forward")))
    with pytest.raises(RuntimeError, match="boom"):
        adapter.input_gradients(arrays, 0, ClassScore(0), rule=GUIDED)
    assert seen and seen[0] is not None  # the guided rule was in place when it failed
    assert "forward" not in model.relu.__dict__
    assert model.training
