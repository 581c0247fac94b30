"""A stand-in for torchvision, for the camlens parity tests only. Not the real package.

Why it exists: pytorch-grad-cam (PyPI ``grad-cam``) imports torchvision when it is imported,
only for its image utilities (``torchvision.transforms`` in ``pytorch_grad_cam.utils.image``,
``torchvision.transforms.functional.resize`` in ``pytorch_grad_cam.sess``, and
``torchvision.ops.box_iou`` in the Faster R-CNN target). The CAM methods the parity tests compare
need none of them. PyPI's torchvision does not import beside torch 2.13.0, which the test
environment uses, so it is not installed there.

``tests/parity/test_parity_pytorch_grad_cam.py`` puts ``tests/stubs`` on ``sys.path`` only when
``import torchvision`` fails. Every name defined here raises ``NotImplementedError`` when
called, so nothing silently computes with a fake.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["ops", "transforms"]
__version__ = "0.0.0+camlens.stub"

IS_STUB = True


def _unavailable(name: str) -> NoReturn:
    raise NotImplementedError(
        f"{name}: this is camlens's torchvision stand-in (tests/stubs/torchvision), which only "
        "lets pytorch-grad-cam import; install a torchvision built for the installed torch to "
        "use it"
    )


def _stub_callable(qualname: str) -> Any:
    """A function named ``qualname`` that raises ``NotImplementedError`` when called."""

    def stub(*args: Any, **kwargs: Any) -> NoReturn:
        _unavailable(qualname)

    stub.__name__ = qualname.rsplit(".", 1)[-1]
    stub.__qualname__ = stub.__name__
    stub.__doc__ = f"Stand-in for ``{qualname}``; raises NotImplementedError."
    return stub


def _stub_class(qualname: str) -> type:
    """A class named ``qualname`` whose construction raises ``NotImplementedError``."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        _unavailable(qualname)

    name = qualname.rsplit(".", 1)[-1]
    return type(name, (), {
        "__init__": init,
        "__doc__": f"Stand-in for ``{qualname}``; constructing it raises NotImplementedError.",
        "__module__": qualname.rsplit(".", 1)[0],
    })


# Imported last: the submodules build their stand-ins with the helpers above.
from . import ops, transforms  # noqa: E402
