"""Edits a user makes to a model between two ``explain`` calls are seen (issue 14).

On TensorFlow and JAX the first call compiles the probed run and keeps the program with the
model; a program that froze an old activation, a layer's setting, a dtype policy or a replaced
layer would return the old maps and scores with no warning. Each case edits the model after a
first call and compares the second call with a call after ``clear_compiled_cache()`` (what a
fresh process gives), and checks that the edit changed the result at all (else the comparison
could not fail). The torch backend runs eagerly; the same tests hold there trivially.
"""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.adapters.keras import clear_compiled_cache
from camlens.targets import Logit

keras = pytest.importorskip("keras")
L = keras.layers


def _model() -> "keras.Model":
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(4, 3, padding="same", name="c1")(inp)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(5, 3, padding="same", name="c2")(h)
    h = L.LeakyReLU(negative_slope=0.1, name="r2")(h)
    h = L.BatchNormalization(name="bn")(h)
    g = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(3, activation="softmax", name="head")(g)
    return keras.Model(inp, out, name="editable")


def _x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")


def _run(model, method: str = "gradcam", target=None):
    layer = None if method == "saliency" else "c2"
    exp = camlens.explain(model, _x(), method=method, layer=layer, target=target)
    return np.asarray(exp.maps, np.float64), np.asarray(exp.scores, np.float64)


def _edit_activation(model):
    model.get_layer("head").activation = keras.activations.linear  # keras.io: softmax -> logits


def _edit_slope(model):
    model.get_layer("r2").negative_slope = 0.9


def _edit_relu_cap(model):
    model.get_layer("r1").max_value = 0.05


def _edit_weights(model):
    model.set_weights([w * 1.5 + 0.1 for w in model.get_weights()])


def _edit_kernel(model):
    layer = model.get_layer("c2")
    layer.kernel.assign(np.flip(np.asarray(layer.kernel), axis=-1))


def _edit_dtype(model):
    model.get_layer("c2").dtype_policy = "mixed_bfloat16"  # float32 weights, bfloat16 compute


def _edit_use_bias(model):
    layer = model.get_layer("head")
    layer.bias.assign(np.array([3.0, -3.0, 0.0], "float32"))


EDITS = {
    "final activation removed": _edit_activation,
    "LeakyReLU slope": _edit_slope,
    "ReLU max_value": _edit_relu_cap,
    "set_weights": _edit_weights,
    "kernel assigned": _edit_kernel,
    "dtype policy": _edit_dtype,
    "bias assigned": _edit_use_bias,
}


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "saliency"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_between_calls_is_seen(edit, method):
    model = _model()
    kind = "scorecam" if method == "scorecam" else method
    before = _run(model, kind)
    _run(model, kind)  # the second call of the same kind runs the kept program, if any
    EDITS[edit](model)
    after = _run(model, kind)
    clear_compiled_cache()
    fresh = _run(model, kind)
    np.testing.assert_allclose(after[1], fresh[1], rtol=1e-5, atol=1e-6, err_msg=f"{edit}: stale scores")
    np.testing.assert_allclose(after[0], fresh[0], rtol=1e-4, atol=1e-5, err_msg=f"{edit}: stale maps")
    changed = not (np.allclose(before[1], fresh[1], atol=1e-6) and np.allclose(before[0], fresh[0], atol=1e-6))
    assert changed, f"{edit} does not change {method}: the test could not fail"


