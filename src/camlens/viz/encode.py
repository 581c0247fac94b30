"""Images as ``data:`` URIs, so that a page needs no other file and no network."""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["data_uri"]

# Below this many pixels a PNG is smaller than a JPEG and keeps hard edges (tiny test images,
# 16x16 model inputs); above it a JPEG at quality 85 is several times smaller for photos and
# smooth heatmaps.
_PNG_BELOW = 96 * 96


def data_uri(image: np.ndarray, max_side: int | None = None, fmt: str = "auto", quality: int = 85) -> tuple[str, int, int]:
    """A ``uint8`` ``(H, W)`` or ``(H, W, 3)`` image as ``(uri, width, height)``, shrunk so that
    its longer side is at most ``max_side``. ``fmt``: "png", "jpeg" or "auto" (PNG for small
    images, JPEG otherwise)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"data_uri needs a uint8 image; got {arr.dtype}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR, reducing_gap=2.0)
    kind = fmt.lower()
    if kind == "auto":
        kind = "png" if img.width * img.height < _PNG_BELOW else "jpeg"
    buf = io.BytesIO()
    if kind == "png":
        img.save(buf, format="PNG", optimize=False)
        mime = "image/png"
    elif kind in ("jpeg", "jpg"):
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'png', 'jpeg' or 'auto'")
    text = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:{mime};base64,{text}", img.width, img.height
