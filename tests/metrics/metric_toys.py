"""Toy models whose scores are known by hand, for the metric tests.

``mean_model``: a 2-class classifier of the mean pixel ``m`` of an ``(H, W, 1)`` image with
logits ``[m, -m]``; with ``softmax=True`` its output is the probabilities, so
``p_0 = 1 / (1 + exp(-2 m))`` either way under ``score="probability"``.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def mean_model(size=(2, 2), softmax=False):
    import keras

    inp = keras.Input((*size, 1), name="image")
    g = keras.layers.GlobalAveragePooling2D(name="gap")(inp)
    out = keras.layers.Dense(2, use_bias=False, activation="softmax" if softmax else None, name="head")(g)
    model = keras.Model(inp, out, name="mean_model")
    model.get_layer("head").set_weights([np.array([[1.0, -1.0]], "float32")])
    return model


def torch_mean_model():
    import torch
    from torch import nn

    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    return net


def counting(model):
    """An adapter of ``model`` that logs its model runs in ``.calls``."""
    from camlens.adapters import adapt
    from camlens.adapters.arrays import Recorder

    return Recorder(adapt(model))


# image 2x2 [[4, 3], [2, 1]] (sum 10, mean 2.5) and a map with a tie: ranks 0.9 > 0.5 = 0.5 > 0.1;
# the stable sort takes the tied pixels in row-major order: (0,0), (1,0), (1,1), (0,1)
IMAGE = np.array([[4.0, 3.0], [2.0, 1.0]], "float32").reshape(1, 2, 2, 1)
MAP = np.array([[[0.9, 0.1], [0.5, 0.5]]])
# deletion to 0 removes 4, 2, 1, 3: sums 10, 6, 4, 3, 0
DELETION_MEANS = np.array([2.5, 1.5, 1.0, 0.75, 0.0])
# insertion into 0 adds 4, 2, 1, 3: sums 0, 4, 6, 7, 10
INSERTION_MEANS = np.array([0.0, 1.0, 1.5, 1.75, 2.5])
