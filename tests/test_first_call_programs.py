"""How many programs the first call of a method traces on the compiling Keras backends
(TensorFlow, JAX): exact counts on a tiny model, and the maps those programs give."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.adapters.keras import clear_compiled_cache
from camlens.methods import ScoreCAM

keras = pytest.importorskip("keras")

compiling = pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                               reason="only TensorFlow and JAX compile one program per shape")


def _model() -> "keras.Model":
    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(10, 3, padding="same", activation="relu", name="feat")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(4, activation="softmax", name="head")(h))


@pytest.fixture
def traces(monkeypatch):
    """Calls of the adapter's model runs, by kind: inside a compiled program each is one trace."""
    from camlens.adapters.keras.adapter import KerasAdapter

    got = {"probed": 0, "scored": 0, "input": 0}
    probed, input_run = KerasAdapter._probed_run, KerasAdapter._input_run

    def count_probed(self, inputs, nodes, target, make_probe):
        got["probed" if nodes else "scored"] += 1
        return probed(self, inputs, nodes, target, make_probe)

    def count_input(self, *args):
        got["input"] += 1
        return input_run(self, *args)

    monkeypatch.setattr(KerasAdapter, "_probed_run", count_probed)
    monkeypatch.setattr(KerasAdapter, "_input_run", count_input)
    clear_compiled_cache()
    yield got
    clear_compiled_cache()


@compiling
def test_scorecam_remainder_batch_compiles_no_second_score_program(traces):
    model = _model()
    x = np.random.default_rng(0).random((1, 8, 8, 3)).astype("float32")
    # 10 channels in batches of 4: 4, 4, then 2 padded to 4
    exp = camlens.explain(model, x, method=ScoreCAM(batch_size=4), layer="feat")
    assert traces["scored"] == 1  # was 2: one more for the batch of 2
    clear_compiled_cache()
    whole = camlens.explain(model, x, method=ScoreCAM(batch_size=10), layer="feat")
    np.testing.assert_allclose(exp.raw_maps[0], whole.raw_maps[0], rtol=1e-5, atol=1e-7)


@compiling
@pytest.mark.parametrize("method", ["saliency", "inputxgradient"])
def test_plain_gradient_first_pass_compiles_one_program(traces, method):
    model = _model()
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype("float32")
    exp = camlens.explain(model, x, method=method)
    # one input-gradient program serves the first pass (outputs, top class) and the gradients;
    # was one forward program more ("probed")
    assert (traces["probed"], traces["scored"], traces["input"]) == (0, 0, 1)
    from camlens.adapters.keras.adapter import KerasAdapter
    from camlens.targets import ClassScore

    adapter = KerasAdapter(model)
    for n, c in enumerate(exp.class_indices):
        _, g = adapter.input_gradients([x[n : n + 1]], 0, ClassScore(int(c)))
        want = np.abs(g[0]) if method == "saliency" else x[n] * g[0]
        np.testing.assert_allclose(exp.details[0]["attributions"][n], want, rtol=1e-5, atol=1e-9)


def test_an_eager_first_pass_takes_the_input_gradient_too(traces):
    """Where nothing is compiled (the torch backend; a subclassed model on any backend; here
    forced by a callable target), saliency's first pass is the gradient run itself: one run of
    the model, not a forward one and then a gradient one (issue 18: Keras/PyTorch saliency's
    first call was two runs)."""
    from camlens.targets import FunctionTarget

    model = _model()
    x = np.random.default_rng(2).random((2, 8, 8, 3)).astype("float32")
    top = camlens.explain(model, x, method="saliency")
    counted = dict(traces)
    target = FunctionTarget(lambda y: y[:, 2])
    exp = camlens.explain(model, x, method="saliency", target=target)
    runs = {k: traces[k] - counted[k] for k in traces}
    # on JAX one more call is jax.eval_shape's abstract run (the probes' shapes, no computation)
    assert runs == {"probed": 0, "scored": 0, "input": 2 if keras.backend.backend() == "jax" else 1}
    pinned = camlens.explain(model, x, method="saliency", target=2)
    np.testing.assert_allclose(exp.maps[0], pinned.maps[0], rtol=1e-5, atol=1e-6)
    assert top.maps[0].shape == exp.maps[0].shape
