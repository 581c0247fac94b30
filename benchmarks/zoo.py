"""Zoo conformance: camlens on many published architectures, with random weights.

For every model of :data:`SPECS` (torchvision, timm, Hugging Face ``transformers``,
``keras.applications``, keras-hub and Keras subclassed models written here), in a fresh
process with a memory cap and a timeout, one row:

* what ``layer="auto"`` picks (``camlens.layers(...).chosen``, and the site of
  ``camlens.explain``), and the layer pytorch-grad-cam's README (or, for Keras, the Keras
  Grad-CAM guide) recommends; whether they are the same tensor;
* Grad-CAM of camlens against pytorch-grad-cam at the recommended layer (torch models): the max
  abs difference of the two maps at input resolution, each scaled to [0, 1];
* which of a few methods run (gradcam, gradcam++, Score-CAM on 16 channels, eigencam, saliency);
* the time of one explain (the first call, which reads the graph, and a second one);
* a status: ``ok``, ``wrong layer``, ``grad-cam differs`` or ``error: <first line>``.

No weights are downloaded: every model is built from its constructor or config. The weights are
random, so the maps mean nothing; what is checked is that camlens runs, where it looks, and that
it computes what pytorch-grad-cam computes at the same layer.

    python benchmarks/zoo.py                         # the whole zoo (about 30 minutes, 2 cores)
    python benchmarks/zoo.py --smoke                 # tiny configs of each family, seconds each
    python benchmarks/zoo.py --only vit --family timm
    python benchmarks/zoo.py --markdown docs/zoo.md  # also write the table page

``KERAS_BACKEND`` picks the Keras backend (default here: ``torch``, so the zoo needs no
TensorFlow or JAX). A family whose library is not installed gives no rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
MEMORY_CAP = 12 << 30  # RLIMIT_AS of each model's process, bytes
METHODS = ["gradcam", "gradcam++", "scorecam", "eigencam", "saliency"]
TOL = 1e-2  # above this max abs difference from pytorch-grad-cam, the row says so


# --- what a builder returns -----------------------------------------------------------------


@dataclass
class Built:
    """A model ready to explain.

    ``peer`` is the recommended layer: a torch module object (its path is looked up) or a Keras
    layer name; ``peer_code`` says it the way the recommendation is written. ``reshape`` is the
    ``reshape_transform`` pytorch-grad-cam needs at that layer (token layers); ``logits`` turns
    the model's output into the ``(N, classes)`` tensor pytorch-grad-cam's targets read (Hugging
    Face models return a dataclass). ``kind``: "classifier", "detector", "segmenter".
    """

    model: Any
    framework: str  # "torch" or "keras"
    size: int
    peer: Any = None
    peer_code: str = ""
    reshape: Callable | None = None
    logits: Callable | None = None
    kind: str = "classifier"


@dataclass
class Spec:
    family: str
    name: str
    build: Callable[[], Built]
    smoke: bool = False  # a tiny config, run by --smoke (and not by the full run)
    needs: tuple[str, ...] = ()  # modules the family needs
    note: str = ""


# --- grad-cam's reshape transforms ------------------------------------------------------------
# pytorch-grad-cam documents vit_reshape_transform (drop the class token, (N, T, C) to
# (N, C, h, w)) and swinT_reshape_transform (tokens (N, h*w, C) to (N, C, h, w)); the same
# recipe with the model's number of leading tokens (class, distillation, registers), and for a
# channels-last (N, h, w, C) layer just the transpose.


def tokens_reshape(prefix: int, grid: int) -> Callable:
    def reshape(t: Any) -> Any:
        t = t[:, prefix:, :].reshape(t.size(0), grid, grid, t.size(2))
        return t.transpose(2, 3).transpose(1, 2)

    return reshape


def nhwc_reshape(t: Any) -> Any:
    return t.permute(0, 3, 1, 2)


def hf_logits(out: Any) -> Any:
    return out.logits


# --- torchvision ------------------------------------------------------------------------------


def _tv(name: str, peer: Callable, code: str, size: int = 224, reshape: Callable | None = None,
        **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, **kw).eval()
        return Built(model, "torch", size, peer(model), code, reshape)

    return build


def _tv_task(name: str, module: str, peer: Callable, code: str, kind: str, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import importlib

        ctor = getattr(importlib.import_module(f"torchvision.models.{module}"), name)
        extra = dict(kw)
        if kind == "detector":  # 224 px instead of 800 (CPU time), every box kept (a box to explain)
            extra.update(min_size=224, max_size=224)
            extra["box_score_thresh" if "rcnn" in name else "score_thresh"] = 0.0
        model = ctor(weights=None, weights_backbone=None, **extra).eval()
        logits = (lambda out: out["out"].sum(dim=(2, 3))) if kind == "segmenter" else None
        return Built(model, "torch", 224, peer(model), code, None, logits, kind)

    return build


TV = ("torch", "torchvision")
TORCHVISION = [
    Spec("torchvision", "resnet18", _tv("resnet18", lambda m: m.layer4[-1], "layer4[-1]"), needs=TV),
    Spec("torchvision", "resnet50", _tv("resnet50", lambda m: m.layer4[-1], "layer4[-1]"), needs=TV),
    Spec("torchvision", "vgg11", _tv("vgg11", lambda m: m.features[-1], "features[-1]"), needs=TV),
    Spec("torchvision", "vgg16", _tv("vgg16", lambda m: m.features[-1], "features[-1]"), needs=TV),
    Spec("torchvision", "densenet121", _tv("densenet121", lambda m: m.features[-1], "features[-1]"), needs=TV),
    Spec("torchvision", "mobilenet_v2", _tv("mobilenet_v2", lambda m: m.features[-1], "features[-1]"), needs=TV),
    Spec("torchvision", "mobilenet_v3_large",
         _tv("mobilenet_v3_large", lambda m: m.features[-1], "features[-1]"), needs=TV),
    Spec("torchvision", "efficientnet_b0", _tv("efficientnet_b0", lambda m: m.features[-1], "features[-1]*"), needs=TV),
    Spec("torchvision", "regnet_y_400mf", _tv("regnet_y_400mf", lambda m: m.trunk_output[-1], "trunk_output[-1]*"),
         needs=TV),
    Spec("torchvision", "convnext_tiny", _tv("convnext_tiny", lambda m: m.features[-1], "features[-1]*"), needs=TV),
    Spec("torchvision", "inception_v3",
         _tv("inception_v3", lambda m: m.Mixed_7c, "Mixed_7c*", 299, aux_logits=False, init_weights=True), needs=TV),
    Spec("torchvision", "googlenet",
         _tv("googlenet", lambda m: m.inception5b, "inception5b*", aux_logits=False, init_weights=True), needs=TV),
    Spec("torchvision", "mnasnet1_0", _tv("mnasnet1_0", lambda m: m.layers[-1], "layers[-1]"), needs=TV),
    Spec("torchvision", "shufflenet_v2_x1_0", _tv("shufflenet_v2_x1_0", lambda m: m.conv5, "conv5*"), needs=TV),
    Spec("torchvision", "squeezenet1_1", _tv("squeezenet1_1", lambda m: m.features[-1], "features[-1]*"), needs=TV),
    Spec("torchvision", "vit_b_16", _tv("vit_b_16", lambda m: m.encoder.layers[-1].ln_1, "encoder.layers[-1].ln_1*",
                                        reshape=tokens_reshape(1, 14)), needs=TV),
    Spec("torchvision", "swin_t", _tv("swin_t", lambda m: m.features[-1][-1].norm1, "features[-1][-1].norm1*",
                                      reshape=nhwc_reshape), needs=TV),
    Spec("torchvision", "fasterrcnn_resnet50_fpn",
         _tv_task("fasterrcnn_resnet50_fpn", "detection", lambda m: m.backbone.body.layer4[-1],
                  "backbone.body.layer4[-1]*", "detector"), needs=TV),
    Spec("torchvision", "retinanet_resnet50_fpn",
         _tv_task("retinanet_resnet50_fpn", "detection", lambda m: m.backbone.body.layer4[-1],
                  "backbone.body.layer4[-1]*", "detector"), needs=TV),
    Spec("torchvision", "deeplabv3_resnet50",
         _tv_task("deeplabv3_resnet50", "segmentation", lambda m: m.backbone.layer4, "backbone.layer4",
                  "segmenter", aux_loss=False), needs=TV),
    Spec("torchvision", "fcn_resnet50",
         _tv_task("fcn_resnet50", "segmentation", lambda m: m.backbone.layer4, "backbone.layer4",
                  "segmenter", aux_loss=False), needs=TV),
    Spec("torchvision", "resnet18 64px", _tv("resnet18", lambda m: m.layer4[-1], "layer4[-1]", 64),
         smoke=True, needs=TV),
]


# --- timm -------------------------------------------------------------------------------------


def _timm(name: str, peer: Callable, code: str, size: int = 224, reshape: Callable | None = None,
          **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import timm

        model = timm.create_model(name, pretrained=False, **kw).eval()
        return Built(model, "torch", size, peer(model), code, reshape)

    return build


TM = ("torch", "timm")
TIMM = [
    Spec("timm", "resnet50", _timm("resnet50", lambda m: m.layer4[-1], "layer4[-1]"), needs=TM),
    Spec("timm", "efficientnet_b0", _timm("efficientnet_b0", lambda m: m.bn2, "bn2*"), needs=TM),
    Spec("timm", "mobilenetv3_large_100", _timm("mobilenetv3_large_100", lambda m: m.blocks[-1], "blocks[-1]*"),
         needs=TM),
    Spec("timm", "convnext_tiny", _timm("convnext_tiny", lambda m: m.stages[-1], "stages[-1]*"), needs=TM),
    Spec("timm", "vit_small_patch16_224",
         _timm("vit_small_patch16_224", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1",
               reshape=tokens_reshape(1, 14)), needs=TM),
    Spec("timm", "deit_small_distilled_patch16_224",
         _timm("deit_small_distilled_patch16_224", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1",
               reshape=tokens_reshape(2, 14)), needs=TM),
    Spec("timm", "swin_tiny_patch4_window7_224",
         _timm("swin_tiny_patch4_window7_224", lambda m: m.layers[-1].blocks[-1].norm2,
               "layers[-1].blocks[-1].norm2", reshape=tokens_reshape(0, 7)), needs=TM),
    Spec("timm", "mixer_b16_224", _timm("mixer_b16_224", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1*",
                                        reshape=tokens_reshape(0, 14)), needs=TM),
    Spec("timm", "beit_base_patch16_224",
         _timm("beit_base_patch16_224", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1",
               reshape=tokens_reshape(1, 14)), needs=TM),
    Spec("timm", "vit_small_patch14_reg4_dinov2 224px",
         _timm("vit_small_patch14_reg4_dinov2", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1",
               reshape=tokens_reshape(5, 16), img_size=224), needs=TM,
         note="img_size=224 (default 518)"),
    Spec("timm", "resnet10t 64px", _timm("resnet10t", lambda m: m.layer4[-1], "layer4[-1]", 64), smoke=True,
         needs=TM),
    Spec("timm", "vit_tiny depth 2 32px",
         _timm("vit_tiny_patch16_224", lambda m: m.blocks[-1].norm1, "blocks[-1].norm1", 32,
               reshape=tokens_reshape(1, 2), img_size=32, depth=2), smoke=True, needs=TM),
]


# --- Hugging Face transformers -----------------------------------------------------------------


def _last_module(model: Any, suffix: str) -> Any:
    """The last submodule whose qualified name ends with ``suffix`` (names move between
    transformers releases: ``vit.encoder.layer`` became ``vit.layers``)."""
    found = [m for n, m in model.named_modules() if n.endswith(suffix)]
    if not found:
        raise LookupError(f"no module named *{suffix}")
    return found[-1]


def _hf(config: str, cls: str, suffix: str, code: str, size: int = 224, reshape: Callable | None = None,
        **cfg: Any) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        conf = getattr(transformers, config)(**cfg)
        model = getattr(transformers, cls)(conf).eval()
        return Built(model, "torch", size, _last_module(model, suffix), code, reshape, hf_logits)

    return build


HF = ("torch", "transformers")
TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                image_size=32, patch_size=8, num_labels=10)
HUGGINGFACE = [
    Spec("huggingface", "ViT", _hf("ViTConfig", "ViTForImageClassification", "layernorm_before",
                                   "layer[-1].layernorm_before*", reshape=tokens_reshape(1, 14)), needs=HF),
    Spec("huggingface", "DeiT (with teacher)",
         _hf("DeiTConfig", "DeiTForImageClassificationWithTeacher", "layernorm_before",
             "layer[-1].layernorm_before*", reshape=tokens_reshape(2, 14)), needs=HF),
    Spec("huggingface", "Swin", _hf("SwinConfig", "SwinForImageClassification", "layernorm_after",
                                    "layers[-1].blocks[-1].layernorm_after*", reshape=tokens_reshape(0, 7)),
         needs=HF),
    Spec("huggingface", "ResNet", _hf("ResNetConfig", "ResNetForImageClassification", "stages.3.layers.2",
                                      "encoder.stages[-1].layers[-1]"), needs=HF),
    Spec("huggingface", "ConvNeXt", _hf("ConvNextConfig", "ConvNextForImageClassification", "stages.3.layers.2",
                                        "encoder.stages[-1].layers[-1]*"), needs=HF),
    Spec("huggingface", "BEiT", _hf("BeitConfig", "BeitForImageClassification", "layernorm_before",
                                    "layer[-1].layernorm_before*", reshape=tokens_reshape(1, 14)), needs=HF),
    Spec("huggingface", "Dinov2", _hf("Dinov2Config", "Dinov2ForImageClassification", "norm1",
                                      "layer[-1].norm1*", reshape=tokens_reshape(1, 16)), needs=HF),
    Spec("huggingface", "Dinov2 with registers",
         _hf("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification", "norm1",
             "layer[-1].norm1*", reshape=tokens_reshape(5, 14)), needs=HF),  # patch 16: 14x14
    Spec("huggingface", "ViT tiny config", _hf("ViTConfig", "ViTForImageClassification", "layernorm_before",
                                               "layer[-1].layernorm_before*", 32, tokens_reshape(1, 4),
                                               **TINY_VIT), smoke=True, needs=HF),
    Spec("huggingface", "ResNet tiny config",
         _hf("ResNetConfig", "ResNetForImageClassification", "stages.1.layers.0", "encoder.stages[-1].layers[-1]",
             64, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10),
         smoke=True, needs=HF),
]


# --- keras.applications -----------------------------------------------------------------------


def _ka(name: str, peer: str, size: int = 224, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import keras

        model = getattr(keras.applications, name)(weights=None, **kw)
        return Built(model, "keras", size, peer, peer)

    return build


KA = ("keras",)
KERAS_APPS = [
    Spec("keras.applications", "ResNet50", _ka("ResNet50", "conv5_block3_out"), needs=KA),
    Spec("keras.applications", "VGG16", _ka("VGG16", "block5_conv3"), needs=KA),
    Spec("keras.applications", "InceptionV3", _ka("InceptionV3", "mixed10", 299), needs=KA),
    Spec("keras.applications", "MobileNetV2", _ka("MobileNetV2", "out_relu"), needs=KA),
    Spec("keras.applications", "EfficientNetB0", _ka("EfficientNetB0", "top_activation"), needs=KA),
    Spec("keras.applications", "DenseNet121", _ka("DenseNet121", "relu"), needs=KA),
    Spec("keras.applications", "ConvNeXtTiny",
         _ka("ConvNeXtTiny", "convnext_tiny_stage_3_block_2_identity"), needs=KA),
    Spec("keras.applications", "Xception", _ka("Xception", "block14_sepconv2_act", 299), needs=KA),
    Spec("keras.applications", "MobileNetV2 a0.35 96px",
         _ka("MobileNetV2", "out_relu", 96, alpha=0.35, input_shape=(96, 96, 3), classes=10), smoke=True, needs=KA),
]


# --- keras-hub ----------------------------------------------------------------------------------


def _khub_resnet(size: int, filters: list[int], blocks: list[int]) -> Callable[[], Built]:
    def build() -> Built:
        import keras_hub

        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=filters,
            stackwise_num_blocks=blocks, stackwise_num_strides=[1] + [2] * (len(filters) - 1),
            block_type="bottleneck_block", image_shape=(size, size, 3))
        model = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=1000)
        return Built(model, "keras", size, _khub_last(model, "_out"), "last stack output*")

    return build


def _khub_last(model: Any, suffix: str) -> str:
    """The path (as camlens names Keras layers: ``outer/inner``) of the backbone's last layer
    whose name ends with ``suffix``."""
    backbone = model.backbone
    names = [lyr.name for lyr in backbone.layers if lyr.name.endswith(suffix)]
    return f"{backbone.name}/{names[-1]}" if names else ""


def _khub_vit(cls: str, size: int, layers: int, hidden: int, **kw: Any) -> Callable[[], Built]:
    def build() -> Built:
        import keras_hub

        backbone = getattr(keras_hub.models, cls + "Backbone")(
            image_shape=(size, size, 3), patch_size=16, num_layers=layers, num_heads=3,
            hidden_dim=hidden, **kw)
        model = getattr(keras_hub.models, cls + "ImageClassifier")(backbone=backbone, num_classes=1000)
        # the encoder blocks (and their layer norms) live inside one ViTEncoder layer, no node
        return Built(model, "keras", size, "", "inside the encoder layer (no graph node)")

    return build


KH = ("keras", "keras_hub")
KERAS_HUB = [
    Spec("keras-hub", "ResNet50 (from arguments)", _khub_resnet(224, [64, 128, 256, 512], [3, 4, 6, 3]), needs=KH),
    Spec("keras-hub", "ViT-S/16 (from arguments)", _khub_vit("ViT", 224, 12, 384, mlp_dim=1536), needs=KH),
    Spec("keras-hub", "DeiT-S/16 (from arguments)", _khub_vit("DeiT", 224, 12, 384, intermediate_dim=1536),
         needs=KH),
    Spec("keras-hub", "ResNet tiny 64px", _khub_resnet(64, [64, 128], [1, 1]), smoke=True, needs=KH),
    Spec("keras-hub", "ViT tiny 32px", _khub_vit("ViT", 32, 2, 48, mlp_dim=96), smoke=True, needs=KH),
]


# --- Keras subclassed models, written here ------------------------------------------------------


def _subclassed(which: str) -> Callable[[], Built]:
    def build() -> Built:
        import keras
        from keras import layers

        class SmallCNN(keras.Model):
            """conv, conv, pool, dense: the layers are attributes, call() wires them."""

            def __init__(self) -> None:
                super().__init__()
                self.c1 = layers.Conv2D(16, 3, strides=2, activation="relu", name="c1")
                self.c2 = layers.Conv2D(32, 3, strides=2, activation="relu", name="c2")
                self.pool = layers.GlobalAveragePooling2D()
                self.head = layers.Dense(10, name="head")

            def call(self, x):
                return self.head(self.pool(self.c2(self.c1(x))))

        class Residual(keras.Model):
            """A stem and two residual blocks, the blocks a subclassed Layer."""

            def __init__(self) -> None:
                super().__init__()
                self.stem = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")
                self.b1 = Block(16, name="block1")
                self.b2 = Block(16, name="block2")
                self.pool = layers.GlobalAveragePooling2D()
                self.head = layers.Dense(10, name="head")

            def call(self, x):
                return self.head(self.pool(self.b2(self.b1(self.stem(x)))))

        class Block(layers.Layer):
            def __init__(self, c: int, **kw: Any) -> None:
                super().__init__(**kw)
                self.conv = layers.Conv2D(c, 3, padding="same", activation="relu")
                self.conv2 = layers.Conv2D(c, 3, padding="same")

            def call(self, x):
                return keras.activations.relu(x + self.conv2(self.conv(x)))

        class FunctionalInside(keras.Model):
            """A subclassed model whose call() runs a Functional backbone built in __init__."""

            def __init__(self) -> None:
                super().__init__()
                inp = keras.Input((64, 64, 3))
                y = layers.Conv2D(16, 3, strides=2, activation="relu", name="f1")(inp)
                y = layers.Conv2D(32, 3, strides=2, activation="relu", name="f2")(y)
                self.backbone = keras.Model(inp, y, name="backbone")
                self.pool = layers.GlobalAveragePooling2D()
                self.head = layers.Dense(10, name="head")

            def call(self, x):
                return self.head(self.pool(self.backbone(x)))

        model, peer = {"cnn": (SmallCNN, "c2"), "residual": (Residual, "block2"),
                       "functional inside": (FunctionalInside, "backbone/f2")}[which]
        m = model()
        m(np.zeros((1, 64, 64, 3), np.float32))  # build
        return Built(m, "keras", 64, peer, peer + " (last conv)")

    return build


KERAS_SUBCLASSED = [
    Spec("keras subclassed", name, _subclassed(name), smoke=smoke, needs=KA)
    for name, smoke in [("cnn", True), ("residual", True), ("functional inside", True)]
]

SPECS: list[Spec] = TORCHVISION + TIMM + HUGGINGFACE + KERAS_APPS + KERAS_HUB + KERAS_SUBCLASSED
FAMILIES = ["torchvision", "timm", "huggingface", "keras.applications", "keras-hub", "keras subclassed"]
# the subclassed models are tiny: the full run has them too
FULL_TOO = {"keras subclassed"}


def selected(smoke: bool, only: str | None = None, family: str | None = None) -> list[Spec]:
    out = []
    for s in SPECS:
        if smoke != s.smoke and s.family not in FULL_TOO:
            continue
        if only and only.lower() not in s.name.lower():
            continue
        if family and family.lower() not in s.family.lower():
            continue
        out.append(s)
    return out


# --- one model, in its own process ---------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def smooth_image(size: int, channels_first: bool) -> np.ndarray:
    """A fixed image of a few Gaussian blobs plus a little noise, standardised."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3), np.float32)
    for _ in range(4):
        cy, cx, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None] * rng.uniform(0.3, 1, 3)
    img += 0.05 * rng.standard_normal(img.shape).astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    x = img[None].astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    a = a - a.min()
    return a / a.max() if a.max() > 0 else a


