"""Detectors: a target for one detected box (``camlens.targets.Detection``) on models that
return one dict per image, as torchvision's do, and cannot be traced (Python loops over images,
data-dependent selection). The map of each box equals a forward hook and autograd on the same
layer; the layer chosen without a graph is the backbone's, said with a warning."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import camlens  # noqa: E402
from camlens.targets import Detection, box_iou, parse_target  # noqa: E402


class TinyDetector(nn.Module):
    """One box per feature-map cell: a class score (sigmoid) and a box around the cell; per
    image the cells above a threshold, most confident first, as a dict like torchvision's."""

    def __init__(self, classes: int = 3, cell: int = 4, keep: int = 6) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        )
        self.cls_head = nn.Conv2d(8, classes, 1)
        self.box_head = nn.Conv2d(8, 4, 1)
        self.cell, self.keep = cell, keep

    def forward(self, x):
        feats = self.backbone.body(x)
        probs = self.cls_head(feats).sigmoid()
        deltas = self.box_head(feats)
        n, _, h, w = probs.shape
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() * self.cell + self.cell / 2
        results = []
        for i in range(n):
            best, labels = probs[i].flatten(1).max(dim=0)
            if float(best.max()) < 0:  # a data-dependent branch: nothing can trace it
                raise RuntimeError("unreachable")
            order = best.argsort(descending=True)[: self.keep]
            half = self.cell * deltas[i].flatten(1).t()[order].exp().clamp(max=4.0)
            c = centre[order]
            boxes = torch.cat([c - half[:, :2], c + half[:, 2:]], dim=1)
            results.append({"boxes": boxes, "labels": labels[order], "scores": best[order]})
        return results


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(5)
    return TinyDetector().eval()


X = torch.from_numpy(np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32))


def _by_hand(net, x, pick):
    """Grad-CAM at backbone.body by a hook and autograd, the score ``pick(outputs)`` (N,)."""
    seen = {}
    handle = net.backbone.body.register_forward_hook(lambda m, a, out: seen.setdefault("a", out))
    try:
        score = pick(net(x))
        (grad,) = torch.autograd.grad(score.sum(), seen["a"])
    finally:
        handle.remove()
    a, g = seen["a"].detach().permute(0, 2, 3, 1).numpy(), grad.permute(0, 2, 3, 1).numpy()
    return score.detach().numpy(), np.maximum(np.einsum("nijc,nc->nij", a, g.mean(axis=(1, 2))), 0)


def test_the_most_confident_box_of_each_image_and_the_backbone_layer(det):
    with pytest.warns(RuntimeWarning, match=r"last spatial layer of the backbone's body.*backbone\.body"):
        exp = camlens.explain(det, X, target=Detection(index=0))
    assert exp.sites[0].layer == "backbone.body"
    want_scores, want = _by_hand(det, X, lambda out: torch.stack([o["scores"][0] for o in out]))
    np.testing.assert_allclose(exp.scores, want_scores, rtol=1e-6)
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-7)
    assert all(np.ptp(m) > 0 for m in want)
    assert "detection #0" in exp.target


def test_one_map_per_box_of_one_image(det):
    x = X[:1].repeat(3, 1, 1, 1)
    exp = camlens.explain(det, x, target=Detection(index=[0, 1, 2]), layer="backbone.body")
    _, want = _by_hand(det, x, lambda out: torch.stack([o["scores"][k] for k, o in enumerate(out)]))
    np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-7)
    assert not np.array_equal(exp.raw_maps[0][0], exp.raw_maps[0][1])  # three boxes, three maps


def test_the_box_best_matching_a_given_box_and_class_with_its_regression(det):
    with torch.no_grad():
        found = det(X[:1])[0]
    j = 2
    label, ref = int(found["labels"][j]), found["boxes"][j].numpy() + np.array([0.5, -0.5, 0.5, 0.5])
    same = np.flatnonzero(found["labels"].numpy() == label)
    best = same[np.argmax(box_iou(found["boxes"].numpy()[same], ref)[:, 0])]
    for regression in (False, True):
        target = Detection(box=ref, label=label, regression=regression, iou=0.3)
        exp = camlens.explain(det, X[:1], target=target, layer="backbone.body")

        def pick(out, regression=regression):
            s = out[0]["scores"][best]
            if regression:
                b = out[0]["boxes"][best]
                r = torch.as_tensor(ref, dtype=b.dtype)
                inter = (torch.minimum(b[2], r[2]) - torch.maximum(b[0], r[0])).clamp(min=0) * (
                    torch.minimum(b[3], r[3]) - torch.maximum(b[1], r[1])).clamp(min=0)
                s = s + inter / ((b[2] - b[0]) * (b[3] - b[1]) + (r[2] - r[0]) * (r[3] - r[1]) - inter)
            return s[None]

        want_scores, want = _by_hand(det, X[:1], pick)
        np.testing.assert_allclose(exp.scores, want_scores, rtol=1e-5)
        np.testing.assert_allclose(exp.raw_maps[0], want, rtol=1e-4, atol=1e-7)


