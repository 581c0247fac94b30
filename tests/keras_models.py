"""Tiny Keras models with known numbers, shared by the tests."""

from __future__ import annotations

import numpy as np
import keras
from keras import layers as L


def one_conv_net() -> keras.Model:
    """x (4x4x1) -> 1x1 conv, kernels [2, -1], no bias -> global average -> Dense [3, 1].

    A_1 = 2x, A_2 = -x;  S = 3 mean(A_1) + 1 mean(A_2) = 5 mean(x);  dS/dA_c = w_c / 16.
    """
    inp = keras.Input((4, 4, 1), name="image")
    a = L.Conv2D(2, 1, use_bias=False, name="conv")(inp)
    g = L.GlobalAveragePooling2D(name="gap")(a)
    out = L.Dense(1, use_bias=False, name="head")(g)
    model = keras.Model(inp, out, name="one_conv")
    model.get_layer("conv").set_weights([np.array([2.0, -1.0], "float32").reshape(1, 1, 1, 2)])
    model.get_layer("head").set_weights([np.array([[3.0], [1.0]], "float32")])
    return model


def one_conv_input() -> np.ndarray:
    return (np.arange(16, dtype="float32") - 5.0).reshape(1, 4, 4, 1)


def siamese(size: int = 32) -> tuple[keras.Model, keras.Sequential]:
    """Seed 000: two images, one shared Sequential encoder, merged, a similarity score."""
    keras.utils.set_random_seed(1)
    encoder = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            L.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
            L.MaxPooling2D(name="p1"),
            L.Conv2D(8, 3, padding="same", activation="tanh", name="c2"),
            L.MaxPooling2D(name="p2"),
        ],
        name="encoder",
    )
    a = keras.Input((size, size, 3), name="input_1")
    b = keras.Input((size, size, 3), name="input_2")
    merged = L.Concatenate(name="merged")([encoder(a), encoder(b)])
    h = L.Conv2D(8, 3, activation="tanh", name="mnet_conv1")(merged)
    h = L.Flatten()(h)
    out = L.Dense(1, name="similarity")(h)
    return keras.Model([a, b], out, name="siamese"), encoder


def cosine_siamese(size: int = 16) -> keras.Model:
    """Two images, one nested Functional encoder (``encoder``, a keras.Model) called on both,
    the cosine similarity of the two embeddings as the one output: saveable as .keras."""
    keras.utils.set_random_seed(1)
    enc_in = keras.Input((size, size, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv")(enc_in)
    x = L.GlobalAveragePooling2D()(x)
    encoder = keras.Model(enc_in, L.Dense(4, name="embed")(x), name="encoder")
    a, b = keras.Input((size, size, 3), name="left"), keras.Input((size, size, 3), name="right")
    return keras.Model([a, b], L.Dot(axes=1, normalize=True, name="cosine")([encoder(a), encoder(b)]))


def two_heads() -> keras.Model:
    """A shared trunk, then one branch per output: 'cls' (3 classes) and 'reg' (1 value)."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((16, 16, 3))
    t = L.Conv2D(4, 3, padding="same", activation="relu", name="trunk")(inp)
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(t)
    b = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(t)
    cls = L.Dense(3, activation="softmax", name="cls")(L.GlobalAveragePooling2D()(a))
    reg = L.Dense(1, name="reg")(L.GlobalAveragePooling2D()(b))
    return keras.Model(inp, [cls, reg], name="two_heads")


def small_classifier(activation: str | None = "softmax", bn: bool = False, dropout: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inp)
    if bn:
        x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = L.Dropout(dropout, name="drop")(x)
    out = L.Dense(4, activation=activation, name="predictions")(x)
    return keras.Model(inp, out, name="small")


def saved_cli_classifier(path, size: int = 32, first_conv: str | None = None):
    """The command-line tests' model, saved to ``path``: two ReLU convolutions (the second
    named ``last_conv``), global average pooling, a 3-class softmax; seed 0."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name=first_conv)(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    x = L.GlobalAveragePooling2D()(x)
    keras.Model(inp, L.Dense(3, activation="softmax")(x)).save(path)
    return path


def probe_free(model: keras.Model) -> bool:
    """No camlens wrapper left on any layer, nested ones included."""
    return all(
        "call" not in layer.__dict__ for layer in model._flatten_layers(include_self=True)
    )


def backend_gradients(fn, *arrays):
    """Gradients of ``sum(fn(*arrays))`` with respect to each array, with the Keras backend's
    own autodiff (no camlens code): an independent reference for the probes."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            total = tf.reduce_sum(fn(*xs))
        return [g.numpy() for g in tape.gradient(total, xs)]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        grads = jax.grad(lambda *xs: jnp.sum(fn(*xs)), argnums=tuple(range(len(arrays))))(
            *[jnp.asarray(a) for a in arrays]
        )
        return [np.asarray(g) for g in grads]
    import torch

    xs = [torch.tensor(np.asarray(a), requires_grad=True) for a in arrays]
    total = fn(*xs).sum()
    return [g.detach().numpy() for g in torch.autograd.grad(total, xs)]
