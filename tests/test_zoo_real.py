"""The real libraries' own model classes, small configurations, random weights: timm and
torchvision ViTs, DeiT, DINOv2 with registers, Swin, a CNN, a detector and a segmenter. The
automatic layer is the one pytorch-grad-cam's documentation recommends (or a stated better one),
and the maps equal pytorch-grad-cam's at that layer with the reshape it documents for tokens.

Skipped where torchvision or timm cannot be imported (the test environment pins torch 2.13.0,
beside which no PyPI torchvision imports); `benchmarks/zoo.py` runs the full table."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:
    import torchvision
except Exception:  # not installed, or built for another torch
    pytest.skip("torchvision cannot be imported beside this torch", allow_module_level=True)
if getattr(torchvision, "IS_STUB", False):
    pytest.skip("only the torchvision stand-in is importable", allow_module_level=True)

import camlens  # noqa: E402
from camlens.targets import Detection, SegmentationRegion  # noqa: E402

if __import__("os").environ.get("KERAS_BACKEND", "torch") != "torch":
    pytest.skip("native torch models do not depend on the Keras backend: run in the torch run",
                allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parent / "stubs"))
try:
    grad_cam, _ = importlib.import_module("grad_cam_loader").import_grad_cam()
except ImportError:
    grad_cam = None
finally:
    sys.path.pop(0)

needs_peer = pytest.mark.skipif(grad_cam is None, reason="grad-cam is not installed")


def _unit(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / (m.max() + 1e-12)


def _peer_map(model, layer, x, target, reshape=None):
    from pytorch_grad_cam import GradCAM

    module = dict(model.named_modules())[layer]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = GradCAM(model=model, target_layers=[module], reshape_transform=reshape)
        return cam(input_tensor=x, targets=[target])[0]


class _Class:
    def __init__(self, k):
        self.k = k

    def __call__(self, out):
        return out[..., self.k] if out.dim() == 1 else out[:, self.k]


def _tokens(extra, grid):
    def reshape(t):
        return t[:, extra:].reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)
    return reshape


def _seeded(make):
    torch.manual_seed(0)
    return make().eval()


timm = None
try:
    import timm
except Exception:
    pass
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed")

VITS = [
    # name, constructor, extra tokens, grid
    ("vit", lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                      depth=2, num_classes=5), 1, 4),
    ("deit-distilled", lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                                                 patch_size=8, depth=2, num_classes=5), 2, 4),
    ("dinov2-registers", lambda: timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56,
                                                   depth=2, embed_dim=64, num_heads=2, num_classes=5), 5, 4),
]


@needs_timm
@needs_peer
@pytest.mark.parametrize("name,make,extra,grid", VITS, ids=[v[0] for v in VITS])
def test_timm_vits_auto_layer_and_parity_with_pytorch_grad_cam(name, make, extra, grid):
    model = _seeded(make)
    size = 56 if "dinov2" in name else 32
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = next(k for k in range(5) if np.ptp(camlens.explain(model, x, target=k).raw_maps[0]) > 0)
    exp = camlens.explain(model, x, target=target)
    assert exp.sites[0].layer == "blocks.1.norm1"  # the last block's attention input
    assert exp.sites[0].shape[:2] == (grid, grid)
    assert f"{extra} extra + {grid}x{grid} patches" in exp.reason
    peer = _peer_map(model, "blocks.1.norm1", x, _Class(target), _tokens(extra, grid))
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(peer), atol=1e-5)


@needs_timm
@needs_peer
def test_timm_swin_reads_its_channels_last_maps():
    model = _seeded(lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1),
                                              embed_dim=32, num_heads=(1, 1, 1, 1), num_classes=5))
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    exp = camlens.explain(model, x, target=2)
    assert exp.sites[0].layer == "norm" and exp.sites[0].shape == (7, 7, 256)  # (N, 7, 7, C) as it is
    peer = _peer_map(model, "norm", x, _Class(2), lambda t: t.permute(0, 3, 1, 2))
    assert np.ptp(exp.raw_maps[0]) > 0
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(peer), atol=1e-5)


@needs_peer
def test_torchvision_resnet_and_swin_match_pytorch_grad_cam():
    resnet = _seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=5))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    exp = camlens.explain(resnet, x, target=1)
    # the last block's output: its shared ReLU's second call, the same value as layer4's
    assert exp.sites[0].layer == "layer4.1.relu" and exp.sites[0].call == 1
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(_peer_map(resnet, "layer4", x, _Class(1))), atol=1e-5)
    swin = _seeded(lambda: torchvision.models.swin_t(weights=None, num_classes=5))
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    exp = camlens.explain(swin, x, target=1, layer="norm")
    assert exp.sites[0].shape == (7, 7, 768)
    peer = _peer_map(swin, "norm", x, _Class(1), lambda t: t.permute(0, 3, 1, 2))
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(peer), atol=1e-5)


DETECTORS = {
    "faster-rcnn": lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0),
    "retinanet": lambda: torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, score_thresh=0.0, min_size=160, max_size=160),
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_torchvision_detector_one_box_equals_a_hook_reference(name):
    model = _seeded(DETECTORS[name])
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="backbone's body"):
        exp = camlens.explain(model, x, target=Detection(index=0))
    layer = exp.sites[0].layer
    assert layer.startswith("backbone.body")
    module = dict(model.named_modules())[layer]
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    try:
        out = model(x)
        (g,) = torch.autograd.grad(out[0]["scores"][0], seen["a"])
    finally:
        handle.remove()
    a, g = seen["a"].detach().permute(0, 2, 3, 1).numpy(), g.permute(0, 2, 3, 1).numpy()
    want = np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)
    assert np.ptp(want) > 0
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(exp.boxes[0], out[0]["boxes"][0].detach().numpy(), rtol=1e-5)


@needs_peer
def test_torchvision_segmenter_region_matches_pytorch_grad_cam():
    model = _seeded(lambda: torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                                       num_classes=4))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mask = np.zeros((64, 64), np.float32)
    mask[10:40, 20:50] = 1
    exp = camlens.explain(model, x, target=SegmentationRegion(2, mask, output="out"))
    layer = exp.sites[0].layer
    assert layer.startswith("classifier.") and layer != "classifier.4"  # not the logits

    class Out(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)["out"]

    peer = _peer_map(Out(model), "m." + layer, x, lambda out: (out[2] * torch.from_numpy(mask)).sum())
    assert np.ptp(exp.raw_maps[0]) > 0
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(peer), atol=1e-5)


@needs_peer
def test_torchvision_detector_box_score_equals_pytorch_grad_cams_box_target():
    """pytorch-grad-cam's Faster R-CNN target for one box: the score of the detection of that
    label overlapping it most, plus that IoU; camlens' ``Detection(box, label, regression=True)``
    is the same number, so the maps at the same layer agree."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model = _seeded(lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0))
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        found = model(x)[0]
    box, label = found["boxes"][0].numpy(), int(found["labels"][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp = camlens.explain(model, x, target=Detection(box=box, label=label, regression=True))
    layer = exp.sites[0].layer
    peer_target = FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=torch.from_numpy(box[None]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]])
        peer = cam(input_tensor=x, targets=[peer_target])[0]
    assert np.ptp(exp.raw_maps[0]) > 0
    np.testing.assert_allclose(_unit(exp.maps[0][0]), _unit(peer), atol=1e-5)
