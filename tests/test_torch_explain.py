"""explain() on native PyTorch modules: exact numbers, call sites, modes and hooks restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens import targets
from camlens.adapters import adapt
from hand_computed import EXPECTED, SCORE, X
from torch_models import one_conv_net



X_NCHW = torch.from_numpy(np.moveaxis(X, -1, 1).copy())


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_one_conv_net_exact_maps(method):
    net = one_conv_net()
    exp = camlens.explain(net, X_NCHW, method=method, target=0)
    assert exp.sites[0].layer == "0"
    np.testing.assert_allclose(exp.raw_maps[0][0], EXPECTED[method], rtol=1e-6, atol=1e-6)
    assert exp.scores[0] == pytest.approx(SCORE)
    channels_last = camlens.explain(net, X, method=method, target=0)  # numpy NHWC works too
    np.testing.assert_array_equal(channels_last.raw_maps[0], exp.raw_maps[0])


def test_one_conv_net_activations_and_gradients():
    net = one_conv_net()
    adapter = adapt(net)
    adapter.prepare(X)
    conv = [n for n in adapter.graph().nodes if n.path == "0"]
    cap = adapter.capture([X], conv, targets.RegressionScore(0))
    np.testing.assert_allclose(cap.sites[0].activations[0, :, :, 0], 2 * X[0, :, :, 0])
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 0], np.full((4, 4), 3 / 16), rtol=1e-6)
    np.testing.assert_allclose(cap.sites[0].gradients[0, :, :, 1], np.full((4, 4), 1 / 16), rtol=1e-6)
    assert all(p.grad is None for p in net.parameters())  # no parameter gradient computed


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        out = self.conv2(self.relu(self.bn(self.conv1(x))))
        out += x  # in place, as torchvision's ResNet blocks do
        return self.relu(out)  # the same ReLU module, called a second time


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.layer1(torch.relu(self.stem(x)))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


@pytest.fixture
def resnetish():
    torch.manual_seed(0)
    return ResNetish()


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_auto_layer_is_the_second_call_of_the_shared_relu(resnetish):
    report = camlens.layers(resnetish, input_shape=(1, 3, 16, 16))
    assert report.chosen == ["layer1.1.relu#1"]
    assert "layer1.1.relu#1" in report.reason
    x = torch.rand(2, 3, 16, 16)
    exp = camlens.explain(resnetish, x)
    assert [(s.layer, s.call) for s in exp.sites] == [("layer1.1.relu", 1)]
    # the probed activation is the block's output: compare with a plain forward
    feats = {}
    handle = resnetish.layer1.register_forward_hook(lambda m, a, out: feats.setdefault("out", out.detach()))
    with torch.no_grad():
        resnetish.eval()
        logits = resnetish(x)
    handle.remove()
    cap = adapt(resnetish)
    cap.prepare(x)
    node = [n for n in cap.graph().nodes if n.label == "layer1.1.relu#1"]
    got = cap.capture([np.moveaxis(x.numpy(), 1, -1)], node, targets.ClassScore()).sites[0].activations
    np.testing.assert_allclose(got, np.moveaxis(feats["out"].numpy(), 1, -1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.scores, logits.max(-1).values.numpy(), rtol=1e-5)


def test_cam_equals_gradcam_times_z_and_modes_restored(resnetish):
    resnetish.train()
    resnetish.layer1[0].bn.eval()  # a per-module flag that must survive
    flags = [m.training for m in resnetish.modules()]
    before = {k: v.clone() for k, v in resnetish.state_dict().items()}
    x = torch.rand(3, 3, 16, 16)
    cam = camlens.explain(resnetish, x, method="cam")
    grad = camlens.explain(resnetish, x, method="gradcam")
    np.testing.assert_allclose(grad.raw_maps[0], np.maximum(cam.raw_maps[0], 0) / 256, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(grad.raw_maps[0], camlens.explain(resnetish, x).raw_maps[0])  # dropout off
    assert [m.training for m in resnetish.modules()] == flags
    for k, v in resnetish.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics untouched
    assert _hooks(resnetish) == 0


class Exploding(nn.Module):
    armed = False

    def forward(self, x):
        if Exploding.armed:
            raise RuntimeError("boom inside the model")
        return x


def test_hooks_and_modes_restored_after_exception_and_interrupt():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Exploding(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    net.train()
    x = torch.rand(1, 3, 8, 8)
    Exploding.armed = True
    try:
        with pytest.raises(RuntimeError, match="boom"):
            camlens.explain(net, x, layer="1")
    finally:
        Exploding.armed = False
    assert _hooks(net) == 0 and all(m.training for m in net.modules())

    def interrupt(out):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        camlens.explain(net, x, target=interrupt)
    assert _hooks(net) == 0 and all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


class Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * 4 * 4 * 4, 1)

    def forward(self, a, b):
        fa, fb = self.encoder(a), self.encoder(b)
        return self.head(torch.cat([fa, fb], 1).flatten(1))


def test_siamese_module_gives_one_site_per_image():
    torch.manual_seed(2)
    net = Siamese()
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    exp = camlens.explain(net, [a, b], target=targets.RegressionScore(0), method="hirescam")
    assert [(s.layer, s.call, s.input_index) for s in exp.sites] == [("encoder.1", 0, 0), ("encoder.1", 1, 1)]
    # independent reference: the same layers by hand, autograd on the activations
    act_a = net.encoder[1](net.encoder[0](a)).detach().requires_grad_()
    act_b = net.encoder[1](net.encoder[0](b)).detach().requires_grad_()
    out = net.head(torch.cat([net.encoder[2](act_a), net.encoder[2](act_b)], 1).flatten(1))
    ga, gb = torch.autograd.grad(out.sum(), [act_a, act_b])
    want_a = torch.relu((ga * act_a).sum(1)).detach().numpy()
    want_b = torch.relu((gb * act_b).sum(1)).detach().numpy()
    np.testing.assert_allclose(exp.raw_maps[0], want_a, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(exp.raw_maps[1], want_b, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:the map at")
def test_logit_skips_a_final_softmax_module():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        logits = net[:-1](x)
    exp = camlens.explain(net, x, target=targets.Logit(2))
    np.testing.assert_allclose(exp.scores, logits[:, 2].numpy(), rtol=1e-5)
    prob = camlens.explain(net, x, target=2)
    np.testing.assert_allclose(prob.scores, torch.softmax(logits, 1)[:, 2].numpy(), rtol=1e-5)
    assert _hooks(net) == 0


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.last = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 100:  # data-dependent control flow: torch.fx cannot trace it
            h = h * 2
        return self.fc(self.last(h).mean((2, 3)))


def test_untraceable_module_falls_back_with_a_warning():
    torch.manual_seed(4)
    net = Untraceable()
    x = torch.rand(1, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="cannot trace"):
        exp = camlens.explain(net, x)
    assert exp.sites[0].layer == "last"
    assert exp.maps[0].shape == (1, 8, 8)


def test_bad_inputs_and_layers():
    net = one_conv_net()
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\) or \(N, H, W, C\)"):
        camlens.explain(net, np.zeros((4, 4), "float32"))
    with pytest.raises(ValueError, match="no layer 'conv'"):
        camlens.explain(net, X_NCHW, layer="conv")
    with pytest.raises(ValueError, match="class index 3 is out of range"):
        camlens.explain(net, X_NCHW, target=3)
    with pytest.raises(ValueError, match="no input shape of its own"):
        camlens.layers(net)
    deep = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="CAM needs"):
        camlens.explain(deep, X_NCHW, method="cam", layer="1")


class ReadsItsShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        bs = x.size(0)  # a shape read: no path of evidence around the convolution
        return self.fc(self.pool(self.act(self.conv(x))).view(bs, -1))


def test_shape_reads_do_not_count_as_paths():
    torch.manual_seed(5)
    exp = camlens.explain(ReadsItsShape(), torch.rand(1, 3, 16, 16))
    assert exp.sites[0].layer == "act"


class _ViewsItsFeatures(nn.Module):
    """A LeNet-style flatten, ``.view(N, -1)`` on a convolution's output: it raises on a
    channels-last memory order, so the adapter must feed this module contiguous tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return self.fc(f.view(f.shape[0], -1))