def torch_path(model: Any, module: Any) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LookupError("the recommended module is not a submodule of the model")


def task_target(built: Built, k: int) -> Any:
    """What a row explains: class ``k`` for classifiers, the class-``k`` region of a
    segmenter's ``out``, the most confident box of a detector."""
    from camlens.targets import Detection, SegmentationRegion

    if built.kind == "detector":
        return Detection(index=0)
    if built.kind == "segmenter":
        return SegmentationRegion(k, output="out")
    return k


def top_class(built: Built, x: Any) -> int:
    if built.kind == "detector":
        return 0
    if built.framework == "torch":
        import torch

        with torch.no_grad():
            out = built.model(x)
        out = built.logits(out) if built.logits else out
        return int(out.reshape(out.shape[0], -1)[0].argmax())
    return int(np.asarray(built.model(x))[0].argmax())


def grad_cam_map(built: Built, x: Any, k: int) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM of class ``k`` at the recommended layer, (H, W) in [0, 1]."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = built.model
    if built.logits is not None:
        class Logits(torch.nn.Module):  # grad-cam's Hugging Face tutorial wraps the model alike
            def __init__(self, inner: Any, fn: Callable) -> None:
                super().__init__()
                self.inner, self.fn = inner, fn

            def forward(self, t: Any) -> Any:
                return self.fn(self.inner(t))

        model = Logits(model, built.logits)
    with GradCAM(model=model, target_layers=[built.peer], reshape_transform=built.reshape) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]


