"""Reading images and model files, with errors that say what is wrong with which file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImageError", "load_image", "load_model", "PREPROCESSING"]


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


#: how pixel values (0..255) are turned into model inputs
PREPROCESSING = {
    "none": lambda x: x,  # 0..255 floats, as keras.utils.img_to_array gives them
    "unit": lambda x: x / 255.0,
    "symmetric": lambda x: x / 127.5 - 1.0,
}


def load_image(
    path: str | os.PathLike[str],
    size: tuple[int | None, int | None] | None = None,
    channels: int = 3,
) -> np.ndarray:
    """Read an image file as float32 ``(H, W, channels)`` with values 0..255.

    RGBA and palette images are composited or converted to RGB, grayscale is repeated to RGB
    (or RGB converted to gray for ``channels=1``), 16-bit images are scaled to 0..255, and the
    image is resized to ``size`` = (height, width) when given.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    try:
        with Image.open(p) as img:
            img.load()
            arr = _to_array(img, channels)
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not an image file PIL can read (is it really a {p.suffix or 'picture'}?)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{p}: the image is damaged or truncated ({exc})") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageError(f"{p}: the image is {arr.shape[1]}x{arr.shape[0]} pixels; too small to explain")
    if size is not None and None not in size and tuple(size) != arr.shape[:2]:
        arr = _resize(arr, (int(size[0]), int(size[1])))  # type: ignore[arg-type]
    return arr


def _to_array(img: Any, channels: int) -> np.ndarray:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        # "I;16*" is 16-bit by definition (a dark image may have no value above 255);
        # only plain 32-bit "I" images need a guess at their range
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = (a * (255.0 / top)).astype(np.float32)
        return gray[..., None] if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=np.float32)
    return a[..., None] if a.ndim == 2 else a


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    chans = [
        np.asarray(Image.fromarray(arr[..., c]).resize((w, h), Image.BILINEAR), dtype=np.float32)
        for c in range(arr.shape[-1])
    ]
    return np.stack(chans, axis=-1)


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load a ``.keras`` or ``.h5`` Keras model for inference (not compiled)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such model file")
    if p.suffix not in (".keras", ".h5", ".hdf5"):
        raise ValueError(f"{p}: camlens reads Keras models saved as .keras or .h5; got {p.suffix or 'no suffix'!r}")
    import keras

    try:
        return keras.saving.load_model(p, compile=False)
    except Exception as exc:  # keras raises many types here; say which file failed
        raise ValueError(f"{p}: could not load the Keras model: {exc}") from exc
