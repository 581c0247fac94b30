"""What ``print`` and ``repr`` show of an Explanation and of the metric results: a few lines
that say what was computed, in which score space, never the raw arrays."""

from __future__ import annotations

import numpy as np

import camlens
from camlens import metrics
from camlens.adapters.arrays import FunctionModel
from camlens.explanation import few_values
from camlens.targets import Logit


def mean_model(probabilities: bool = False) -> FunctionModel:
    def out(x):
        m = x.mean(axis=(1, 2, 3))
        z = np.stack([m, -m], axis=-1)
        if probabilities:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return z

    return FunctionModel(out, input_shape=(4, 4, 1))


# x.mean() of these: 0.5 and 0.25 (rows of 16 pixels)
X = np.stack([np.full((4, 4, 1), 0.5), np.full((4, 4, 1), 0.25)]).astype("float32")
X[0, 0, 0, 0] = 0.0  # not constant, so occlusion's map is not all zeros
X[1, 0, 0, 0] = 0.0


def test_explanation_summary_is_short_and_says_the_score_space():
    exp = camlens.explain(mean_model(), X, "occlusion")
    # the class of the top logit, scores are means: (0.5 * 15 / 16, 0.25 * 15 / 16)
    assert repr(exp) == (
        "Explanation: occlusion, 2 images\n"
        "  target:   score of the top class\n"
        "  site:     input_0 (input 0)\n"
        "  maps:     (4, 4) per image, in [0, 1]\n"
        "  raw maps: (4, 4) per image (the method's own numbers)\n"
        "  scores:   [0.4688, 0.2344] (logit)\n"
        "  classes:  [0, 0]"
    )
    assert str(exp) == repr(exp)
    assert "array(" not in repr(exp)


def test_explanation_score_space_follows_the_output_and_the_target():
    assert camlens.explain(mean_model(True), X, "occlusion").score_space == "probability"
    assert camlens.explain(mean_model(True), X, "occlusion", target=Logit()).score_space == "logit"
    assert camlens.explain(mean_model(), X, "occlusion").score_space == "logit"
    own = camlens.explain(mean_model(), X, "occlusion", target=lambda y: y[:, 0] * 2)
    assert own.score_space == "raw"
    assert "(raw model output)" in repr(own) and "classes" not in repr(own)
    assert "0.9375 (probability)" not in repr(own)


def test_few_values_cuts_long_arrays():
    assert few_values([1, 2.5]) == "[1, 2.5]"
    assert few_values(np.arange(10) / 4) == "[0, 0.25, 0.5, 0.75, ...] (10 values)"


def test_metric_result_summary():
    exp = camlens.explain(mean_model(), X, "occlusion")
    res = metrics.deletion(mean_model(), exp, steps=4)
    values = ", ".join(f"{v:.4g}" for v in res.per_image)
    assert repr(res) == (
        f"CurveResult deletion: mean {res.value:.4g} over 2 images (lower is better)\n"
        f"  per image: [{values}]\n"
        "  score:     probability of the explained class (softmax of the model's output)"
    )
    assert res.space == "probability"
    assert str(res) == repr(res) and "array(" not in repr(res)
    raw = metrics.deletion(mean_model(), exp, steps=4, score="raw")
    assert raw.space == "raw"
    logit = metrics.deletion(mean_model(), exp, steps=4, score="logit")
    assert logit.space == "logit" and "score:     logit of the explained class" in repr(logit)


def test_metric_result_of_one_image_and_exact_numbers():
    res = metrics.MetricResult("toy", np.array([0.25]), True, "")
    assert repr(res) == "MetricResult toy: mean 0.25 over 1 image (higher is better)\n  per image: [0.25]"
    assert res.space == ""


def test_evaluate_results_are_a_table():
    exp = camlens.explain(mean_model(), X, "occlusion")
    out = metrics.evaluate(mean_model(), exp, ["deletion", "average_drop"], steps=4)
    assert isinstance(out, dict) and list(out) == ["deletion", "average_drop"]
    lines = repr(out).splitlines()
    d, a = out["deletion"], out["average_drop"]
    assert lines[:3] == [
        "metric              mean  better  per image",
        f"deletion      {d.value:>10.4g}  lower   {few_values(d.per_image)}",
        f"average_drop  {a.value:>10.4g}  lower   {few_values(a.per_image)}",
    ]
    assert lines[3] == "score: probability of the explained class (softmax of the model's output)"
    assert "array(" not in repr(out)