def method_instance(name: str) -> Any:
    if name == "scorecam":  # Score-CAM's code path on the 16 channels of largest variance
        from camlens.methods.scorecam import FastScoreCAM

        return FastScoreCAM(k=16, batch_size=4)
    return name


def run_model(spec: Spec) -> dict[str, Any]:
    import camlens

    row: dict[str, Any] = {"family": spec.family, "model": spec.name, "note": spec.note}
    t0 = time.perf_counter()
    built = spec.build()
    row["build_s"] = round(time.perf_counter() - t0, 2)
    row["kind"] = built.kind
    torch_model = built.framework == "torch"
    x = smooth_image(built.size, channels_first=torch_model)
    if torch_model:
        import torch

        torch.manual_seed(0)
        x = torch.from_numpy(x)
        row["params_m"] = round(sum(p.numel() for p in built.model.parameters()) / 1e6, 1)
    else:
        row["params_m"] = round(built.model.count_params() / 1e6, 1)
    try:
        k = top_class(built, x)
    except Exception as exc:  # noqa: BLE001 - the row says what happened
        k = 0
        row["forward_error"] = first_line(exc)
    row["target"] = k
    # camlens reads token grids from the model (the patch embedding upstream): none is given
    tg: dict[str, Any] = {}
    target = task_target(built, k)

    # what layer="auto" picks
    try:
        rep = camlens.layers(model=built.model, input_shape=tuple(x.shape) if torch_model else None, **tg)
        row["chosen"] = ", ".join(rep.chosen)
        row["why"] = rep.reason
    except Exception as exc:  # noqa: BLE001
        row["chosen"], row["why"] = "", "layers() raised " + first_line(exc)

    # the recommended layer, as camlens names it
    if torch_model and built.peer is not None:
        row["peer"] = torch_path(built.model, built.peer)
    else:
        row["peer"] = built.peer or ""
    if not row["peer"] and spec.family == "keras-hub" and row["chosen"]:
        row["peer"] = ""  # no fixed name to compare to: the table shows what auto picks
    row["peer_code"] = built.peer_code

    # one explain at auto, timed, then again
    auto = None
    try:
        t0 = time.perf_counter()
        auto = camlens.explain(built.model, x, target=target, **tg)
        row["first_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        camlens.explain(built.model, x, target=target, **tg)
        row["again_s"] = round(time.perf_counter() - t0, 3)
        row["auto"] = auto.sites[0].label if hasattr(auto.sites[0], "label") else auto.sites[0].layer
        row["auto_map"] = list(auto.raw_maps[0].shape[1:])
        row["auto_constant"] = bool(np.ptp(auto.raw_maps[0]) == 0)
    except Exception as exc:  # noqa: BLE001
        row["auto_error"] = first_line(exc)
        row["auto_trace"] = traceback.format_exc()[-2000:]

    # camlens at the recommended layer: the same tensor as auto's?
    at_peer = None
    if row["peer"]:
        try:
            at_peer = camlens.explain(built.model, x, target=target, layer=row["peer"], **tg)
            s = at_peer.sites[0]
            row["peer_site"] = s.label if hasattr(s, "label") else s.layer
        except Exception as exc:  # noqa: BLE001
            row["peer_error"] = first_line(exc)
    if auto is not None and at_peer is not None:
        if row["auto"] == row["peer_site"]:
            row["agree"] = "yes"
        else:
            row["agree"] = "no"
            try:
                fm = camlens.feature_maps(built.model, x, [row["auto"], row["peer_site"]])
                a, b = fm.activations
                if a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6):
                    row["agree"] = "same tensor"
            except Exception:  # noqa: BLE001 - token layers: compare the maps instead
                if (auto.raw_maps[0].shape == at_peer.raw_maps[0].shape and np.ptp(auto.raw_maps[0]) > 0
                        and np.allclose(auto.raw_maps[0], at_peer.raw_maps[0], rtol=1e-5, atol=1e-7)):
                    row["agree"] = "same map"

    # pytorch-grad-cam at the recommended layer
    if torch_model and at_peer is not None and built.kind == "classifier":
        try:
            theirs = grad_cam_map(built, x, k)
            ours = at_peer.maps[0][0]
            if theirs.shape != ours.shape:
                row["gradcam_diff"] = f"shape {ours.shape} vs {theirs.shape}"
            else:
                row["gradcam_diff"] = float(np.abs(unit(ours) - unit(theirs)).max())
                row["gradcam_constant"] = bool(np.ptp(theirs) == 0 and np.ptp(ours) == 0)
        except Exception as exc:  # noqa: BLE001
            row["gradcam_error"] = first_line(exc)

    # which methods run (at auto's layer, else at the recommended one)
    layer = "auto" if auto is not None else (row["peer"] if at_peer is not None else None)
    methods: dict[str, str] = {}
    for name in METHODS:
        if layer is None and name != "saliency":
            methods[name] = "skipped: no layer"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                camlens.explain(built.model, x, method=method_instance(name), target=target,
                                **({} if name == "saliency" else {"layer": layer, **tg}))
            methods[name] = "ok"
        except Exception as exc:  # noqa: BLE001
            methods[name] = first_line(exc)
    row["methods"] = methods
    row["methods_layer"] = layer
    row["status"] = status(row)
    return row


