"""Layouts inside torch modules: channels-last maps (Swin, ConvNeXt blocks), values whose first
axis is not the batch (attention windows), values whose layout nothing in the model shows, and
forward arguments with defaults. Each case either matches a hand-computed reference or raises a
clear error; none is read the wrong way round."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import camlens  # noqa: E402
from camlens.tokens import tokens_to_grid  # noqa: E402
from test_vit import Block  # noqa: E402


def _hooked(net, module, x, cls, to_nhwc):
    """Grad-CAM by hand: a forward hook, autograd, the map from ``to_nhwc(value)``."""
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    try:
        out = net(x)
        (grad,) = torch.autograd.grad(out[:, cls].sum(), seen["a"])
    finally:
        handle.remove()
    acts, grads = to_nhwc(seen["a"].detach()).numpy(), to_nhwc(grad).numpy()
    cam = np.maximum(np.einsum("nijc,nc->nij", acts, grads.mean(axis=(1, 2))), 0)
    assert all(np.ptp(m) > 0 for m in cam)  # a reference that can tell layouts apart
    return cam


class SwinLike(nn.Module):
    """Patch embedding, then blocks on (N, H, W, C) maps as in Swin: LayerNorm and an MLP over
    the last axis, a final norm, the mean over H and W, a head."""

    def __init__(self, width: int = 12, classes: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, 4, stride=4)
        self.norm1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # (N, 4, 6, C): not square, H != W
        x = x + self.mlp(self.norm1(x))
        return self.head(self.norm(x).mean(dim=(1, 2)))


class ConvNeXtLike(nn.Module):
    """A ConvNeXt-style block: depthwise conv, permute to channels-last for LayerNorm and two
    Linear layers, permute back, then a channels-first conv and a pooled head."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 2, stride=2)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.ln = nn.LayerNorm(width)
        self.pw1 = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(2 * width, width)
        self.post = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.ln(y)))).permute(0, 3, 1, 2)
        x = self.post(x + y)
        return self.head(x.mean(dim=(2, 3)))


def _images(n=2, h=16, w=24, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, h, w)).astype(np.float32))


def test_swin_style_channels_last_maps_are_read_as_such_and_auto_takes_the_final_norm():
    torch.manual_seed(0)
    net = SwinLike().eval()
    x = _images()
    report = camlens.layers(net, input_shape=(1, 3, 16, 24))
    rows = {r.path: r for r in report.rows}
    # (N, 4, 6, 12) channels-last: 4x6 positions of 12 channels (read channels-first it would
    # be 6x12 positions of 4 channels)
    assert rows["norm"].shape == "4x6x12" and rows["mlp.2"].shape == "4x6x12"
    assert report.chosen == ["norm"]
    exp = camlens.explain(net, x, target=1)
    assert exp.sites[0].layer == "norm" and exp.sites[0].shape == (4, 6, 12)
    want = _hooked(net, net.norm, x, 1, lambda t: t)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-5, atol=1e-6)


def test_convnext_style_block_inside_layers_are_channels_last_and_after_the_permute_first():
    torch.manual_seed(1)
    net = ConvNeXtLike().eval()
    x = _images(seed=1)
    rows = {r.path: r for r in camlens.layers(net, input_shape=(1, 3, 16, 24)).rows}
    assert rows["ln"].shape == rows["pw2"].shape == "8x12x8"  # (N, 8, 12, C) as it is
    assert rows["pw1"].shape == "8x12x16"
    assert rows["post"].shape == "8x12x8"  # (N, C, 8, 12) moved to channels-last
    for layer, module, to_nhwc in (("pw1", net.pw1, lambda t: t),
                                   ("post", net.post, lambda t: t.permute(0, 2, 3, 1))):
        exp = camlens.explain(net, x, target=2, layer=layer)
        want = _hooked(net, module, x, 2, to_nhwc)
        np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-5, atol=1e-6)


def test_score_cam_replays_a_channels_last_layer_in_its_own_layout():
    torch.manual_seed(0)
    net = SwinLike().eval()
    x = _images(n=1)
    exp = camlens.explain(net, x, method="ablationcam", target=1, layer="norm")
    # by hand: zero one channel of the (N, H, W, C) map at a time, rerun the rest of the model
    with torch.no_grad():
        h = net.patch_embed(x).permute(0, 2, 3, 1)
        h = net.norm(h + net.mlp(net.norm1(h)))
        base = net.head(h.mean(dim=(1, 2)))[0, 1]
        drops = []
        for c in range(h.shape[-1]):
            cut = h.clone()
            cut[..., c] = 0
            drops.append(float((base - net.head(cut.mean(dim=(1, 2)))[0, 1]) / base))
    want = np.maximum(np.einsum("ijc,c->ij", h[0].numpy(), np.array(drops, np.float32)), 0)
    np.testing.assert_allclose(exp.raw_maps[0][0], want, rtol=1e-4, atol=1e-5)


