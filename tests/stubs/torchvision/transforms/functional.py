"""Stand-in for ``torchvision.transforms.functional``: ``resize``, which pytorch-grad-cam
imports in ``pytorch_grad_cam.sess``. Calling it raises ``NotImplementedError``.
See ``tests/stubs/torchvision/__init__.py`` for why this package exists."""

from .. import _stub_callable

__all__ = ["resize"]

resize = _stub_callable("torchvision.transforms.functional.resize")
