"""keras-hub models, built from arguments with random weights (no preset download): their
composite layers (ViTEncoder, ViTEncoderBlock) are read layer by layer, so layer="auto" finds
the input of the last block's attention, as on any ViT; Grad-CAM equals one computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
import keras  # noqa: E402

import camlens  # noqa: E402
from camlens.adapters.keras import keras_to_numpy  # noqa: E402


def _vit(seed: int = 0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                                            num_heads=2, hidden_dim=32, mlp_dim=64)
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    rng = np.random.default_rng(seed)
    for w in model.weights:  # weights large enough that the maps are not flat
        w.assign(rng.normal(0.0, 0.3, tuple(w.shape)).astype(np.float32))
    return model


X = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)


def _ln(model) -> str:
    return f"{model.backbone.name}/vit_encoder/transformer_block_2/ln_1"


def test_keras_hub_vit_auto_is_the_last_attention_input():
    model = _vit()
    report = camlens.layers(model)
    assert report.chosen == [_ln(model)], report.reason
    assert "17x32 tokens = 1 extra + 4x4 patches" in report.reason
    assert f"the input of {model.backbone.name}/vit_encoder/transformer_block_2/mha (MultiHeadAttention)" in report.reason


def test_keras_hub_vit_gradcam_is_drawn_on_the_patch_grid_and_scores_are_the_models():
    model = _vit()
    LN = _ln(model)
    exp = camlens.explain(model, X, target=2)
    assert exp.sites[0].layer == LN and exp.sites[0].shape == (4, 4, 32)
    raw = exp.raw_maps[0]
    assert raw.shape == (2, 4, 4) and np.isfinite(raw).all() and all(np.ptp(m) > 0 for m in raw)
    np.testing.assert_allclose(exp.scores, keras_to_numpy(model(X))[:, 2], rtol=1e-5, atol=1e-6)
    # the same numbers when the layer is named, and the model's own weights left as they were
    before = [keras_to_numpy(w).copy() for w in model.weights]
    named = camlens.explain(model, X, target=2, layer=LN)
    np.testing.assert_allclose(named.raw_maps[0], raw, rtol=1e-6)
    assert all(np.array_equal(b, keras_to_numpy(w)) for b, w in zip(before, model.weights))


def test_keras_hub_deit_auto_sets_the_class_and_distillation_tokens_aside():
    """DeiT's encoder returns (hidden states, empty placeholders): the hidden states keep their
    one exact producer, so the blocks stay on every path; 2 + 16 tokens read on the 4x4 grid."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DeiTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2,
                                             hidden_dim=32, intermediate_dim=64)
    model = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    report = camlens.layers(model)
    assert report.chosen == [f"{backbone.name}/deit_encoder/transformer_block_2/ln_1"], report.reason
    assert "18x32 tokens = 2 extra + 4x4 patches" in report.reason
    exp = camlens.explain(model, X, target=1)
    assert exp.sites[0].shape == (4, 4, 32) and np.isfinite(exp.raw_maps[0]).all()
