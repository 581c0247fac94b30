"""Hugging Face `transformers` models, built from configs with random weights: torch.fx cannot
trace them, torch.export can, so the graph is readable and `layer="auto"` follows the same rules
as on any model. Grad-CAM equals one computed by hand with a hook on the chosen module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed", allow_module_level=True)

import camlens  # noqa: E402

transformers = None


@pytest.fixture(autouse=True, scope="module")
def _without_the_torchvision_stand_in():
    """The parity tests may have put tests/stubs' torchvision stand-in in sys.modules (grad-cam
    imports torchvision); transformers would take it for the real one. It is set aside while
    transformers is imported and these tests run, and put back after."""
    global transformers
    stand_in = sys.modules.get("torchvision")
    aside = {}
    if getattr(stand_in, "IS_STUB", False):
        aside = {n: m for n, m in sys.modules.items() if n == "torchvision" or n.startswith("torchvision.")}
        for name in aside:
            del sys.modules[name]
    try:
        transformers = importlib.import_module("transformers")
        yield
    finally:
        sys.modules.update(aside)


def _grad_cam_by_hand(model, module, x, cls, tokens=False, extra=1):
    store = {}

    def hook(m, args, out):
        out.retain_grad()
        store["a"] = out

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x).logits
        logits[:, cls].sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach(), store["a"].grad.detach()
    if tokens:  # (N, extra + h*w, C): the extra tokens set aside, patches on their grid
        n, t, c = a.shape
        side = int(round((t - extra) ** 0.5))
        a, g = a[:, extra:].reshape(n, side, side, c), g[:, extra:].reshape(n, side, side, c)
    else:  # (N, C, h, w) -> channels-last
        a, g = a.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
    w = g.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((w * a).sum(-1)).numpy()
    assert all(np.ptp(m) > 0 for m in cam)  # a reference that can tell a wrong reading apart
    return cam


def test_vit_auto_is_the_input_of_the_last_blocks_attention_and_gradcam_matches():
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "graph not readable" fallback
        report = camlens.layers(model, input_shape=(1, 3, 32, 32))
    chosen = report.chosen[0]
    norm = dict(model.named_modules())[chosen]
    assert chosen.endswith("1.layernorm_before") and isinstance(norm, torch.nn.LayerNorm)
    exp = camlens.explain(model, x, target=0)
    assert exp.sites[0].layer == chosen
    want = _grad_cam_by_hand(model, norm, x, 0, tokens=True)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)


def test_resnet_container_names_and_gradcam_match():
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    torch.manual_seed(1)
    model = transformers.ResNetForImageClassification(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    exp = camlens.explain(model, x, target=1, layer="resnet.encoder.stages.1")
    stage = dict(model.named_modules())["resnet.encoder.stages.1"]
    want = _grad_cam_by_hand(model, stage, x, 1)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
    auto = camlens.explain(model, x, target=1)
    np.testing.assert_allclose(auto.raw_maps[0], want, rtol=1e-4, atol=1e-6)  # the same value


def test_swin_auto_is_the_final_norm_whose_tokens_the_pooler_averages():
    """Swin has no class token: the pooler averages every token of the final norm, so that
    norm has a gradient at every patch (the attention windows before it are not per image)."""
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                  num_heads=[2, 2], window_size=2, num_labels=3)
    torch.manual_seed(0)
    model = transformers.SwinForImageClassification(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    report = camlens.layers(model, input_shape=(1, 3, 32, 32))
    assert report.chosen == ["swin.layernorm"]
    assert "swin.pooler (AdaptiveAvgPool1d) pools its tokens" in report.reason
    exp = camlens.explain(model, x, target=1)
    assert exp.sites[0].shape == (4, 4, 32)
    want = _grad_cam_by_hand(model, model.swin.layernorm, x, 1, tokens=True, extra=0)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
    # inside a block the tokens are cut into 2x2 windows stacked on the batch axis: refused
    windowed = [r.path for r in report.rows if r.path.startswith("swin.encoder.layers.1.blocks.0.attention.q")]
    with pytest.raises(ValueError, match="first axis is not the batch"):
        camlens.explain(model, x, target=1, layer=windowed[0])


def test_deit_distillation_token_is_set_aside_by_the_grid_the_model_shows():
    """DeiT puts a class and a distillation token before the patches: 2 + 16 tokens, neither
    18 nor 17 a square; the patch embedding's 4x4 map gives the grid."""
    cfg = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(2)
    model = transformers.DeiTForImageClassificationWithTeacher(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    exp = camlens.explain(model, x, target=0)
    chosen = dict(model.named_modules())[exp.sites[0].layer]
    assert exp.sites[0].layer.endswith("1.layernorm_before") and exp.sites[0].shape == (4, 4, 32)
    assert "18x32 tokens = 2 extra + 4x4 patches" in exp.reason

    def by_hand():
        store = {}
        handle = chosen.register_forward_hook(lambda m, a, out: store.setdefault("a", out))
        try:
            logits = model(x).logits
            (g,) = torch.autograd.grad(logits[:, 0].sum(), store["a"])
        finally:
            handle.remove()
        a = store["a"].detach()[:, 2:].reshape(2, 4, 4, 32)
        g = g[:, 2:].reshape(2, 4, 4, 32)
        return torch.relu((g.mean(dim=(1, 2), keepdim=True) * a).sum(-1)).numpy()

    np.testing.assert_allclose(exp.raw_maps[0], by_hand(), rtol=1e-4, atol=1e-6)
