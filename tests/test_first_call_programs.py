"""How many programs the first call of a method traces on the compiling Keras backends
(TensorFlow, JAX): exact counts on a tiny model, and the maps those programs give."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens.adapters.keras import clear_compiled_cache
from camlens.methods import ScoreCAM

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
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


def test_scorecam_remainder_batch_compiles_no_second_score_program(traces):
    model = _model()
    x = np.random.default_rng(0).random((1, 8, 8, 3)).astype("float32")
    # 10 channels in batches of 4: 4, 4, then 2 padded to 4
    exp = camlens.explain(model, x, method=ScoreCAM(batch_size=4), layer="feat")
    assert traces["scored"] == 1  # was 2: one more for the batch of 2
    clear_compiled_cache()
    whole = camlens.explain(model, x, method=ScoreCAM(batch_size=10), layer="feat")
    np.testing.assert_allclose(exp.raw_maps[0], whole.raw_maps[0], rtol=1e-5, atol=1e-7)


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
