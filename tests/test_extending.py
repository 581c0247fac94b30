"""A new method, metric and target is one new file: each is written to a temporary module here,
imported, and used end to end through ``explain``, ``evaluate`` and the CLI's target parser,
with no edit anywhere else. The expected numbers come from the torch model itself."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import numpy as np
import pytest
import torch

import camlens
from camlens import metrics, targets
from camlens.methods import available_methods, slow_methods
from camlens.methods.base import _REGISTRY as METHODS
from camlens.metrics.evaluate import _REGISTRY as METRIC_REGISTRY
from camlens.targets import _TEXT_TARGETS

METHOD_FILE = '''
import numpy as np
from camlens.methods import CAMMethod, register


@register
class ChannelSum(CAMMethod):
    """The layer's activations summed over channels: no gradients, no rerun."""

    name = "test-channelsum"
    needs_gradients = False
    cost = "a note the app shows"

    def __call__(self, data):
        acts, _ = self._checked(data)
        return acts.sum(axis=-1)
'''

METRIC_FILE = '''
import numpy as np
from camlens.metrics import MetricResult, register_metric


@register_metric("test-peak", higher_is_better=True)
def peak(model, explanation, run):
    """The largest value of each raw map: reads the explanation only."""
    raw = explanation.raw_maps[run.common["site"]]
    return MetricResult("test-peak", raw.reshape(len(raw), -1).max(axis=1), True)
'''

TARGET_FILE = '''
from camlens.targets import Target, register_target


@register_target("test-gap", "test-gap:A-B")
class Gap(Target):
    """output[:, a] - output[:, b]: how far class a leads class b."""

    def __init__(self, a=0, b=1, output=None):
        super().__init__(output)
        self.a, self.b = int(a), int(b)

    @classmethod
    def from_text(cls, arg):
        a, b = arg.split("-")
        return cls(int(a), int(b))

    def score(self, outputs, names, xp):
        y = self.select(outputs, names)
        return y[:, self.a] - y[:, self.b]

    def describe(self):
        return f"class {self.a} minus class {self.b}"
'''


def _load(tmp_path, name: str, text: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


@pytest.fixture
def plugins(tmp_path):
    _load(tmp_path, "camlens_test_method_plugin", METHOD_FILE)
    _load(tmp_path, "camlens_test_metric_plugin", METRIC_FILE)
    _load(tmp_path, "camlens_test_target_plugin", TARGET_FILE)
    yield
    METHODS.remove("test-channelsum")
    METRIC_REGISTRY.remove("test-peak")
    _TEXT_TARGETS.remove("test-gap")
    for name in ("camlens_test_method_plugin", "camlens_test_metric_plugin", "camlens_test_target_plugin"):
        sys.modules.pop(name, None)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


def test_a_method_a_metric_and_a_target_each_in_one_file(plugins):
    model = _model()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    assert "test-channelsum" in available_methods()
    assert slow_methods()["test-channelsum"] == "a note the app shows"

    target = targets.parse_target("test-gap:2-0")  # what `--target test-gap:2-0` reads
    assert "test-gap:A-B" in targets.text_targets()
    exp = camlens.explain(model, x, method="test-channelsum", target=target, layer="1")

    with torch.no_grad():
        relu = model[1](model[0](x))
        out = model(x)
    np.testing.assert_allclose(exp.raw_maps[0], relu.sum(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.scores, (out[:, 2] - out[:, 0]).numpy(), rtol=1e-5, atol=1e-6)
    assert exp.method == "test-channelsum" and exp.target == "class 2 minus class 0"

    assert "test-peak" in metrics.METRICS and "test-peak" in metrics.model_metrics()
    res = metrics.evaluate(model, exp, ["test-peak", "deletion"], steps=4, score="raw")
    expected = relu.sum(dim=1).numpy().reshape(2, -1).max(axis=1)
    np.testing.assert_allclose(res["test-peak"].per_image, expected, rtol=1e-5)
    assert res["deletion"].per_image.shape == (2,)


def test_registered_names_clash_and_misses_name_the_choices(plugins):
    from camlens.methods import CAMMethod, register

    class Other(CAMMethod):
        name = "Test-ChannelSum"  # the same name in another spelling

    with pytest.raises(ValueError, match="already registered"):
        register(Other)
    with pytest.raises(ValueError, match="bad target 'test-gap:x'.*test-gap:A-B"):
        targets.parse_target("test-gap:x")
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.evaluate(_model(), camlens.explain(_model(), np.zeros((1, 4, 4, 3), np.float32)), ["nope"])
