"""Real photos and ImageNet class names that work offline.

The photos come from packages that ship them inside their wheels (nothing is downloaded):
scikit-image's ``data`` module, scikit-learn's sample images and matplotlib's sample data.
The 1000 ImageNet-1k class names, in the standard index order, ship with camlens.
"""

from __future__ import annotations

import importlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

import numpy as np

__all__ = ["PHOTOS", "photo", "photos", "imagenet_classes", "top_k"]


def _packaged(module: str, pip_name: str, get: Callable[[Any], np.ndarray]) -> Callable[[], np.ndarray]:
    """A loader for a photo that ships inside ``module`` (installed as ``pip_name``)."""

    def load() -> np.ndarray:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ImportError(f"this photo comes from {pip_name}: pip install {pip_name}") from None
        return get(mod)

    return load


def _skimage(name: str) -> Callable[[], np.ndarray]:
    return _packaged("skimage.data", "scikit-image", lambda mod: getattr(mod, name)())


def _sklearn(file: str) -> Callable[[], np.ndarray]:
    return _packaged("sklearn.datasets", "scikit-learn", lambda mod: mod.load_sample_image(file))


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return np.asarray(img.convert("RGB"))


#: name -> (where it comes from, loader)
PHOTOS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "chelsea": ("scikit-image: a tabby cat", _skimage("chelsea")),
    "coffee": ("scikit-image: a cup of coffee", _skimage("coffee")),
    "astronaut": ("scikit-image: astronaut Eileen Collins", _skimage("astronaut")),
    "rocket": ("scikit-image: a rocket on its launch pad", _skimage("rocket")),
    "china": ("scikit-learn: a temple in China", _sklearn("china.jpg")),
    "flower": ("scikit-learn: a flower", _sklearn("flower.jpg")),
    "grace_hopper": ("matplotlib: Grace Hopper in uniform", _grace_hopper),
}


def photo(name: str) -> np.ndarray:
    """One bundled photo as uint8 RGB ``(H, W, 3)``."""
    if name not in PHOTOS:
        raise ValueError(f"no bundled photo {name!r}; there are {', '.join(PHOTOS)}")
    img = np.asarray(PHOTOS[name][1]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)


def photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Several bundled photos by name (default: all of them)."""
    return {n: photo(n) for n in (names or list(PHOTOS))}


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index ``k`` for class ``k``."""
    text = resources.files("camlens.data").joinpath("imagenet_classes.json").read_text("utf-8")
    names = json.loads(text)
    if len(names) != 1000:  # pragma: no cover - guards the shipped file
        raise RuntimeError(f"imagenet_classes.json holds {len(names)} names, not 1000")
    return tuple(names)


def top_k(logits: np.ndarray, k: int = 3) -> list[list[tuple[int, str, float]]]:
    """For each row of ImageNet logits, the ``k`` best classes as (index, name, probability)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 1:
        z = z[None]
    if z.shape[-1] != 1000:
        raise ValueError(f"expected 1000 ImageNet logits per row; got shape {z.shape}")
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    names = imagenet_classes()
    order = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    return [[(int(i), names[i], float(row[i])) for i in idx] for row, idx in zip(p, order)]
