"""The user's model is left exactly as it was: every method x {Keras functional, Keras
subclassed, torch} x {success, a
class or logit target, the target raising, a layer raising, KeyboardInterrupt}.

After each run, whatever happened, the model has the same weights, no instance attribute that
was not there (a probe's ``call``, a guided ``forward``, a swapped activation), no hook, the
same training flags and ``requires_grad``, and autograd is on. A "tripwire" layer inside the
model raises on demand; it sits after the first ReLU, so it runs in every pass and inside
every patch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import camlens
from camlens.methods import available_methods, get_method
from camlens.targets import Logit

SHIPPED = [m for m in available_methods() if not m.startswith("test-")]
MODES = ["class", "logit", "target raises", "layer raises", "interrupt"]
LAYER = {"keras": "c2", "keras-subclassed": "c2", "torch": "5"}


class Tripped(RuntimeError):
    pass


class _Trip:
    """What the tripwire raises, and on which call (shared by the Keras layer and the module)."""

    exc: type[BaseException] | None = None

    @classmethod
    def check(cls) -> None:
        if cls.exc is not None:
            exc, cls.exc = cls.exc, None  # once: the restore code itself must not trip
            raise exc("tripwire")


def _settings(name: str):
    """Each method with settings small enough for a matrix (the defaults run 1000 masks)."""
    from camlens.methods import DFF, RISE, SSCAM, FastScoreCAM, GradientShap, IntegratedGradients, KernelShap, Lime, SmoothGrad

    from camlens.methods.relevance import LRP, DeepLift

    small = {"rise": RISE(n_masks=8), "sscam": SSCAM(n_samples=2), "smoothgrad": SmoothGrad(n_samples=3),
             "integratedgradients": IntegratedGradients(steps=4), "fastscorecam": FastScoreCAM(k=2)}
    small["gradientshap"] = GradientShap(n_samples=2, stdevs=0.1)
    small["lime"] = Lime(n_samples=4, segments="grid", grid=2)
    small["kernelshap"] = KernelShap(n_samples=4, segments="grid", grid=2)
    small["dff"] = DFF(k=2)
    small["lrp"] = LRP(composite="epsilon_gamma_box", plain_layers=["trip"])
    small["deeplift"] = DeepLift(baseline=0.5, plain_layers=["trip"])
    return small.get(name) or get_method(name)


#: they explain logits, not probabilities; some models they refuse (before any patch)
RELEVANCE = {"lrp", "deeplift"}
REFUSED = {("keras-subclassed", "deeplift"): "Functional or Sequential",
           ("keras-subclassed", "lrp"): "Functional or Sequential"}


class _RaisingLogit(Logit):
    def score(self, outputs, names, xp):
        raise Tripped("target")


# ---------------------------------------------------------------------------- torch
def _torch_model():
    import torch

    class Tripwire(torch.nn.Module):
        def forward(self, x):
            _Trip.check()
            return x

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), Tripwire(), torch.nn.Dropout(0.5),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1),
    )
    model.train()
    model[6].eval()  # mixed flags: each must come back as it was
    model[0].weight.requires_grad_(False)
    return model


def _torch_state(model):
    import torch

    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "dicts": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "hooks": {n: [len(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks",
                                                     "_backward_hooks", "_backward_pre_hooks")]
                  for n, m in model.named_modules()},
        "forwards": {n: type(m).forward for n, m in model.named_modules()},
        "global": len(torch.nn.modules.module._global_forward_hooks),
        "grad_enabled": torch.is_grad_enabled(),
    }


# ---------------------------------------------------------------------------- Keras
def _keras_model():
    import keras

    @keras.saving.register_keras_serializable("camlens_tests")
    class Tripwire(keras.layers.Layer):
        def call(self, x):
            _Trip.check()
            return x

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    x = keras.layers.ReLU(name="r1")(x)
    x = Tripwire(name="trip")(x)
    x = keras.layers.Dropout(0.5, name="drop")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    model.get_layer("c1").trainable = False
    return model


def _keras_subclassed_model():
    """The same network as a subclassed model (its graph is recorded from one call)."""
    import keras

    class Tripwire(keras.layers.Layer):
        def call(self, x):
            _Trip.check()
            return x

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.c1 = keras.layers.Conv2D(4, 3, padding="same", name="c1")
            self.trip = Tripwire(name="trip")
            self.drop = keras.layers.Dropout(0.5, name="drop")
            self.c2 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")
            self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
            self.head = keras.layers.Dense(3, activation="softmax", name="head")

        def call(self, x, training=False):
            x = self.trip(keras.ops.relu(self.c1(x)))  # a raw op between layers too
            return self.head(self.gap(self.c2(self.drop(x, training=training))))

    keras.utils.set_random_seed(0)
    model = Net()
    model(np.zeros((1, 8, 8, 3), np.float32))
    model.c1.trainable = False
    return model


def _keras_state(model):
    layers = {lyr.name: lyr for lyr in [model, *model._flatten_layers(include_self=False, recursive=True)]}
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "dicts": {n: sorted(k for k in vars(lyr)) for n, lyr in layers.items()},
        "calls": {n: type(lyr).call for n, lyr in layers.items()},
        "activations": {n: getattr(lyr, "activation", None) for n, lyr in layers.items()},
        "trainable": {n: lyr.trainable for n, lyr in layers.items()},
        "grad_enabled": _grad_enabled(),  # torch's autograd mode (the Keras torch backend sets it)
    }


def _grad_enabled():
    try:
        import torch
    except ImportError:
        return None
    return torch.is_grad_enabled()


# ---------------------------------------------------------------------------- the matrix
@pytest.fixture(scope="module")
def models():
    import torch

    found = {"torch": _torch_model(), "keras": _keras_model(), "keras-subclassed": _keras_subclassed_model()}
    with torch.no_grad():  # settle what a first call builds lazily, before the snapshots
        found["torch"](torch.zeros(1, 3, 8, 8))
    found["keras"](np.zeros((1, 8, 8, 3), np.float32))
    return found


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape"):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
    else:
        assert a is b or a == b, f"{where}: {a!r} became {b!r}"


@pytest.mark.filterwarnings("ignore:the map at")  # a random tiny model gives some flat maps
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["torch", "keras", "keras-subclassed"])
@pytest.mark.parametrize("name", SHIPPED)
def test_the_model_is_left_as_it_was(models, kind, name, mode):
    if kind == "torch" and os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        pytest.skip("native torch does not depend on the Keras backend: checked in the torch run")
    model = models[kind]
    if kind == "keras" and mode in ("layer raises", "interrupt"):
        model = _keras_model()  # not compiled yet: the tripwire's Python runs while tracing
        model(np.zeros((1, 8, 8, 3), np.float32))
    if kind == "keras-subclassed" and mode in ("layer raises", "interrupt"):
        model = _keras_subclassed_model()
    method = _settings(name)
    if getattr(method, "needs_attention", False):
        pytest.skip(f"{name} reads a vision transformer's attention and these models have none: "
                    "tests/methods/test_vit_methods.py and tests/test_vit.py check that ViTs are put back")
    state = _torch_state if kind == "torch" else _keras_state
    before = state(model)
    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 3), dtype=np.float32)
    if kind == "torch":
        import torch

        x = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    layer = LAYER[kind] if method.needs_layer else "auto"
    target = Logit(1) if mode == "logit" else 1

    def bad_target(y):
        raise Tripped("target")

    if hasattr(method, "retarget"):  # explains a class contrast of its own (Finer-CAM): a contrast that raises
        from camlens.targets import ContrastScore

        class Raising(ContrastScore):
            def score(self, outputs, names, xp):
                raise Tripped("target")

        bad_target = Raising(1)

    if name in RELEVANCE:
        refused = REFUSED.get((kind, name))
        if refused:
            with pytest.raises(ValueError, match=refused):
                camlens.explain(model, x, method, target=Logit(1))
            _same(before, state(model), f"{kind} {name} refused")
            return
        target = Logit(1)  # they explain logits: the model's final Softmax is skipped
        bad_target = _RaisingLogit(1)

    try:
        if mode == "target raises":
            with pytest.raises(Tripped):
                camlens.explain(model, x, method, target=bad_target, layer=layer)
        elif mode in ("layer raises", "interrupt"):
            _Trip.exc = Tripped if mode == "layer raises" else KeyboardInterrupt
            # compiled Keras programs run the layer's Python only while tracing: the model is
            # new (never traced), so its first pass trips, eager or traced
            with pytest.raises(Tripped if mode == "layer raises" else KeyboardInterrupt):
                camlens.explain(model, x, method, target=target, layer=layer)
        else:
            exp = camlens.explain(model, x, method, target=target, layer=layer)
            assert all(np.isfinite(m).all() for m in exp.maps)
    finally:
        _Trip.exc = None
    _same(before, state(model), f"{kind} {name} {mode}")


@pytest.mark.filterwarnings("ignore:.*the gradient was zero")  # a random tiny model
@pytest.mark.parametrize("mode", ["success", "layer raises", "interrupt", "bad channel"])
@pytest.mark.parametrize("kind", ["torch", "keras", "keras-subclassed"])
def test_visualize_leaves_the_model_as_it_was(models, kind, mode):
    """``camlens.visualize`` (its own adapter call, ``activation_gradients``) and its class
    logits (``input_gradients`` with the softmax skipped) put everything back."""
    if kind == "torch" and os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        pytest.skip("native torch does not depend on the Keras backend: checked in the torch run")
    model = models[kind]
    state = _torch_state if kind == "torch" else _keras_state
    before = state(model)
    size = (8, 8) if kind == "torch" else None
    try:
        if mode == "success":
            vis = camlens.visualize(model, LAYER[kind], [0, 3], size=size, steps=3, jitter=1)
            assert np.isfinite(vis.images).all() and vis.objectives.shape == (3, 2)
            camlens.visualize(model, classes=[1], size=size, steps=2)
        elif mode == "bad channel":
            with pytest.raises(ValueError, match="channel 4 is out of range"):
                camlens.visualize(model, LAYER[kind], [4], size=size, steps=2)
        else:
            _Trip.exc = Tripped if mode == "layer raises" else KeyboardInterrupt
            with pytest.raises(Tripped if mode == "layer raises" else KeyboardInterrupt):
                camlens.visualize(model, LAYER[kind], [0], size=size, steps=2)
    finally:
        _Trip.exc = None
    _same(before, state(model), f"{kind} visualize {mode}")


@pytest.mark.filterwarnings("ignore:.*the gradient was zero")
@pytest.mark.parametrize("kind", ["torch", "keras"])
def test_visualize_leaves_the_model_as_it_was_after_a_real_ctrl_c(models, kind):
    """A real SIGINT at a few points of a run (tests/interrupts.py), not a raise from a layer."""
    import random

    from camlens import _restore
    from interrupts import run_interrupted

    if kind == "torch" and os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        pytest.skip("native torch does not depend on the Keras backend: checked in the torch run")
    model = models[kind]
    state = _torch_state if kind == "torch" else _keras_state
    size = (8, 8) if kind == "torch" else None

    def call():
        camlens.visualize(model, LAYER[kind], [0, 1], size=size, steps=2, jitter=1)

    call()
    before = state(model)
    total, _ = run_interrupted(call, None)
    interrupted = 0
    for n in sorted(random.Random(0).sample(range(1, total + 1), 3)):
        interrupted += run_interrupted(call, n)[1]
        _same(before, state(model), f"{kind} visualize, SIGINT at point {n} of {total}")
        assert not _restore._State.depth and not _restore.held_signals()
    assert interrupted == 3 and total > 100