class Mystery(nn.Module):
    """Tokens reshaped to a 4-D value that no later operation reads as a map of channels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.ident = nn.Identity()
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        n = x.shape[0]
        t = self.embed(x.flatten(2).transpose(1, 2))  # (N, H*W, 8)
        grid = self.ident(t.reshape(n, 4, 8, 4))  # which axis is what? nothing says
        return self.head(grid.reshape(n, -1, 8).mean(dim=1))


def test_a_4d_value_whose_layout_nothing_shows_is_refused_not_guessed():
    net = Mystery().eval()
    report = camlens.layers(net, input_shape=(1, 3, 4, 4))
    assert "ident" not in [r.path for r in report.candidates]
    with pytest.raises(ValueError, match=r"'ident' cannot be explained: the layout of its output.*does not guess"):
        camlens.explain(net, _images(h=4, w=4), target=0, layer="ident")
    with pytest.raises(ValueError, match="no feature map to show"):
        camlens.feature_maps(net, _images(n=1, h=4, w=4), layers="ident")


class Windows(nn.Module):
    """A map cut into 2x2 windows stacked on the batch axis, as Swin's attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.win = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        win = y.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, h // 2, w // 2)
        win = self.win(win)
        y = win.reshape(n, 2, 2, c, h // 2, w // 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
        return self.head(y.mean(dim=(2, 3)))


def test_a_layer_whose_first_axis_is_not_the_batch_is_refused():
    net = Windows().eval()
    with pytest.raises(ValueError, match=r"'win' cannot be explained: .*8 rows for a batch of 2 images"):
        camlens.explain(net, _images(h=8, w=8), target=0, layer="win")
    exp = camlens.explain(net, _images(h=8, w=8), target=0)
    assert exp.sites[0].layer == "conv"  # the windows are never the automatic choice


class MaskedBlock(Block):
    """test_vit's pre-norm block, its forward taking an optional attention mask."""

    def forward(self, x, attn_mask=None):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class DefaultArgViT(nn.Module):
    """A ViT whose forward takes an optional mask handed to every block, as timm's do
    (``forward(x, attn_mask=None)``): torch.fx makes the argument a graph input, and the rule
    for several inputs then rejected every layer after the first attention. It is a constant,
    not an image."""

    def __init__(self, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        Block = MaskedBlock

        self.patch_embed = nn.Conv2d(3, width, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.blocks = nn.ModuleList(Block(width) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x, attn_mask=None):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.head(self.norm(x)[:, 0])


def test_forward_arguments_with_defaults_are_not_inputs():
    torch.manual_seed(3)
    net = DefaultArgViT().eval()
    report = camlens.layers(net, input_shape=(1, 3, 16, 16))
    assert report.chosen == ["blocks.1.norm1"], report.reason
    x = _images(h=16, w=16, seed=3)
    exp = camlens.explain(net, x, target=1)

    def to_grid(t):
        return torch.from_numpy(tokens_to_grid(t.numpy()))

    want = _hooked(net, net.blocks[1].norm1, x, 1, to_grid)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)


class OwnLayerNorm(nn.LayerNorm):
    """A LayerNorm subclass defined outside torch.nn, as timm's is: torch.fx traces through it
    into F.layer_norm instead of keeping it as a module."""

    def forward(self, x):
        return nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def test_modules_fx_traces_through_keep_their_names_and_can_be_probed():
    torch.manual_seed(3)
    net = DefaultArgViT().eval()
    for block in net.blocks:
        own = OwnLayerNorm(16)
        own.load_state_dict(block.norm1.state_dict())
        block.norm1 = own
    report = camlens.layers(net, input_shape=(1, 3, 16, 16))
    assert report.chosen == ["blocks.1.norm1"], report.reason  # not "layer_norm_2", a function
    assert {r.path: r.kind for r in report.rows}["blocks.1.norm1"] == "OwnLayerNorm"
    x = _images(h=16, w=16, seed=3)
    exp = camlens.explain(net, x, target=1)
    want = _hooked(net, net.blocks[1].norm1, x, 1, lambda t: torch.from_numpy(tokens_to_grid(t.numpy())))
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
