"""The shared base of every CAM method: what a method receives and the registry of names.

A method is a small class over numpy arrays. The adapter has already run the model and
handed back, for one call site of one layer, the activations ``A`` and the gradients
``dS/dA`` of the score ``S`` of each sample, channels-last. A method turns them into a raw
map of shape ``(N, h, w)`` at the layer's resolution; normalisation and upsampling happen
later, in :mod:`camlens.explanation`, the same way for every method.

Shared notation in the method docstrings: ``A[n, i, j, c]`` activations, ``G[n, i, j, c]``
gradients of the score of sample ``n``, ``Z = h * w`` the number of spatial positions.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

__all__ = [
    "SiteData",
    "CAMMethod",
    "WeightedCAM",
    "register",
    "get_method",
    "available_methods",
]


@dataclass(frozen=True)
class SiteData:
    """What the model gave for one call site of one layer.

    activations:  ``(N, h, w, C)`` float array, channels-last.
    gradients:    ``(N, h, w, C)`` gradient of each sample's score with respect to the
                  activations, or ``None`` for methods that need none.
    head_weights: ``(N, C)`` for CAM only: for each sample, the weights of the Dense unit of
                  the explained class, the layer after global average pooling.
    images:       ``(N, H, W, c)`` for methods that run the model again (Score-CAM): the input
                  image each map belongs to, as the model takes it.
    score:        for those methods: ``score(n, batch)`` runs the model on ``batch``, modified
                  copies of sample ``n``'s image ``(B, H, W, c)``, and returns the target score
                  of sample ``n`` for each, ``(B,)`` (other model inputs held at sample ``n``).
    """

    activations: np.ndarray
    gradients: np.ndarray | None = None
    head_weights: np.ndarray | None = None
    images: np.ndarray | None = None
    score: Callable[[int, np.ndarray], np.ndarray] | None = None


class CAMMethod:
    """Base of all methods: ``method(data) -> (N, h, w)`` raw map, float32."""

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    needs_head_weights: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False

    def __call__(self, data: SiteData) -> np.ndarray:
        raise NotImplementedError

    def _checked(self, data: SiteData) -> tuple[np.ndarray, np.ndarray | None]:
        acts = np.asarray(data.activations, dtype=np.float32)
        if acts.ndim != 4:
            raise ValueError(
                f"{self.name}: activations must be (N, h, w, C); got shape {acts.shape}"
            )
        grads = None
        if self.needs_gradients:
            if data.gradients is None:
                raise ValueError(f"{self.name} needs gradients; none were given")
            grads = np.asarray(data.gradients, dtype=np.float32)
            if grads.shape != acts.shape:
                raise ValueError(
                    f"{self.name}: gradients {grads.shape} and activations {acts.shape} differ"
                )
        return acts, grads


class WeightedCAM(CAMMethod):
    """Methods of the form ``relu(sum_c w[n, c] * A[n, :, :, c])``: only the weights differ."""

    def weights(self, acts: np.ndarray, grads: np.ndarray | None, data: SiteData) -> np.ndarray:
        """Channel weights ``(N, C)``."""
        raise NotImplementedError

    def __call__(self, data: SiteData) -> np.ndarray:
        acts, grads = self._checked(data)
        w = self.weights(acts, grads, data).astype(np.float32)
        return np.maximum(np.einsum("nhwc,nc->nhw", acts, w), 0.0).astype(np.float32)


_REGISTRY: dict[str, type[CAMMethod]] = {}


def register(cls: type[CAMMethod]) -> type[CAMMethod]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _canonical(name: str) -> str:
    # Applied to both the query and the registered names, so "gradcam++" is reachable as
    # "Grad-CAM++", "gradcampp" and "gradcam_plusplus" alike.
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return key.replace("++", "pp").replace("plusplus", "pp")


def get_method(name: str | CAMMethod) -> CAMMethod:
    """The method registered as ``name`` ("gradcam", "Grad-CAM++" and "gradcam_pp" spellings
    are accepted), or ``name`` itself when it already is a method instance."""
    if isinstance(name, CAMMethod):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or a CAMMethod; got {type(name).__name__}")
    key = _canonical(name)
    for registered, cls in _REGISTRY.items():
        if _canonical(registered) == key:
            return cls()
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"no method {name!r}.{hint} Available: {', '.join(available_methods())}"
    )


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(_REGISTRY)
