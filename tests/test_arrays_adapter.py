"""camlens.adapters.arrays: a numpy function as a model, and a recorder of adapter calls. The
numpy mean model gives the numbers of the Keras one (tests/metrics/metric_toys.py) in pixel
methods and metrics."""

from __future__ import annotations

import numpy as np
import pytest

import camlens
from camlens import metrics
from camlens.adapters import adapt
from camlens.adapters.arrays import FunctionModel, Recorder
from tests.metrics.metric_toys import mean_model


def numpy_mean_model(size=(4, 4)):
    def logits(x):
        m = x.mean(axis=(1, 2, 3))
        return np.stack([m, -m], axis=-1)

    return FunctionModel(logits, input_shape=(*size, 1))


X = np.random.default_rng(0).random((2, 4, 4, 1)).astype("float32")


def test_pixel_methods_and_metrics_equal_the_keras_model():
    fm, km = numpy_mean_model(), mean_model((4, 4))
    for method in ("occlusion", camlens.methods.RISE(n_masks=16, cell=2, seed=0)):
        a = camlens.explain(fm, X, method, target=0)
        b = camlens.explain(km, X, method, target=0)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        np.testing.assert_allclose(a.raw_maps[0], b.raw_maps[0], rtol=1e-5, atol=1e-6)
    exp = camlens.explain(km, X, "occlusion", target=0)
    for name in ("deletion", "insertion"):
        got = getattr(metrics, name)(fm, exp, steps=4, score="logit")
        want = getattr(metrics, name)(km, exp, steps=4, score="logit")
        np.testing.assert_allclose(got.per_image, want.per_image, rtol=1e-5)
    assert fm.calls and {what for what, _ in fm.calls} <= {"capture", "score", "forward"}


def test_a_function_model_refuses_what_it_has_not():
    fm = numpy_mean_model()
    with pytest.raises(ValueError, match="no layer with a spatial output|no layers"):
        camlens.explain(fm, X, "gradcam")
    with pytest.raises(NotImplementedError, match="no gradients"):
        camlens.explain(fm, X, "saliency")
    with pytest.raises(ValueError, match="expects"):
        camlens.explain(fm, np.zeros((1, 3, 3, 1), np.float32), "occlusion")


def test_the_recorder_logs_every_run_and_changes_nothing():
    model = mean_model((4, 4))
    rec = Recorder(adapt(model))
    exp = camlens.explain(rec, X, "occlusion", target=0, batch_size=8)
    plain = camlens.explain(model, X, "occlusion", target=0, batch_size=8)
    np.testing.assert_array_equal(exp.raw_maps[0], plain.raw_maps[0])
    assert rec.calls[0] == ("capture", 2, 0, False)  # the scores pass, no layer
    assert all(what == "score" and n <= 8 for what, n in rec.calls[1:])