def test_rerunning_methods_feed_channels_last_memory_and_fall_back_where_a_module_needs_contiguous():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    conv_net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))
    for model, takes_it in ((conv_net, True), (_ViewsItsFeatures(), False)):
        seen: list[bool] = []
        handle = model.register_forward_pre_hook(
            lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
        try:
            adapter = adapt(model)
            arrays = adapter.prepare(x)
            got = adapter.score(arrays, targets.ClassScore(1))
            again = adapter.score(arrays, targets.ClassScore(1))
        finally:
            handle.remove()
        with torch.no_grad():
            ref = model(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))[:, 1].numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(again, got)
        # channels-last where the module takes it; else one failed try, then contiguous only
        assert seen == ([True, True] if takes_it else [True, False, False])
    exp = camlens.explain(_ViewsItsFeatures(), x, method="scorecam", target=1, layer="conv")
    assert exp.map.shape == (2, 6, 6) and np.isfinite(exp.map).all()


def test_a_module_that_fails_on_the_input_size_gets_one_clear_error(capsys):
    class LeNetish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    with pytest.raises(ValueError, match=r"LeNetish failed on an input of shape \(1, 3, 10, 12\) \(N, C, H, W\): "
                                         r"RuntimeError: mat1 and mat2 shapes cannot be multiplied.*--size H,W"):
        camlens.explain(LeNetish(), np.zeros((1, 10, 12, 3), np.float32))
    assert capsys.readouterr().err == ""  # fx's own traceback print is not shown
    # at its size it works; the auto layer is torch.relu, a function, read through the traced
    # graph: Grad-CAM equals autograd on relu(conv(x))
    torch.manual_seed(4)
    net = LeNetish()
    x = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
    exp = camlens.explain(net, x, target=1)
    assert exp.sites[0].layer == "relu" and exp.map.shape == (2, 8, 8)
    a = torch.relu(net.conv(torch.from_numpy(np.moveaxis(x, -1, 1).copy())))
    (g,) = torch.autograd.grad(net.fc(a.flatten(1))[:, 1].sum(), a)
    a, g = np.moveaxis(a.detach().numpy(), 1, -1), np.moveaxis(g.numpy(), 1, -1)
    want = np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)
    assert np.ptp(want) > 0
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-5, atol=1e-7)
    assert not any(m._forward_hooks for m in net.modules())
    for method in ("scorecam", "ablationcam"):  # the model reruns work at a function too
        assert np.isfinite(camlens.explain(net, x, method=method, target=1).map).all()


