"""Segmentation models as torchvision builds them: a dict output ``{"out": (N, classes, H, W)}``
channels-first, logits upsampled to the image. ``SegmentationRegion`` reads the class axis where
the framework puts it, and ``layer="auto"`` does not take the logits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import camlens  # noqa: E402
from camlens.targets import SegmentationRegion  # noqa: E402


class TinySegmenter(nn.Module):
    """A backbone at half resolution, a head (conv, ReLU, 1x1 conv to the class logits), the
    logits upsampled to the input, returned as torchvision's segmenters do."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        logits = self.head(self.backbone(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return TinySegmenter().eval()


X = torch.from_numpy(np.random.default_rng(0).random((2, 3, 12, 16)).astype(np.float32))
MASK = np.zeros((12, 16), np.float32)
MASK[2:7, 3:11] = 1


def _by_hand(net, module, k, mask):
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    try:
        out = net(X)["out"][:, k]  # (N, H, W): the class channel, channels-first
        score = (out * torch.from_numpy(mask)).sum(dim=(1, 2)) if mask is not None else out.sum(dim=(1, 2))
        (grad,) = torch.autograd.grad(score.sum(), seen["a"])
    finally:
        handle.remove()
    a, g = seen["a"].detach().permute(0, 2, 3, 1).numpy(), grad.permute(0, 2, 3, 1).numpy()
    cam = np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)
    return score.detach().numpy(), cam


@pytest.mark.parametrize("mask", [MASK, None], ids=["region", "whole-image"])
def test_segmentation_region_reads_the_class_axis_of_a_channels_first_dict_output(seg, mask):
    target = SegmentationRegion(2, mask, output="out")
    exp = camlens.explain(seg, X, target=target, layer="head.1")
    want_scores, want = _by_hand(seg, seg.head[1], 2, mask)
    np.testing.assert_allclose(exp.scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-6)
    assert all(np.ptp(m) > 0 for m in want)


def test_auto_skips_the_logits_that_are_only_upsampled_to_the_output(seg):
    exp = camlens.explain(seg, X, target=SegmentationRegion(1, MASK, output="out"))
    # head.2 is the logits (1x1 conv): its map is the class logit itself; head.1 is the head's
    # last hidden map, the deepest layer every path passes through
    assert exp.sites[0].layer == "head.1", exp.reason


def test_mask_and_class_errors_name_the_layout(seg):
    with pytest.raises(ValueError, match=r"mask shape \(16, 12\) does not match the output's \(12, 16\).*\(N, classes, H, W\)"):
        camlens.explain(seg, X, target=SegmentationRegion(0, MASK.T, output="out"), layer="head.1")
    with pytest.raises(ValueError, match=r"class index 5 is out of range for 3 classes"):
        camlens.explain(seg, X, target=SegmentationRegion(5, output="out"), layer="head.1")
    with pytest.raises(ValueError, match="channels must be 'first', 'last' or None"):
        SegmentationRegion(0, channels="nhwc")


def test_a_target_with_one_score_for_the_whole_batch_is_refused(seg):
    with pytest.raises(ValueError, match=r"gives scores of shape \(\) for a batch of 2 samples.*one score per sample"):
        camlens.explain(seg, X, target=lambda out: out.sum(), output="out", layer="head.1")
    with pytest.raises(ValueError, match=r"shape \(2, 12, 16\) for a batch of 2"):
        camlens.explain(seg, X, target=lambda out: out[:, 0], output="out", layer="head.1")
