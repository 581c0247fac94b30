"""camlens' element-wise Grad-CAM, KPCA-CAM, Deep Feature Factorization and the eigen and
augmentation smoothing against pytorch-grad-cam 1.5.7 on a small torch CNN.

Same model, input batch (two random images) and classes on both sides. As in
``test_parity_pytorch_grad_cam.py`` (whose ``_unit`` / ``_max_diff`` these tests reuse), both maps
are compared after relu and per-image min-max; here within ``TOL = 1e-4``, at the layer's
resolution (camlens' ``raw_maps`` against grad-cam's ``get_cam_image`` on the activations and
gradients grad-cam itself recorded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_parity_pytorch_grad_cam import _max_diff, _unit, pgc  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import camlens  # noqa: E402

TOL = 1e-4
LAYER = "relu2"
CLASSES = [1, 3]


class _Net(torch.nn.Module):
    """16x16x3 -> 8x8x16 at ``relu2`` -> GAP -> 5 logits."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Any) -> Any:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def net() -> Any:
    torch.manual_seed(0)
    return _Net().eval()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)


def grad_cam_layer_map(cam: Any, module: Any, x: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """grad-cam's per-layer map (before its relu and normalisation) of ``CLASSES``, from the
    activations and gradients it recorded itself."""
    xt = torch.from_numpy(x)
    targets = [ClassifierOutputTarget(k) for k in CLASSES]
    try:
        cam(input_tensor=xt, targets=targets, eigen_smooth=eigen_smooth)
        rec = cam.activations_and_grads
        acts = rec.activations[0].numpy()
        grads = rec.gradients[0].numpy() if rec.gradients else None
        return np.asarray(cam.get_cam_image(xt, module, targets, acts, grads, eigen_smooth))
    finally:
        cam.activations_and_grads.release()


def test_gradcamelementwise_parity(net: Any, x: np.ndarray) -> None:
    exp = camlens.explain(net, x, "gradcamelementwise", target=CLASSES, layer=LAYER)
    ref = grad_cam_layer_map(pgc.GradCAMElementWise(net, [net.relu2]), net.relu2, x)
    assert exp.raw_maps[0].shape == ref.shape == (2, 8, 8)
    assert _max_diff(exp.raw_maps[0], ref) < TOL
    # and it is not HiResCAM's map: the negative products matter on this model
    hires = grad_cam_layer_map(pgc.HiResCAM(net, [net.relu2]), net.relu2, x)
    assert _max_diff(exp.raw_maps[0], hires) > 100 * TOL


def test_kpcacam_parity_up_to_the_deliberate_sign(net: Any, x: np.ndarray) -> None:
    """grad-cam keeps scikit-learn's sign (largest-magnitude entry of the eigenvector positive);
    camlens orients the projection like Eigen-CAM. So camlens' map is grad-cam's signed
    projection oriented by camlens' rule."""
    from camlens.methods.eigencam import orient

    exp = camlens.explain(net, x, "kpcacam", target=CLASSES, layer=LAYER)
    ref = grad_cam_layer_map(pgc.KPCA_CAM(net, [net.relu2]), net.relu2, x)
    with torch.no_grad():
        a = net.relu2(net.conv2(net.relu1(net.conv1(torch.from_numpy(x))))).numpy()
    for n in range(2):
        flat = a[n].reshape(16, -1).T.astype(np.float64)
        oriented = orient(ref[n].ravel().astype(np.float64), flat).reshape(ref[n].shape)
        assert _max_diff(exp.raw_maps[0][n], oriented) < TOL


def test_kpcacam_sign_differs_deliberately() -> None:
    """Three positions at 2 and one at 0 (one channel): centred [.5, .5, .5, -1.5]. scikit-learn
    makes the largest-magnitude coordinate positive, so grad-cam's map lights the position
    where the layer is silent; camlens' lights the three where it responds."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_kernel

    from camlens.methods import KPCACAM, SiteData

    acts = np.array([2.0, 2.0, 2.0, 0.0], np.float32).reshape(1, 1, 2, 2)  # NCHW
    theirs = np.maximum(get_2d_projection_kernel(acts)[0], 0)
    ours = KPCACAM()(SiteData(acts.transpose(0, 2, 3, 1)))[0]
    assert theirs.ravel().argmax() == 3 and (theirs.ravel()[:3] == 0).all()
    assert ours.ravel()[3] == 0 and (ours.ravel()[:3] > 0).all()


@pytest.mark.parametrize("method", ["gradcam", "gradcamelementwise", "xgradcam", "hirescam", "layercam",
                                    "scorecam"])
def test_eigen_smooth_parity(net: Any, x: np.ndarray, method: str, monkeypatch: Any) -> None:
    """eigen_smooth=True on both sides: camlens' map is grad-cam's signed projection oriented by
    camlens' rule (grad-cam keeps the SVD's arbitrary sign). Not Grad-CAM++: its weights already
    differ by grad-cam's 1e-6 epsilon (see test_parity_pytorch_grad_cam.py); its eigen_smooth
    is the same code as Grad-CAM's and XGrad-CAM's (WeightedCAM). Score-CAM with grad-cam's
    mask upsampler set to half-pixel centres, camlens' (its one deliberate difference, see
    test_scorecam_parity_with_the_same_mask_upsampling)."""
    from camlens.methods import (GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
                                 ScoreCAM, XGradCAM)
    from camlens.methods.eigencam import orient
    from test_parity_pytorch_grad_cam import _half_pixel_upsampler

    if method == "scorecam":
        monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _half_pixel_upsampler)
    ours = {"gradcam": GradCAM, "gradcamelementwise": GradCAMElementWise, "gradcam++": GradCAMPlusPlus,
            "xgradcam": XGradCAM, "hirescam": HiResCAM, "layercam": LayerCAM, "scorecam": ScoreCAM}[method]
    theirs = {"gradcam": pgc.GradCAM, "gradcamelementwise": pgc.GradCAMElementWise,
              "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM, "hirescam": pgc.HiResCAM,
              "layercam": pgc.LayerCAM, "scorecam": pgc.ScoreCAM}[method]
    exp = camlens.explain(net, x, ours(eigen_smooth=True), target=CLASSES, layer=LAYER)
    ref = grad_cam_layer_map(theirs(net, [net.relu2]), net.relu2, x, eigen_smooth=True)
    plain = grad_cam_layer_map(theirs(net, [net.relu2]), net.relu2, x)  # the unsmoothed map
    for n in range(2):
        p = ref[n].ravel().astype(np.float64)
        # orient by the channel sum of what was decomposed, which is the unsmoothed map
        oriented = orient(p, plain[n].reshape(-1, 1).astype(np.float64)).reshape(ref[n].shape)
        assert _max_diff(exp.raw_maps[0][n], oriented) < TOL
    assert _max_diff(exp.raw_maps[0], np.maximum(plain, 0)) > 100 * TOL  # smoothing changed the map
    # and camlens' unsmoothed map is still grad-cam's plain one
    unsmoothed = camlens.explain(net, x, ours(), target=CLASSES, layer=LAYER)
    assert _max_diff(unsmoothed.raw_maps[0], np.maximum(plain, 0)) < TOL


def test_aug_smooth_parity(net: Any, x: np.ndarray) -> None:
    """``camlens.tta(flips=True, multiply=(0.9, 1.0, 1.1))`` against grad-cam's
    ``aug_smooth=True`` (ttach's flip x Multiply([0.9, 1, 1.1])): the mean of six min-max
    normalised, flipped-back maps at the input's size, compared as they are (no renormalising)."""
    targets = [ClassifierOutputTarget(k) for k in CLASSES]
    cam = pgc.GradCAM(net, [net.relu2])
    try:
        ref = cam(input_tensor=torch.from_numpy(x), targets=targets, aug_smooth=True)
    finally:
        cam.activations_and_grads.release()
    exp = camlens.tta(net, x, "gradcam", flips=True, multiply=(0.9, 1.0, 1.1), target=CLASSES, layer=LAYER)
    assert exp.maps[0].shape == ref.shape == (2, 16, 16)
    assert float(np.abs(exp.maps[0] - ref).max()) < TOL
    plain = camlens.explain(net, x, "gradcam", target=CLASSES, layer=LAYER)
    assert float(np.abs(plain.maps[0] - ref).max()) > 100 * TOL  # the smoothing is not a no-op here


def test_dff_parity_on_a_planted_factorization() -> None:
    """grad-cam's ``dff`` (scikit-learn's coordinate-descent NMF) and camlens' (multiplicative
    updates) cannot share an initialisation, so the maps are compared where NMF has one answer:
    activations that are exactly two concepts with disjoint supports. Both recover the same two
    concept maps (up to order and scale)."""
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

    from camlens.methods import DFF, SiteData

    rng = np.random.default_rng(0)
    s = np.zeros((64, 2))
    left = np.tile(np.arange(8) < 3, 8)
    s[left, 0] = rng.uniform(0.5, 2.0, left.sum())
    s[~left, 1] = rng.uniform(0.5, 2.0, (~left).sum())
    f = np.zeros((2, 16))
    f[0, :6] = rng.uniform(0.5, 2.0, 6)
    f[1, 6:] = rng.uniform(0.5, 2.0, 10)
    acts = (s @ f).reshape(1, 8, 8, 16)  # every channel reaches 0, so grad-cam's shift is 0 too
    _, theirs = dff(np.ascontiguousarray(acts.transpose(0, 3, 1, 2)), n_components=2)
    _, info = DFF(k=2).map_and_details(SiteData(acts))
    ours = info["concept_maps"][0]
    assert info["reconstruction_error"][0] < 1e-4
    theirs = theirs[0] / theirs[0].max(axis=(1, 2), keepdims=True)
    ours = ours / ours.max(axis=(1, 2), keepdims=True)
    best = min(np.abs(ours - theirs).max(), np.abs(ours - theirs[::-1]).max())
    assert best < 1e-3, best


def test_dff_reconstructs_a_cnn_layer_as_well_as_scikit_learn(net: Any, x: np.ndarray) -> None:
    """On the CNN's own activations (no planted answer) camlens' NMF fits the layer about as
    well as scikit-learn's, the solver grad-cam uses, with the same k."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    exp = camlens.explain(net, x, "dff", target=CLASSES, layer=LAYER)
    with torch.no_grad():
        a = net.relu2(net.conv2(net.relu1(net.conv1(torch.from_numpy(x))))).numpy()
    for n in range(2):
        v = a[n].reshape(16, -1).T.astype(np.float64)
        model = decomposition.NMF(n_components=5, init="random", random_state=0, max_iter=1000)
        w = model.fit_transform(v)
        reference = np.linalg.norm(v - w @ model.components_) / np.linalg.norm(v)
        assert exp.details[0]["reconstruction_error"][n] < 1.02 * reference