#: rows where camlens takes another layer than the recommended one on purpose, and why (read
#: against the row's maps: each reason is checked in docs/zoo.md's notes)
_FINAL_POOLED = "the final norm, whose every token (or position) the head averages, so every patch has a gradient there"
DELIBERATE = {
    ("torchvision", "squeezenet1_1"): "the class maps (13x13x1000, after their ReLU) that SqueezeNet's head only "
                                      "averages: the map there is each class's own activation map (CAM)",
    ("torchvision", "swin_t"): "`permute`: the final norm's (N, 7, 7, 768) map turned channels-first, which the "
                               "head averages; the recommended layer sits inside the last block, before its attention",
    ("timm", "swin_tiny_patch4_window7_224"): _FINAL_POOLED + " ((N, 7, 7, 768), channels-last)",
    ("timm", "mixer_b16_224"): _FINAL_POOLED,
    ("timm", "beit_base_patch16_224"): "the last block's patch tokens, which the head averages (after fc_norm)",
    ("huggingface", "Swin"): _FINAL_POOLED,
    ("torchvision", "deeplabv3_resnet50"): "the head's last hidden map: the 1x1 convolution after it gives the "
                                           "class logits, only upsampled to the output (their map is the target itself)",
    ("torchvision", "fcn_resnet50"): "the head's last hidden map: the 1x1 convolution after it gives the class "
                                     "logits, only upsampled to the output (their map is the target itself)",
    ("keras.applications", "ConvNeXtTiny"): "`add_17`, the last block's output (its residual sum); the recommended "
                                            "`..._identity` is the block's drop-path identity before that sum",
}
#: rows where pytorch-grad-cam is the one that is off, and why
PEER_OFF = {
    ("torchvision", "densenet121"): "torchvision's DenseNet applies an in-place ReLU to norm5's output, so the "
                                    "activations pytorch-grad-cam keeps at norm5 are overwritten after the ReLU",
}


