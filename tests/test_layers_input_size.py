"""``camlens layers --size H,W`` and ``camlens.layers(model, input_size=(H, W))``: the input is
laid out as the model itself takes it, channels-last for a Keras model (a subclassed one has no
input size of its own) and channels-first for a PyTorch module. The command line
used to build ``(1, 3, H, W)`` for every model, which a subclassed Keras model read as an image
3 pixels high."""

from __future__ import annotations

import sys

import pytest

import camlens
from camlens.cli import main

SUBCLASSED = '''
import keras


class Net(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.conv2 = keras.layers.Conv2D(6, 3, padding="same", activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(self.pool(self.conv2(self.conv1(x))))


def build():
    net = Net()
    net(keras.ops.zeros((1, 8, 8, 3)))  # built by a call: still no input size of its own
    return net
'''


def _chosen_row(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("chosen"))


def test_layers_size_on_a_subclassed_keras_model_is_channels_last(tmp_path, capsys, monkeypatch):
    (tmp_path / "net.py").write_text(SUBCLASSED)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["layers", str(tmp_path / "net.py") + ":build"]) == 2
    assert "give --size H,W" in capsys.readouterr().err
    assert main(["layers", str(tmp_path / "net.py") + ":build", "--size", "20,24"]) == 0
    out = capsys.readouterr().out
    assert "conv2" in _chosen_row(out)
    assert "20x24x6" in out, out  # the (h, w, C) of conv2 at the size asked for


def test_layers_input_size_on_both_kinds():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 2))
    report = camlens.layers(net, input_size=(12, 16))
    assert report.chosen == ["1"]
    assert "12x16x5" in str(report)
    with pytest.raises(ValueError, match="input_shape or input_size, not both"):
        camlens.layers(net, input_shape=(1, 3, 12, 16), input_size=(12, 16))
    ns: dict = {}
    exec(SUBCLASSED, ns)
    report = camlens.layers(ns["build"](), input_size=(10, 14))
    assert "10x14x6" in str(report), str(report)