def test_eigencam_runs_on_a_detector_and_the_model_is_unchanged(det):
    before = {k: v.clone() for k, v in det.state_dict().items()}
    exp = camlens.explain(det, X, method="eigencam", target=Detection(index=0), layer="backbone.body")
    assert exp.raw_maps[0].shape == (2, 4, 4) and np.isfinite(exp.raw_maps[0]).all()
    assert not det.training and all(torch.equal(before[k], v) for k, v in det.state_dict().items())
    assert not det._forward_hooks and not det.backbone.body._forward_hooks


def test_detection_errors_name_the_value_and_the_fix(det):
    with pytest.raises(ValueError, match="exactly one of index=K"):
        Detection()
    with pytest.raises(ValueError, match="needs label=CLASS"):
        Detection(box=(0, 0, 4, 4))
    with pytest.raises(ValueError, match="regression=True needs box"):
        Detection(index=0, regression=True)
    with pytest.raises(ValueError, match=r"image 0 has 6 detection\(s\); there is no detection #9"):
        camlens.explain(det, X, target=Detection(index=9), layer="backbone.body")
    with pytest.raises(ValueError, match=r"overlaps box .* at IoU >= 0.5 \(the best: 0.000"):
        camlens.explain(det, X[:1], target=Detection(box=(100, 100, 110, 110), label=0), layer="backbone.body")
    with pytest.raises(ValueError, match="Detection reads one dict per image with keys"):
        camlens.explain(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten()).eval(), X, target=Detection(index=0),
                        layer="0")
    assert parse_target("box:1").index == 1


def test_the_explained_boxes_are_kept_and_drawn_on_the_overlay(det):
    x = X[:1].repeat(3, 1, 1, 1)
    exp = camlens.explain(det, x, target=Detection(index=[0, 1, 2]), layer="backbone.body", batch_size=2)
    with torch.no_grad():
        found = det(X[:1])[0]["boxes"].numpy()
    np.testing.assert_allclose(exp.boxes, found[:3], rtol=1e-6)  # per sample, across the two parts
    plain = exp.overlay(boxes=None)
    drawn = exp.overlay()
    assert drawn.shape == plain.shape == (3, 16, 16, 3)
    changed = np.any(drawn != plain, axis=-1)
    assert changed.any() and (drawn[changed] == 255).all()  # white outlines, nothing else touched
    big = exp.overlay(np.zeros((3, 32, 32, 3), np.uint8))  # a photo twice the input: boxes scaled
    b = np.clip(np.round(found[0] * 2), 0, 31).astype(int)
    assert (big[0, b[1], b[0]:b[2] + 1] == 255).all()


def test_draw_boxes_exact_pixels():
    from camlens.viz import draw_boxes

    img = np.zeros((6, 8, 3), np.uint8)
    out = draw_boxes(img, [[1, 1, 5, 4]], color=(255, 0, 0), width=1)
    mask = np.zeros((6, 8), bool)
    mask[1, 1:6] = mask[4, 1:6] = mask[1:5, 1] = mask[1:5, 5] = True
    assert (out[mask] == (255, 0, 0)).all() and (out[~mask] == 0).all() and (img == 0).all()
    assert (draw_boxes(img, np.zeros((0, 4))) == 0).all()
    with pytest.raises(ValueError, match="finite"):
        draw_boxes(img, [[0, 0, np.nan, 1]])


def test_per_sample_targets_follow_a_batch_run_in_parts():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(5, 3, 8, 8)
    whole = camlens.explain(net, x, target=[0, 1, 2, 0, 1])
    parts = camlens.explain(net, x, target=[0, 1, 2, 0, 1], batch_size=2)
    np.testing.assert_array_equal(parts.class_indices, [0, 1, 2, 0, 1])
    np.testing.assert_allclose(parts.raw_maps[0], whole.raw_maps[0], rtol=1e-5, atol=1e-7)


def test_the_default_class_target_on_a_detector_is_refused_not_read_from_box_coordinates(det):
    # output 0 is image 0's boxes (6, 4): read as (batch, classes) it would explain the largest
    # coordinate of each of 6 boxes as if they were 6 samples
    with pytest.raises(ValueError, match=r"output '0.boxes' has shape \(6, 4\), whose first axis is not the batch of 2.*Detection"):
        camlens.explain(det, X, layer="backbone.body")


def test_feature_maps_of_a_detector_need_no_target(det):
    fmaps = camlens.feature_maps(det, X[:1], layers=["backbone.body", "cls_head"])
    assert fmaps["backbone.body"].shape == (1, 4, 4, 8) and fmaps["cls_head"].shape == (1, 4, 4, 3)