def status(row: dict[str, Any]) -> str:
    if "auto_error" in row:
        return "error: " + row["auto_error"]
    key = (row.get("family"), row.get("model"))
    if row.get("agree") == "no":
        return "deliberate" if key in DELIBERATE else "wrong layer"
    if "peer_error" in row:
        return "error at recommended layer: " + row["peer_error"]
    diff = row.get("gradcam_diff")
    if isinstance(diff, str) or (isinstance(diff, float) and diff > TOL):
        return "grad-cam off" if key in PEER_OFF else "grad-cam differs"
    if "gradcam_error" in row:
        return "grad-cam failed"
    return "ok"


def worker(name: str, smoke: bool) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    except (ValueError, OSError):
        pass
    warnings.simplefilter("ignore")
    family, _, name = name.rpartition("::")
    spec = next(s for s in SPECS if s.name == name and (not family or s.family == family)
                and (s.smoke == smoke or s.family in FULL_TOO))
    try:
        row = run_model(spec)
    except BaseException as exc:  # noqa: BLE001 - building the model failed
        row = {"family": spec.family, "model": spec.name, "status": "error: " + first_line(exc),
               "build_error": first_line(exc), "auto_trace": traceback.format_exc()[-2000:]}
    print("RESULT " + json.dumps(row, default=str), flush=True)


