"""Vision transformers: token layers as patch grids, the automatic layer, exact maps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import keras
import torch
from keras import layers as L
from torch import nn

import camlens
from camlens.adapters.keras import keras_to_numpy
from camlens.tokens import grid_to_tokens, guess_grid, infer_grid, split_tokens, tokens_to_grid

GRADIENT_METHODS = [
    "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "eigengradcam", "scorecam",
]


# ---------------------------------------------------------------------------- token <-> grid


def test_tokens_to_grid_drops_the_class_token_row_major():
    x = np.arange(2 * 17 * 3).reshape(2, 17, 3)
    g = tokens_to_grid(x)
    assert g.shape == (2, 4, 4, 3)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                np.testing.assert_array_equal(g[n, i, j], x[n, 1 + 4 * i + j])
    sq = np.arange(16 * 2).reshape(1, 16, 2)  # a perfect square: no class token
    np.testing.assert_array_equal(tokens_to_grid(sq), sq.reshape(1, 4, 4, 2))
    assert infer_grid(197) == (14, 14, 1) and infer_grid(196) == (14, 14, 0)
    assert infer_grid(10) == (3, 3, 1)  # 10 - 1 = 3 x 3
    assert guess_grid(2) is None and guess_grid(12) is None  # 1 x 1 is no grid


def test_explicit_grid_with_two_extra_tokens_and_the_inverse():
    x = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)  # dist + cls + 2 x 3 patches
    before = x.copy()
    extra, g = split_tokens(x, grid=(2, 3))
    np.testing.assert_array_equal(extra, x[:, :2])
    np.testing.assert_array_equal(g[1, 1, 0], x[1, 2 + 3])
    np.testing.assert_array_equal(tokens_to_grid(x, (2, 3)), g)
    np.testing.assert_array_equal(grid_to_tokens(g, extra), x)
    # one sample's extra tokens put back under a batch of replaced maps, unchanged
    back = grid_to_tokens(np.zeros((4, 2, 3, 3), np.float32), extra[1:])
    assert back.shape == (4, 8, 3)
    np.testing.assert_array_equal(back[:, :2], np.broadcast_to(x[1, :2], (4, 2, 3)))
    assert (back[:, 2:] == 0).all()
    g[:] = -1
    np.testing.assert_array_equal(x, before)  # copies: the input is never changed


def test_grid_errors_name_the_value_and_the_fix():
    no_square = r"12 tokens do not form a square grid.*grid=\(grid_height, grid_width\)"
    with pytest.raises(ValueError, match=no_square):
        tokens_to_grid(np.zeros((1, 12, 4)))
    with pytest.raises(ValueError, match=r"token_grid=\(grid_height, grid_width\)"):
        infer_grid(12, argname="token_grid")
    with pytest.raises(ValueError, match=r"grid=\(4, 4\) needs 16 patch tokens, but the layer has only 12"):
        tokens_to_grid(np.zeros((1, 12, 4)), grid=(4, 4))
    with pytest.raises(ValueError, match="two positive integers"):
        infer_grid(12, (0, 3))
    with pytest.raises(ValueError, match=r"\(N, tokens, channels\); got shape \(12, 4\)"):
        tokens_to_grid(np.zeros((12, 4)))
    with pytest.raises(ValueError, match=r"extra tokens must be \(N, k, 4\)"):
        grid_to_tokens(np.zeros((2, 2, 2, 4)), np.zeros((3, 1, 4)))


# ---------------------------------------------------------------------------- a hand-checkable model
# image 4x6x3 -> 2x2 patches (conv, stride 2) -> 6 tokens of 4 -> [dist, cls] prepended -> 8 tokens
# -> Dense/Linear "tok" (per token, 3 units) -> flatten -> Dense/Linear head (2 classes).
# Score S = flatten(A) . Wh[:, k], so dS/dA = Wh[:, k] reshaped (8, 3): known in closed form.

_rng = np.random.default_rng(7)
P = {
    "conv": _rng.normal(size=(2, 2, 3, 4)).astype(np.float32),  # Keras layout (kh, kw, in, out)
    "conv_b": _rng.normal(size=4).astype(np.float32),
    "cls": _rng.normal(size=4).astype(np.float32),
    "dist": _rng.normal(size=4).astype(np.float32),
    "tok": _rng.normal(size=(4, 3)).astype(np.float32),
    "tok_b": _rng.normal(size=3).astype(np.float32),
    "head": _rng.normal(size=(24, 2)).astype(np.float32),
    "head_b": _rng.normal(size=2).astype(np.float32),
}
X = _rng.normal(size=(2, 4, 6, 3)).astype(np.float32)


def _expected(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM and HiResCAM on the patch grid of "tok", by numpy."""
    n = len(x)
    patches = x.reshape(n, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5)  # (n, i, j, a, b, c)
    emb = np.einsum("nijabc,abck->nijk", patches, P["conv"]) + P["conv_b"]
    extra = np.broadcast_to(np.stack([P["dist"], P["cls"]]), (n, 2, 4))
    tokens = np.concatenate([extra, emb.reshape(n, 6, 4)], axis=1)
    acts = tokens @ P["tok"] + P["tok_b"]  # (n, 8, 3)
    grads = np.broadcast_to(P["head"][:, k].reshape(8, 3), acts.shape)
    a, g = acts[:, 2:].reshape(n, 2, 3, 3), grads[:, 2:].reshape(n, 2, 3, 3)
    gradcam = np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)
    hirescam = np.maximum((a * g).sum(-1), 0)
    return gradcam, hirescam