def test_cam_on_torch_takes_the_linear_head_and_refuses_one_that_does_not_give_the_output():
    # the head search is CAM's (camlens.methods.cam.head_weights); the adapter only says what
    # each layer is. CAM equals relu-free sum of the Linear weights times the activations.
    import torch

    class Twice(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    torch.manual_seed(4)
    body = [torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(4, 3)]
    good = torch.nn.Sequential(*body, torch.nn.Softmax(dim=1)).eval()
    x = torch.rand(2, 3, 5, 5)
    exp = camlens.explain(good, x, method="cam", target=1, layer="1")
    with torch.no_grad():
        acts = good[1](good[0](x)).permute(0, 2, 3, 1).numpy()
    want = acts @ good[4].weight[1].detach().numpy()
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-5, atol=1e-6)
    bad = torch.nn.Sequential(*body, Twice()).eval()
    with pytest.raises(ValueError, match="does not produce output"):
        camlens.explain(bad, x, method="cam", target=1, layer="1")


class ExportOnly(nn.Module):
    """torch.fx cannot trace this forward (it iterates over **kwargs); torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()  # called twice: two call sites
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x, **kwargs):
        for _ in kwargs:
            pass
        h = self.act(self.c1(x))
        h = self.act(self.c2(h))
        return self.fc(self.pool(h).flatten(1))


def test_a_module_fx_cannot_trace_is_read_from_torch_export():
    import warnings

    torch.manual_seed(6)
    net = ExportOnly().eval()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no run-order fallback
        report = camlens.layers(net, input_shape=(1, 3, 8, 8))
    assert report.chosen == ["act#1"]  # the dominator, not "the last spatial module"
    kinds = {r.path: r.kind for r in report.rows}
    assert kinds["act"] == "ReLU" and kinds["fc"] == "Linear" and kinds["pool"] == "AdaptiveAvgPool2d"
    fm = camlens.feature_maps(net, x, ["act", "act#1"])  # each call site its own activations
    with torch.no_grad():
        a1 = net.act(net.c1(x))
        a2 = net.act(net.c2(a1))
    np.testing.assert_array_equal(fm["act"], a1.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(fm["act#1"], a2.permute(0, 2, 3, 1).numpy())
    cam = camlens.explain(net, x, method="cam", target=1)  # the head is found on this graph too
    grad = camlens.explain(net, x, method="gradcam", target=1)
    np.testing.assert_allclose(np.maximum(cam.raw_maps[0], 0) / 64, grad.raw_maps[0], rtol=1e-5, atol=1e-7)


def test_a_module_returning_a_dataclass_has_its_fields_as_outputs():
    # an output record built in forward() (as many libraries return): its tensor fields are the
    # outputs, named as the fields; unset fields (no loss without labels) are left out. It used
    # to end in a KeyError from the graph reader.
    from dataclasses import dataclass

    @dataclass
    class Result:
        logits: torch.Tensor
        features: torch.Tensor
        loss: torch.Tensor | None = None

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            f = self.act(self.conv(x)).mean((2, 3))
            return Result(self.fc(f), features=f)

    torch.manual_seed(7)
    net = Net().eval()
    x = torch.rand(2, 3, 8, 8)
    exp = camlens.explain(net, x, target=1, output="logits")
    with torch.no_grad():
        want = net(x).logits[:, 1].numpy()
    np.testing.assert_allclose(exp.scores, want, rtol=1e-6)
    assert exp.sites[0].layer == "act"
    feats = camlens.explain(net, x, target=camlens.targets.RegressionScore(3, output="features"))
    with torch.no_grad():
        np.testing.assert_allclose(feats.scores, net(x).features[:, 3].numpy(), rtol=1e-6)


def test_a_failed_export_is_not_tried_again_on_the_next_call(monkeypatch):
    calls = []
    real = torch.export.export

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counted)
    net = Untraceable()
    x = torch.rand(1, 3, 8, 8)
    for _ in range(3):
        with pytest.warns(RuntimeWarning, match="cannot trace"):
            camlens.explain(net, x)
    assert calls == [1]  # data-dependent control flow: export fails once, and is remembered


def test_no_crash_where_torch_export_would_load_triton_after_tensorflow(tmp_path):
    """triton (in torch's CUDA builds) loaded after TensorFlow crashes the process; a module
    only torch.export could read is then read from its run order, with a warning that says
    why and how to read it whole. In a fresh process: the test run itself loads triton first."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs triton (a CUDA build of torch) and TensorFlow")
    script = tmp_path / "order.py"
    script.write_text(
        "import warnings\n"
        "import tensorflow, torch, camlens\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.c = torch.nn.Conv2d(3, 4, 3); self.h = torch.nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        y = self.c(x)\n"
        "        return self.h(torch.stack([y[i].mean(dim=(1, 2)) for i in range(x.shape[0])]))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    exp = camlens.explain(M().eval(), torch.rand(2, 3, 8, 8), target=0)\n"
        "print('layer', exp.sites[0].layer)\n"
        "print(any('import torch._dynamo before TensorFlow' in str(x.message) for x in w))\n"
    )
    env = {**__import__("os").environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == ["layer", "c", "True"], proc.stdout


def test_the_trace_reads_parameters_and_buffers_as_fx_does():
    """camlens traces with its own fx Tracer, which finds the tensors ``forward`` reads as
    attributes by identity instead of walking every parameter for each: the graph must be
    fx's own, node for node (a parameter shared by two modules keeps its first name; a
    buffer read in ``forward`` is a ``get_attr`` node too)."""
    import torch
    from torch.fx import symbolic_trace

    from camlens.adapters.torch.adapter import _trace

    class Conv(torch.nn.Conv2d):
        def forward(self, x):  # reads self.weight and self.bias as attributes: get_attr nodes
            return torch.nn.functional.conv2d(x, self.weight, self.bias, padding=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Conv(3, 4, 3)
            self.b = Conv(4, 4, 3)
            self.b.weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3))
            self.shared = Conv(4, 4, 3)
            self.shared.weight = self.b.weight  # one parameter, two names: "b.weight" first
            self.register_buffer("scale", torch.tensor(2.0))
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.shared(self.b(self.a(x))) * self.scale
            return self.head(h.mean((2, 3)))

    net = Net().eval()
    ours, theirs = _trace(net), symbolic_trace(net)
    assert [(n.op, n.target, n.name) for n in ours.graph.nodes] == [
        (n.op, n.target, n.name) for n in theirs.graph.nodes]
    assert ours.code == theirs.code
    targets = {n.target for n in ours.graph.nodes if n.op == "get_attr"}
    assert {"a.weight", "b.weight", "scale"} <= targets and "shared.weight" not in targets
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(ours(x), net(x))