def run_child(spec: Spec, smoke: bool, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "torch")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{spec.family}::{spec.name}"] + (["--smoke"] if smoke else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"family": spec.family, "model": spec.name, "status": f"error: timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT "):])
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            return row
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    last = tail[-1] if tail else ""
    why = "out of memory (cap)" if "MemoryError" in proc.stderr or proc.returncode in (-9, 137) else last
    return {"family": spec.family, "model": spec.name,
            "status": f"error: process exited {proc.returncode}: {why}"[:300]}


# --- the table -------------------------------------------------------------------------------------


def methods_cell(row: dict[str, Any]) -> str:
    m = row.get("methods")
    if not m:
        return ""
    ok = [k for k, v in m.items() if v == "ok"]
    bad = [k for k, v in m.items() if v != "ok"]
    return f"{len(ok)}/{len(m)}" + (" (no " + ", ".join(bad) + ")" if bad else "")


def diff_cell(row: dict[str, Any]) -> str:
    d = row.get("gradcam_diff")
    if d is None:
        return "failed" if "gradcam_error" in row else ""
    if isinstance(d, str):
        return d
    return f"{d:.0e}" + (" (both 0)" if row.get("gradcam_constant") else "")


COLUMNS = ["family", "model", "auto layer", "recommended", "agree", "vs grad-cam", "methods", "time s",
           "status"]


