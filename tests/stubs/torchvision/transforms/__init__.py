"""Stand-in for ``torchvision.transforms``: the three classes pytorch-grad-cam imports
(``pytorch_grad_cam.utils.image``). Constructing any of them raises ``NotImplementedError``.
See ``tests/stubs/torchvision/__init__.py`` for why this package exists."""

from .. import _stub_class
from . import functional

__all__ = ["Compose", "Normalize", "ToTensor", "functional"]

Compose = _stub_class("torchvision.transforms.Compose")
Normalize = _stub_class("torchvision.transforms.Normalize")
ToTensor = _stub_class("torchvision.transforms.ToTensor")
