"""Import ``pytorch_grad_cam`` where torchvision cannot be imported (see README.md): the one
copy of that logic, loaded by file path by ``tests/parity`` and ``benchmarks/_common.py``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

STUBS = Path(__file__).resolve().parent


def import_grad_cam() -> tuple[Any, bool]:
    """``pytorch_grad_cam`` and whether the torchvision stand-in was needed.

    The real torchvision is tried first. Where it cannot be imported (not installed, or built
    for another torch: ImportError, RuntimeError or OSError), this directory goes on
    ``sys.path`` for the import of grad-cam and is taken off again; the stand-in raises if any
    of its names is called. Raises ImportError where grad-cam itself is missing.
    """
    try:
        importlib.import_module("torchvision")
        stub = False
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.path.insert(0, str(STUBS))
        importlib.invalidate_caches()
        stub = True
    try:
        if stub and not getattr(importlib.import_module("torchvision"), "IS_STUB", False):
            raise ImportError(f"expected the torchvision stand-in of {STUBS}")
        return importlib.import_module("pytorch_grad_cam"), stub
    finally:
        if stub:
            sys.path.remove(str(STUBS))