def cells(row: dict[str, Any]) -> list[str]:
    t = f"{row['first_s']:.2f} / {row['again_s']:.2f}" if "again_s" in row else ""
    peer = row.get("peer", "")
    code = row.get("peer_code", "")
    rec = f"{peer} ({code})" if code and code.rstrip("*") not in peer else (peer or code)
    return [row["family"], row["model"], row.get("auto", row.get("chosen", "")), rec, row.get("agree", ""),
            diff_cell(row), methods_cell(row), t, row.get("status", "")]


def text_table(rows: list[dict[str, Any]]) -> str:
    body = [COLUMNS] + [cells(r) for r in rows]
    widths = [min(max(len(r[i]) for r in body), 60) for i in range(len(COLUMNS))]
    lines = []
    for n, r in enumerate(body):
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        c = cells(r)
        c[2] = f"`{c[2]}`" if c[2] else ""
        lines.append("| " + " | ".join(md_escape(x) for x in c) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    kinds: dict[str, int] = {}
    for r in rows:
        k = r.get("status", "")
        k = "error" if k.startswith("error") else k
        kinds[k] = kinds.get(k, 0) + 1
    fams = sorted({r["family"] for r in rows}, key=lambda f: FAMILIES.index(f) if f in FAMILIES else 99)
    per = ", ".join(f"{f} {sum(1 for r in rows if r['family'] == f)}" for f in fams)
    return (f"{len(rows)} models ({per}): "
            + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))


