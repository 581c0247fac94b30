"""Stand-in for ``torchvision.ops``: ``box_iou``, which pytorch-grad-cam's
``FasterRCNNBoxScoreTarget`` reads as ``torchvision.ops.box_iou`` when it is called (not at
import time; defined so that the failure says what is missing instead of an AttributeError).
Calling it raises ``NotImplementedError``.
See ``tests/stubs/torchvision/__init__.py`` for why this package exists."""

from . import _stub_callable

__all__ = ["box_iou"]

box_iou = _stub_callable("torchvision.ops.box_iou")
