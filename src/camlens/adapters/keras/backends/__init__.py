"""One module per Keras backend, with the same names (see ``tensorflow.py``); :func:`load`
picks the one of the running backend, once per adapter."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["load", "SUPPORTED"]

SUPPORTED = ("tensorflow", "jax", "torch")


def load(backend: str) -> ModuleType:
    if backend not in SUPPORTED:
        raise NotImplementedError(
            f"the Keras {backend!r} backend is not supported; use tensorflow, jax or torch"
        )
    return importlib.import_module(f"{__name__}.{backend}")