def details(rows: list[dict[str, Any]]) -> str:
    """Every row that is not plainly ok: the messages in full (first lines)."""
    out = []
    for r in rows:
        bits = []
        for key in ("build_error", "forward_error", "auto_error", "peer_error", "gradcam_error"):
            if key in r:
                bits.append(f"{key.replace('_', ' ')}: {r[key]}")
        if r.get("agree") == "no":
            bits.append(f"auto picks `{r.get('auto')}`, recommended `{r.get('peer_site', r.get('peer'))}`")
        if r.get("note"):
            bits.append(f"why ({r['status']}): {r['note']}")
        if r.get("status", "").startswith("error") and not bits:
            bits.append(r["status"])
        for m, v in (r.get("methods") or {}).items():
            if v != "ok":
                bits.append(f"{m}: {v}")
        if "why" in r and (bits or r.get("kind") != "classifier"):
            bits.append(f"auto's reason: {r['why']}")
        if bits:
            out.append(f"- **{r['family']} / {r['model']}**\n" + "\n".join(f"  - {md_escape(b)}" for b in bits))
    return "\n".join(out)


def versions() -> str:
    import importlib.metadata as md

    parts = [f"Python {platform.python_version()}"]
    for pkg in ["torch", "torchvision", "timm", "transformers", "keras", "keras-hub", "grad-cam", "numpy"]:
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(parts) + f"; KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'torch')}"


def installed(spec: Spec) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in spec.needs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="models whose name contains this (case-insensitive)")
    ap.add_argument("--family", help="families whose name contains this")
    ap.add_argument("--smoke", action="store_true", help="tiny configs of each family, seconds each")
    ap.add_argument("--markdown", type=Path, help="write the results page (the table between markers)")
    ap.add_argument("--json", type=Path, help="write every row as JSON")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per model (default %(default)s)")
    ap.add_argument("--reuse", type=Path, help="a --json file of an earlier run: its rows are kept, "
                    "except those that timed out or whose process died, which run again")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.smoke)
        return 0
    os.environ.setdefault("KERAS_BACKEND", "torch")
    specs = selected(args.smoke, args.only, args.family)
    earlier = {}
    if args.reuse:
        earlier = {(r["family"], r["model"]): r for r in json.loads(args.reuse.read_text())
                   if not r.get("status", "").startswith(("error: timeout", "error: process exited"))}
    rows = []
    for spec in specs:
        if not installed(spec):
            print(f"skip {spec.family} / {spec.name}: {', '.join(spec.needs)} not all installed", flush=True)
            continue
        row = earlier.get((spec.family, spec.name)) or run_child(spec, args.smoke, args.timeout)
        if "agree" in row or "auto_error" in row:
            row["status"] = status(row)  # the notes above may have changed since a reused row ran
        why = DELIBERATE.get((spec.family, spec.name)) or PEER_OFF.get((spec.family, spec.name))
        if why and row["status"] in ("deliberate", "grad-cam off"):
            row["note"] = why
        rows.append(row)
        print(f"[{len(rows)}/{len(specs)}] {row['family']} / {row['model']}: {row.get('status')}", flush=True)
    print()
    print(text_table(rows))
    print()
    print(summary(rows))
    print(versions())
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    if args.markdown:
        write_markdown(args.markdown, rows)
    return 0


BEGIN, END = "<!-- zoo table: begin -->", "<!-- zoo table: end -->"


def write_markdown(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the hand-written
    text around it; a new file gets the markers only."""
    generated = "\n\n".join([
        BEGIN,
        f"Generated by `python benchmarks/zoo.py --markdown {path}` on {datetime.date.today()} "
        f"({versions()}; {os.cpu_count()} CPU cores).",
        "**Summary:** " + summary(rows),
        markdown_table(rows),
        "### Messages of the rows that are not plainly ok\n\n" + (details(rows) or "none"),
        END,
    ])
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = (old.rstrip() + "\n\n" if old else "# Model zoo conformance\n\n") + generated + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