def test_trainable_flag_changes_nothing_and_is_not_stale():
    model = _model()
    before = _run(model)
    model.trainable = False
    model.get_layer("bn").trainable = True
    after = _run(model)
    clear_compiled_cache()
    fresh = _run(model)
    np.testing.assert_allclose(after[0], fresh[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-6)  # inference: same maps
    assert model.trainable is False and model.get_layer("bn").trainable is True


def test_a_layer_swapped_in_a_sequential_is_seen():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c2"), L.GlobalAveragePooling2D(),
                              L.Dense(3, activation="softmax", name="head")])
    before = _run(model, target=Logit(0))
    model.pop()
    model.add(L.Dense(3, name="head2", kernel_initializer="ones"))
    after = _run(model, target=Logit(0))
    clear_compiled_cache()
    fresh = _run(model, target=Logit(0))
    np.testing.assert_allclose(after[1], fresh[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[0], fresh[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(before[1], fresh[1])


# ---------------------------------------------------------------------------- torch modules
def _torch_net():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.act = torch.nn.LeakyReLU(0.1)
            self.c2 = torch.nn.Conv2d(4, 5, 3, padding=1)
            self.head = torch.nn.Linear(5, 3)
            self.residual = True  # forward branches on it: a trace freezes the branch taken
            self.scale = 1.0

        def forward(self, x):
            h = self.act(self.c1(x))
            y = self.c2(h)
            if self.residual:
                y = y + h.mean(1, keepdim=True)
            return self.head(torch.relu(y).mean((2, 3)) * self.scale)

    return Net()


def _torch_run(model, method):
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype("float32")
    exp = camlens.explain(model, x, method=method, layer="c2", target=Logit(0))
    return np.asarray(exp.maps, np.float64), np.asarray(exp.scores, np.float64)


TORCH_EDITS = {
    "a flag forward branches on": lambda m: setattr(m, "residual", False),
    "a number forward reads": lambda m: setattr(m, "scale", 3.0),
    "a submodule's setting": lambda m: setattr(m.act, "negative_slope", 0.9),
    "a submodule replaced": lambda m: setattr(m, "act", __import__("torch").nn.Tanh()),
    "weights": lambda m: m.c2.weight.data.mul_(-2.0),
}


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam"])
@pytest.mark.parametrize("edit", list(TORCH_EDITS))
def test_a_torch_edit_between_calls_is_seen(edit, method):
    from camlens.adapters.torch import clear_trace_cache

    model = _torch_net()
    before = _torch_run(model, method)
    TORCH_EDITS[edit](model)
    after = _torch_run(model, method)
    clear_trace_cache()
    fresh = _torch_run(model, method)
    np.testing.assert_allclose(after[1], fresh[1], rtol=1e-5, atol=1e-6, err_msg=f"{edit}: stale scores")
    np.testing.assert_allclose(after[0], fresh[0], rtol=1e-4, atol=1e-5, err_msg=f"{edit}: stale maps")
    assert not (np.allclose(before[0], fresh[0]) and np.allclose(before[1], fresh[1])), edit


def test_without_an_edit_the_kept_trace_and_programs_are_reused():
    """The checks must not retrace every call (a setting that changes by itself would)."""
    from camlens.adapters.keras import PROGRAMS
    from camlens.adapters.torch.adapter import _TRACES

    net = _torch_net()
    _torch_run(net, "gradcam")
    entry = _TRACES[net]
    _torch_run(net, "gradcam")
    assert _TRACES[net] is entry
    model = _model()
    _run(model)
    kept = dict(PROGRAMS._per_model.get(model, {}))
    _run(model)
    assert {k: v[2] for k, v in PROGRAMS._per_model.get(model, {}).items()} == {k: v[2] for k, v in kept.items()}


def test_the_keras_layer_graph_is_kept_between_calls_and_read_again_after_an_edit():
    """``explain`` makes a new adapter per call; the graph read from a Functional's nodes is
    kept with the model (issue 18: a millisecond per call at batch 1), and read again where a
    layer was renamed or a Sequential grew a layer, and it goes with the model."""
    import gc

    from camlens.adapters.keras.adapter import _GRAPHS

    model = _model()
    _run(model)
    kept = _GRAPHS[model]
    _run(model)
    assert _GRAPHS[model] is kept  # reused, not read again
    model.get_layer("c2").name = "conv_two"
    exp = camlens.explain(model, _x(), layer="conv_two")
    assert exp.sites[0].label == "conv_two" and _GRAPHS[model] is not kept
    with pytest.raises(ValueError, match="c2"):
        camlens.explain(model, _x(), layer="c2")  # the old name is gone with the old graph

    seq = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="a"), L.GlobalAveragePooling2D(),
                            L.Dense(2)])
    assert camlens.explain(seq, _x()).sites[0].label == "a"
    seq.pop()
    seq.pop()
    for layer in (L.Conv2D(4, 3, name="b"), L.GlobalAveragePooling2D(), L.Dense(2)):
        seq.add(layer)
    assert camlens.explain(seq, _x()).sites[0].label == "b"

    del model, exp, kept, seq
    gc.collect()
    assert not any(m.name == "editable" for m in list(_GRAPHS.keys()))


def test_a_layer_choice_is_kept_with_the_graph_and_handed_out_as_a_copy():
    from camlens.adapters import adapt
    from camlens.graph import choose_layers

    graph = adapt(_model()).graph()
    first = choose_layers(graph)
    first.nodes.clear()
    first.reason = "changed by a caller"
    again = choose_layers(graph)
    assert [n.path for n in again.nodes] == ["bn"] and again.reason != "changed by a caller"


def test_eval_mode_puts_back_each_module_flag_also_when_mixed():
    torch = pytest.importorskip("torch")
    net = _torch_net()
    net.train()
    net.act.eval()
    flags = {n: m.training for n, m in net.named_modules()}
    seen = []
    net.c2.register_forward_hook(lambda m, a, o: seen.append(m.training))
    camlens.explain(net, torch.zeros(1, 3, 8, 8) + 0.5, layer="c2")
    assert seen and not any(seen)  # every run (the trace, the explained one) in eval mode
    assert {n: m.training for n, m in net.named_modules()} == flags


def test_a_torch_module_replaced_deep_in_the_tree_is_seen_by_the_kept_trace():
    """The kept trace is checked by each module's children (name and identity), from the root
    down, not by walking ``named_modules`` again: a child replaced, added or renamed two levels
    down changes the graph."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))

    def kinds():
        return {r.path: r.kind for r in camlens.layers(net, input_shape=(1, 3, 8, 8)).rows}

    assert kinds()["0.1"] == "ReLU"
    net[0][1] = nn.LeakyReLU(0.2)
    assert kinds()["0.1"] == "LeakyReLU"
    net[0].add_module("extra", nn.ReLU())
    assert "0.extra" in kinds()
    del net[0]._modules["extra"]
    net[0]._modules["act2"] = net[0]._modules.pop("1")
    assert "0.act2" in kinds() and "0.1" not in kinds()


def test_a_module_added_in_training_mode_between_calls_runs_in_eval_mode():
    """Eval mode is set over the modules the kept trace knows (no walk of the tree per call):
    a Dropout swapped in between calls, in training mode, must be switched off all the same,
    and its flag put back."""
    torch = pytest.importorskip("torch")
    net = _torch_net().eval()
    _torch_run(net, "gradcam")
    net.act = torch.nn.Sequential(torch.nn.LeakyReLU(0.1), torch.nn.Dropout(0.9))
    net.act[1].train()
    runs = [_torch_run(net, "gradcam") for _ in range(2)]
    assert net.act[1].training  # put back
    net.act[1].eval()
    from camlens.adapters.torch import clear_trace_cache

    clear_trace_cache()
    wanted = _torch_run(net.eval(), "gradcam")
    for maps, scores in runs:  # dropout at 0.9 would change both, and differently each run
        np.testing.assert_array_equal(scores, wanted[1])
        np.testing.assert_array_equal(maps, wanted[0])