class ClassToken(L.Layer):
    """Prepends one learned token: (N, T, C) -> (N, 1 + T, C)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="token")

    def call(self, x):
        return keras.ops.concatenate([keras.ops.zeros_like(x[:, :1]) + self.token, x], axis=1)


class AddPosition(L.Layer):
    def build(self, input_shape):
        self.pos = self.add_weight(shape=(1, *input_shape[1:]), initializer="zeros", name="pos")

    def call(self, x):
        return x + self.pos


def keras_linear_tokens() -> keras.Model:
    inp = keras.Input((4, 6, 3), name="image")
    z = {"kernel_initializer": "zeros"}  # set below; random initializers are slow on jax
    x = L.Conv2D(4, 2, strides=2, name="patch", **z)(inp)
    x = L.Reshape((6, 4), name="to_tokens")(x)
    x = ClassToken(name="dist_token")(ClassToken(name="cls_token")(x))
    x = L.Dense(3, name="tok", **z)(x)
    out = L.Dense(2, name="head", **z)(L.Flatten(name="flat")(x))
    model = keras.Model(inp, out)
    model.get_layer("patch").set_weights([P["conv"], P["conv_b"]])
    model.get_layer("cls_token").set_weights([P["cls"].reshape(1, 1, 4)])
    model.get_layer("dist_token").set_weights([P["dist"].reshape(1, 1, 4)])
    model.get_layer("tok").set_weights([P["tok"], P["tok_b"]])
    model.get_layer("head").set_weights([P["head"], P["head_b"]])
    return model


class TorchLinearTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 2, stride=2)
        self.cls = nn.Parameter(torch.from_numpy(P["cls"]).reshape(1, 1, 4))
        self.dist = nn.Parameter(torch.from_numpy(P["dist"]).reshape(1, 1, 4))
        self.tok = nn.Linear(4, 3)
        self.head = nn.Linear(24, 2)
        with torch.no_grad():
            self.patch.weight.copy_(torch.from_numpy(P["conv"].transpose(3, 2, 0, 1).copy()))
            self.patch.bias.copy_(torch.from_numpy(P["conv_b"]))
            self.tok.weight.copy_(torch.from_numpy(P["tok"].T.copy()))
            self.tok.bias.copy_(torch.from_numpy(P["tok_b"]))
            self.head.weight.copy_(torch.from_numpy(P["head"].T.copy()))
            self.head.bias.copy_(torch.from_numpy(P["head_b"]))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([self.dist.expand(n, -1, -1), self.cls.expand(n, -1, -1), x], dim=1)
        return self.head(self.tok(x).flatten(1))


@pytest.mark.parametrize("framework", ["keras", "torch"])
def test_gradcam_on_a_token_layer_matches_numpy(framework):
    model = keras_linear_tokens() if framework == "keras" else TorchLinearTokens()
    gradcam, hirescam = _expected(X, 1)
    exp = camlens.explain(model, X, method="gradcam", target=1, layer="tok", token_grid=(2, 3))
    assert exp.sites[0].layer == "tok" and exp.sites[0].shape == (2, 3, 3)
    np.testing.assert_allclose(exp.raw_maps[0], gradcam, rtol=1e-4, atol=1e-5)
    assert exp.maps[0].shape == (2, 4, 6)
    hires = camlens.explain(model, X, method="hirescam", target=1, layer="tok", token_grid=(2, 3))
    np.testing.assert_allclose(hires.raw_maps[0], hirescam, rtol=1e-4, atol=1e-5)
    # 8 tokens: neither 8 nor 7 is a square, but the model shows its grid: the patch
    # embedding's 2x3 map is flattened into the last 6 tokens, the 2 in front are extra
    shown = camlens.explain(model, X, method="gradcam", target=1, layer="tok")
    assert shown.sites[0].shape == (2, 3, 3)
    np.testing.assert_allclose(shown.raw_maps[0], gradcam, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- small ViTs
# 16x16 images, 4x4 patches: 16 patch tokens + a class token, width 16, two pre-norm blocks. The
# Keras one gets numpy weights (the same on every backend); the torch one copies them, so the two
# must give the same numbers.


def keras_vit(blocks: int = 2, width: int = 16, classes: int = 5) -> keras.Model:
    z = {"kernel_initializer": "zeros"}  # replaced below; random initializers are slow on jax
    inp = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(width, 4, strides=4, name="patch_embed", **z)(inp)
    x = L.Reshape((16, width), name="to_tokens")(x)
    x = AddPosition(name="pos_embed")(ClassToken(name="cls_token")(x))
    for i in range(blocks):
        h = L.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm1")(x)
        h = L.MultiHeadAttention(2, width // 2, name=f"block{i}_attn", **z)(h, h)
        x = L.Add(name=f"block{i}_add1")([x, h])
        h = L.LayerNormalization(epsilon=1e-5, name=f"block{i}_norm2")(x)
        h = L.Dense(width, activation="gelu", name=f"block{i}_mlp1", **z)(h)
        x = L.Add(name=f"block{i}_add2")([x, L.Dense(width, name=f"block{i}_mlp2", **z)(h)])
    x = L.LayerNormalization(epsilon=1e-5, name="norm")(x)
    out = L.Dense(classes, name="head", **z)(x[:, 0])  # the class token only
    model = keras.Model(inp, out, name="tiny_vit")
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, tuple(w.shape)).astype(np.float32))
    return model


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
    def __init__(self, blocks: int = 2, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, width) * 0.1)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def torch_vit_like(kmodel: keras.Model) -> TorchViT:
    def get(name):
        return [np.asarray(keras.ops.convert_to_numpy(w)) for w in kmodel.get_layer(name).weights]

    def put(param, value):
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(param.shape))

    net = TorchViT().eval()
    with torch.no_grad():
        kernel, bias = get("patch_embed")
        put(net.patch_embed.weight, kernel.transpose(3, 2, 0, 1))
        put(net.patch_embed.bias, bias)
        put(net.cls_token, get("cls_token")[0])
        put(net.pos_embed, get("pos_embed")[0])
        for i, block in enumerate(net.blocks):
            for norm in ("norm1", "norm2"):
                for param, value in zip(getattr(block, norm).parameters(), get(f"block{i}_{norm}")):
                    put(param, value)
            qk, qb, kk, kb, vk, vb, ok, ob = get(f"block{i}_attn")  # (C, heads, key_dim) kernels
            put(block.attn.in_proj_weight, np.concatenate([k.reshape(16, 16).T for k in (qk, kk, vk)]))
            put(block.attn.in_proj_bias, np.concatenate([b.reshape(-1) for b in (qb, kb, vb)]))
            put(block.attn.out_proj.weight, ok.reshape(16, 16).T)
            put(block.attn.out_proj.bias, ob)
            for name, k in (("mlp1", 0), ("mlp2", 2)):
                kernel, bias = get(f"block{i}_{name}")
                put(block.mlp[k].weight, kernel.T)
                put(block.mlp[k].bias, bias)
        put(net.norm.weight, get("norm")[0])
        put(net.norm.bias, get("norm")[1])
        put(net.head.weight, get("head")[0].T)
        put(net.head.bias, get("head")[1])
    return net


@pytest.fixture(scope="module")
def kvit():
    return keras_vit()


@pytest.fixture(scope="module")
def tvit(kvit):
    return torch_vit_like(kvit)


IMAGES = np.random.default_rng(3).random((2, 16, 16, 3)).astype(np.float32)

REASON = (
    r"\(.*17x16 tokens = 1 extra \+ 4x4 patches\): the input of {attn} \({kind}\), the last layer "
    r"that mixes tokens.*reach the output only through the class token"
)


def test_auto_layer_on_a_keras_vit_is_the_last_attention_input(kvit):
    report = camlens.layers(kvit)
    assert report.chosen == ["block1_norm1"]
    assert report.reason.startswith("block1_norm1 (LayerNormalization, 17x16 tokens")
    assert re.search(REASON.format(attn="block1_attn", kind="MultiHeadAttention"), report.reason)
    rows = {r.path: r for r in report.rows}
    assert rows["norm"].spatial and rows["norm"].dominates and not rows["block1_norm1"].dominates


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_layer_method_runs_on_a_keras_vit(kvit, method):
    exp = camlens.explain(kvit, IMAGES, method=method, target=2)
    assert exp.sites[0].layer == "block1_norm1" and exp.sites[0].shape == (4, 4, 16)
    assert exp.raw_maps[0].shape == (2, 4, 4) and exp.maps[0].shape == (2, 16, 16)
    assert np.isfinite(exp.raw_maps[0]).all()


def test_the_final_norm_of_a_vit_gives_a_blank_map_and_the_auto_layer_does_not(kvit):
    # why "auto" skips the deepest token layer: its gradient is zero at every patch token
    with pytest.warns(RuntimeWarning, match="constant for sample"):
        late = camlens.explain(kvit, IMAGES, target=2, layer="norm")
    assert (late.raw_maps[0] == 0).all()
    auto = camlens.explain(kvit, IMAGES, target=2)
    assert all(np.ptp(m) > 0 for m in auto.raw_maps[0])


def hooked_gradcam(net, module, x, cls):
    """Independent Grad-CAM of ``module``'s patch tokens: a plain forward hook and autograd,
    tokens (N, 17, 16) -> a 4x4 grid after the class token."""
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    try:
        (grad,) = torch.autograd.grad(net(x)[:, cls].sum(), seen["a"])
    finally:
        handle.remove()
    acts = seen["a"].detach().numpy()[:, 1:].reshape(len(x), 4, 4, 16)
    grads = grad.numpy()[:, 1:].reshape(len(x), 4, 4, 16)
    expected = np.maximum(np.einsum("nijc,nc->nij", acts, grads.mean(axis=(1, 2))), 0)
    assert all(np.ptp(m) > 0 for m in expected)
    return expected


def test_auto_layer_on_a_torch_vit_and_gradcam_against_hooks_and_keras(tvit, kvit):
    report = camlens.layers(tvit, input_shape=(1, 3, 16, 16))
    assert report.chosen == ["blocks.1.norm1"]
    assert re.search(REASON.format(attn=r"blocks\.1\.attn", kind="MultiheadAttention"), report.reason)
    x = torch.from_numpy(np.moveaxis(IMAGES, -1, 1).copy())
    with torch.no_grad():
        np.testing.assert_allclose(tvit(x).numpy(), keras_to_numpy(kvit(IMAGES)), rtol=1e-4, atol=1e-4)
    exp = camlens.explain(tvit, IMAGES, target=2)
    assert exp.sites[0].layer == "blocks.1.norm1" and exp.sites[0].shape == (4, 4, 16)
    expected = hooked_gradcam(tvit, tvit.blocks[1].norm1, x, 2)
    np.testing.assert_allclose(exp.raw_maps[0], expected, rtol=1e-4, atol=1e-6)
    # the Keras ViT with the same weights, on whichever backend: the same map
    keras_exp = camlens.explain(kvit, IMAGES, target=2)
    np.testing.assert_allclose(keras_exp.raw_maps[0], expected, rtol=1e-3, atol=1e-5)


def test_a_block_whose_forward_ends_in_an_add_is_a_layer_by_its_name(tvit):
    """``blocks.0`` is not a leaf module and its output is ``x + mlp(...)``, a function: the
    graph names that add after the block, and a hook on the block probes it."""
    report = camlens.layers(tvit, input_shape=(1, 3, 16, 16))
    rows = {r.path: r for r in report.rows}
    assert rows["blocks.0"].kind == "add" and rows["blocks.1"].kind == "add"
    exp = camlens.explain(tvit, IMAGES, target=2, layer="blocks.0")
    assert exp.sites[0].label == "blocks.0" and exp.sites[0].shape == (4, 4, 16)
    x = torch.from_numpy(np.moveaxis(IMAGES, -1, 1).copy())
    np.testing.assert_allclose(exp.raw_maps[0], hooked_gradcam(tvit, tvit.blocks[0], x, 2), rtol=1e-4, atol=1e-6)
    assert not any(m._forward_hooks for m in tvit.modules())


def test_each_call_of_a_shared_block_is_its_own_layer():
    class Blk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.relu(self.c(x)) + x

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.enc = Blk()
            self.fc = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.fc((self.enc(self.enc(a)) + self.enc(b)).mean((2, 3)))

    net = Twice()
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    exp = camlens.explain(net, [x, 2 * x], layer="enc", target=1)
    assert [s.label for s in exp.sites] == ["enc", "enc#1", "enc#2"]
    assert [s.input_index for s in exp.sites] == [0, 0, 1]
    outs: list = []
    handle = net.enc.register_forward_hook(lambda m, a, out: outs.append(out))
    try:
        ta, tb = (torch.from_numpy(np.moveaxis(v, -1, 1).copy()) for v in (x, 2 * x))
        grads = torch.autograd.grad(net(ta, tb)[:, 1].sum(), outs)
    finally:
        handle.remove()
    for k, (out, grad) in enumerate(zip(outs, grads)):
        a, g = np.moveaxis(out.detach().numpy(), 1, -1), np.moveaxis(grad.numpy(), 1, -1)
        want = np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)
        np.testing.assert_allclose(exp.raw_maps[k], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_layer_method_runs_on_a_torch_vit(tvit, method):
    exp = camlens.explain(tvit, IMAGES, method=method, target=2)
    assert exp.sites[0].layer == "blocks.1.norm1" and exp.sites[0].shape == (4, 4, 16)
    assert exp.raw_maps[0].shape == (2, 4, 4)
    assert np.isfinite(exp.maps[0]).all()


def test_named_token_layer_and_grid_checks(kvit):
    exp = camlens.explain(kvit, IMAGES, target=2, layer="block0_norm1")
    assert exp.sites[0].shape == (4, 4, 16)
    # a given grid overrides the inferred one: 17 tokens as 3x5 patches + 2 extra
    wide = camlens.explain(kvit, IMAGES, target=2, layer="block0_norm1", token_grid=(3, 5))
    assert wide.sites[0].shape == (3, 5, 16) and wide.raw_maps[0].shape == (2, 3, 5)
    too_big = r"token_grid=\(5, 5\) needs 25 patch tokens, but the layer has only 17"
    with pytest.raises(ValueError, match=too_big):
        camlens.explain(kvit, IMAGES, layer="block0_norm1", token_grid=(5, 5))
    with pytest.raises(ValueError, match=r"'head'.*not a spatial"):
        camlens.explain(kvit, IMAGES, layer="head")


@pytest.mark.parametrize("which", ["keras", "torch"])
def test_ablation_cam_on_a_vit_puts_the_class_token_back(kvit, tvit, which):
    # Ablation-CAM replaces the patch tokens and must put the class token back: the scorer fed
    # the layer's own patch grid gives the model's own score.
    from camlens.access import ModelAccess
    from camlens.adapters import adapt
    from camlens.targets import ClassScore
    from camlens.tokens import split_tokens

    model = kvit if which == "keras" else tvit
    adapter = adapt(model)
    arrays = adapter.prepare(IMAGES)
    node = next(n for n in adapter.graph().nodes if n.path.replace(".", "_") == "block1_norm1"
                or n.path == "blocks.1.norm1")
    acts = adapter.capture(arrays, [node], ClassScore(2), need_gradients=False).sites[0].activations
    extra, grid = split_tokens(acts)
    score_site = ModelAccess(adapter, arrays, 0, ClassScore(2), None, 16, node=node, extra=extra).score_site
    full = adapter.score(arrays, ClassScore(2))
    np.testing.assert_allclose(score_site(1, grid[1:2]), full[1:2], rtol=1e-4, atol=1e-5)
    exp = camlens.explain(model, IMAGES, method="ablationcam", target=2)
    assert exp.raw_maps[0].shape == (2, 4, 4) and np.isfinite(exp.raw_maps[0]).all()
    smooth = camlens.explain(model, IMAGES, method="smoothgradcam++", target=2)
    assert smooth.raw_maps[0].shape == (2, 4, 4)


@pytest.mark.parametrize("method", ["rollout", "legrad"])
def test_attention_methods_agree_on_the_keras_and_torch_vits(kvit, tvit, method):
    """The same weights read through keras.layers.MultiHeadAttention (its explicit path, on
    whichever backend) and torch.nn.MultiheadAttention (called with need_weights=False)."""
    keras_exp = camlens.explain(kvit, IMAGES, method=method, target=2)
    torch_exp = camlens.explain(tvit, IMAGES, method=method, target=2)
    assert keras_exp.raw_maps[0].shape == (2, 4, 4) and np.ptp(torch_exp.raw_maps[0]) > 0
    assert keras_exp.sites[0].layer == "block0_attn .. block1_attn"
    np.testing.assert_allclose(keras_exp.raw_maps[0], torch_exp.raw_maps[0], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(keras_exp.scores, torch_exp.scores, rtol=1e-4, atol=1e-4)
    attn = kvit.get_layer("block0_attn")
    assert "_compute_attention" not in vars(attn) and "_masked_softmax" not in vars(attn)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tvit.modules())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_keras_vit_is_put_back_after_an_attention_method_fails(kvit, error):
    attn = [kvit.get_layer(f"block{i}_attn") for i in range(2)]
    before = [sorted(vars(a)) for a in attn]

    def bad(y):
        raise error("target")

    for method in ("rollout", "legrad"):
        with pytest.raises(error, match="target"):
            camlens.explain(kvit, IMAGES, method=method, target=bad)
    assert [sorted(vars(a)) for a in attn] == before
