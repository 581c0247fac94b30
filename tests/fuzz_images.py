"""A fuzz corpus of image files, generated (not committed as files), and a runner for it.

``write_cases(folder)`` writes every case into ``folder`` and returns the :class:`Case` list:
each says what ``camlens.io.load_image`` and ``camlens.app._session.decode_image`` must do with
it: read it as a sane array of a stated shape, or refuse it with an :class:`~camlens.io.ImageError`
that names the file on one line. Never another exception, never a hang, never much memory.

``run_cases(cases)`` runs them all (a per-case alarm against hangs) and returns one dict per
(case, reader). Run as a script (``python tests/fuzz_images.py``) it does both in a temporary
folder under an address-space limit (``RLIMIT_AS``, 3 GiB by default) and prints one line
``RESULT <json>``: ``tests/test_fuzz_images.py`` and ``benchmarks/_reliability_files.py`` use
that, so a case that allocates gigabytes fails there instead of taking the machine down.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

#: seconds any one case may take before it counts as a hang
CASE_SECONDS = 10
#: the address-space limit of the script's process
LIMIT_BYTES = 3 * 1024**3


@dataclass
class Case:
    """One file of the corpus and what the readers must do with it."""

    name: str
    path: Path
    #: the array shape both readers return, or None: both refuse it with an ImageError
    shape: Optional[tuple[int, ...]]
    #: whether decode_image (which takes the file's bytes, as the app gets them) applies: a
    #: FIFO, a folder, a symlink loop or an unreadable file has no bytes to upload
    has_bytes: bool = True
    #: why the case is skipped here (root reads a chmod 000 file), else None
    skip: Optional[str] = None
    about: str = ""


# -- file builders ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, *, color_type: int = 0, bit_depth: int = 8,
              idat: bool = True) -> bytes:
    """A valid PNG of one colour (zeros), any size, built row by row so that a 12000x12000 one
    costs kilobytes of memory to write; ``idat=False`` gives the header only (a declared size
    with no pixels: what a decompression bomb needs to be refused on)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr)]
    if idat:
        per_pixel = {0: 1, 2: 3, 4: 2, 6: 4}[color_type] * bit_depth // 8
        row = b"\x00" * (1 + width * per_pixel)  # filter byte + pixels
        z = zlib.compressobj(9)
        parts = []
        for _ in range(height):
            parts.append(z.compress(row))
        parts.append(z.flush())
        out.append(_chunk(b"IDAT", b"".join(parts)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(img, path: Path, **kw) -> None:  # type: ignore[no-untyped-def]
    img.save(path, **kw)


def exif_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``pixels`` as stored, with the EXIF Orientation tag set (a phone photo held
    sideways: 6 means "rotate 90 degrees clockwise to show")."""
    from PIL import Image

    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def write_cases(folder: str | os.PathLike[str]) -> list[Case]:
    """Write every case into ``folder`` (which must exist); returns them in a fixed order."""
    from PIL import Image

    d = Path(folder)
    cases: list[Case] = []

    def add(name: str, shape: Optional[tuple[int, ...]], about: str, data: bytes | None = None,
            make: Callable[[Path], None] | None = None, has_bytes: bool = True) -> Path:
        path = d / name
        if data is not None:
            path.write_bytes(data)
        elif make is not None:
            make(path)
        cases.append(Case(name, path, shape, has_bytes=has_bytes, about=about))
        return path

    def pil(img, **kw):  # type: ignore[no-untyped-def]
        def make(path: Path) -> None:
            img.save(path, **kw)
        return make

    buf = io.BytesIO()
    Image.fromarray(_rgb(20, 30)).save(buf, format="PNG")
    good_png = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(_rgb(48, 64, 1)).save(buf, format="JPEG", quality=90)
    good_jpeg = buf.getvalue()

    add("good.png", (20, 30, 3), "an ordinary RGB PNG", good_png)
    add("good.jpg", (48, 64, 3), "an ordinary JPEG", good_jpeg)
    add("zero.png", None, "zero bytes", b"")
    add("signature-only.png", None, "the PNG signature and nothing else", good_png[:8])
    add("truncated.png", None, "a PNG cut in its pixel data", good_png[: len(good_png) // 2])
    add("truncated.jpg", None, "a JPEG cut in half", good_jpeg[: len(good_jpeg) // 2])
    add("text.png", None, "a text file named .png", b"this is not a picture\n")
    add("image.svg", None, "an SVG drawing (PIL reads no vector formats)",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>\n')
    add("bomb-50000.png", None, "declares 50,000 x 50,000 pixels (Pillow's DecompressionBombError)",
        png_bytes(50_000, 50_000, idat=False))
    add("bomb-10000.png", None, "declares 10,000 x 10,000 pixels (Pillow's DecompressionBombWarning)",
        png_bytes(10_000, 10_000, idat=False))
    add("big-12000.png", None, "a real 12000x12000 gray PNG of ~140 KB: over the pixel budget",
        png_bytes(12_000, 12_000))
    add("over-budget.png", None, "a real 7000x6000 gray PNG: over 40 megapixels, under Pillow's guard",
        png_bytes(7_000, 6_000))
    # a GIF's screen size is 16-bit: 65535 x 65535 declared in a 30-byte file
    gif = (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
           + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;")
    add("bomb.gif", None, "a GIF declaring 65535 x 65535 pixels", gif)
    add("wide-2x20000.png", (2, 20_000, 3), "a 20000x2 PNG of 118 bytes: an extreme aspect ratio",
        png_bytes(20_000, 2))
    add("tall-20000x2.png", (20_000, 2, 3), "a 2x20000 PNG: an extreme aspect ratio, standing",
        png_bytes(2, 20_000))
    add("one-pixel.png", None, "1x1 pixels: too small to explain", make=pil(Image.new("RGB", (1, 1))))
    add("gray16.png", (24, 20, 3), "16-bit grayscale",
        make=pil(Image.fromarray((np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100))))
    add("rgb16.png", (8, 12, 3), "16-bit RGB (Pillow reads it as 8-bit RGB)",
        png_bytes(12, 8, color_type=2, bit_depth=16))
    palette = Image.fromarray(_rgb(16, 16, 2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    add("palette-alpha.png", (16, 16, 3), "a palette PNG with a transparent colour (composited on white)",
        make=pil(palette, transparency=0))
    la = Image.fromarray(np.dstack([_rgb(10, 14, 3)[..., 0], _rgb(10, 14, 4)[..., 0]]), mode="LA")
    add("gray-alpha.png", (10, 14, 3), "grayscale with alpha", make=pil(la))
    add("bilevel.png", (9, 11, 3), "a 1-bit image", make=pil(Image.new("1", (11, 9), 1)))
    add("cmyk.jpg", (16, 24, 3), "a CMYK JPEG", make=pil(Image.fromarray(_rgb(16, 24, 5)).convert("CMYK"), quality=90))
    add("exif-rotated.jpg", (30, 20, 3), "a 30x20 (w x h) photo with EXIF Orientation 6: shown 20 wide, 30 tall",
        exif_jpeg(_rgb(20, 30, 6), 6))
    bad_exif = bytearray(exif_jpeg(_rgb(20, 30, 7), 6))
    at = bad_exif.find(b"Exif\x00\x00")
    bad_exif[at + 6: at + 30] = b"\xff" * 24  # the TIFF header of the EXIF block made garbage
    add("bad-exif.jpg", (20, 30, 3), "a JPEG whose EXIF block is garbage: read as stored", bytes(bad_exif))

    frames = [Image.fromarray(np.full((12, 18, 3), v, np.uint8)) for v in (10, 120, 240)]
    add("animated.gif", (12, 18, 3), "an animated GIF of 3 frames: the first frame is read",
        make=lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0))
    pages = [Image.fromarray(_rgb(14, 10, s)) for s in (8, 9)]
    add("multipage.tiff", (14, 10, 3), "a TIFF of 2 pages: the first page is read",
        make=lambda p: pages[0].save(p, save_all=True, append_images=pages[1:]))
    add("float.tiff", (6, 7, 3), "a 32-bit float grayscale TIFF (mode F)",
        make=pil(Image.fromarray(np.linspace(0, 255, 42, dtype=np.float32).reshape(6, 7))))
    add("int32.tiff", (5, 4, 3), "a 32-bit integer grayscale TIFF (mode I)",
        make=pil(Image.fromarray(np.arange(20, dtype=np.int32).reshape(5, 4) * 1000)))

    # files that are not regular files, or not readable
    folder_png = add("folder.png", None, "a folder named like an image", make=lambda p: p.mkdir(), has_bytes=False)
    assert folder_png.is_dir()
    loop_a = d / "loop-a.png"
    add("loop-b.png", None, "a symlink loop", make=lambda p: (os.symlink(loop_a, p), os.symlink(p, loop_a)),
        has_bytes=False)
    add("dangling.png", None, "a symlink to nothing", make=lambda p: os.symlink(d / "nowhere.png", p),
        has_bytes=False)
    add("missing.png", None, "no such file", has_bytes=False)
    if hasattr(os, "mkfifo"):
        add("fifo.png", None, "a named pipe (opening one for reading waits for a writer forever)",
            make=lambda p: os.mkfifo(p), has_bytes=False)
    locked = add("unreadable.png", None, "a PNG with no read permission (chmod 000)", good_png, has_bytes=False)
    os.chmod(locked, 0)
    try:
        with open(locked, "rb"):
            cases[-1].skip = "this process reads files without permission (root)"
    except OSError:
        pass
    return cases


# -- running ---------------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise _Hang()


def run_cases(cases: list[Case]) -> list[dict]:
    """Each case through ``load_image`` (by path) and ``decode_image`` (by bytes, where the case
    has bytes). One dict per run: ``case``, ``reader``, ``outcome`` ("read", "refused",
    "crash": another exception, "hang": over :data:`CASE_SECONDS`), ``shape`` or ``message``,
    ``expected`` (the case's shape or None), ``seconds``."""
    import warnings

    from camlens.app._session import decode_image
    from camlens.io import ImageError, load_image

    rows: list[dict] = []
    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
    for case in cases:
        if case.skip:
            rows.append({"case": case.name, "reader": "load_image", "outcome": "skipped", "message": case.skip,
                         "expected": case.shape, "seconds": 0.0})
            continue
        readers: list[tuple[str, Callable[[], np.ndarray]]] = [("load_image", lambda: load_image(case.path))]
        if case.has_bytes:
            data = case.path.read_bytes()
            readers.append(("decode_image", lambda: decode_image(data, case.name, 40_000_000)))
        for reader, call in readers:
            row: dict = {"case": case.name, "reader": reader, "expected": case.shape}
            start = time.perf_counter()
            caught: list = []
            try:
                if use_alarm:
                    signal.alarm(CASE_SECONDS)
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    try:
                        arr = call()
                    finally:
                        caught = list(seen)
                row.update(outcome="read", shape=list(arr.shape), dtype=str(arr.dtype),
                           finite=bool(np.isfinite(arr).all()),
                           in_range=bool(arr.min() >= 0 and arr.max() <= 255))
            except ImageError as exc:
                row.update(outcome="refused", message=str(exc))
            except _Hang:
                row.update(outcome="hang", message=f"no answer in {CASE_SECONDS} s")
            except BaseException as exc:  # what the test exists to catch
                row.update(outcome="crash", message=f"{type(exc).__name__}: {exc}")
            finally:
                if use_alarm:
                    signal.alarm(0)
            row["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
            row["seconds"] = round(time.perf_counter() - start, 4)
            rows.append(row)
    return rows


def check(row: dict) -> str | None:
    """What is wrong with one run's row, or None: the outcome the case expects, a one-line
    message naming the file, a sane array, no warning."""
    name = row["case"]
    if row["outcome"] == "skipped":
        return None
    if row["outcome"] in ("crash", "hang"):
        return f"{name} ({row['reader']}): {row['outcome']}: {row['message']}"
    if row.get("warnings"):
        return f"{name} ({row['reader']}): warnings leaked: {row['warnings']}"
    expected = row["expected"]
    if expected is None:
        if row["outcome"] != "refused":
            return f"{name} ({row['reader']}): read as {row.get('shape')}, should be refused"
        message = row["message"]
        if "\n" in message or name not in message:
            return f"{name} ({row['reader']}): the message must be one line naming the file: {message!r}"
        return None
    if row["outcome"] != "read":
        return f"{name} ({row['reader']}): refused ({row['message']}), should read as {expected}"
    if tuple(row["shape"]) != tuple(expected):
        return f"{name} ({row['reader']}): shape {row['shape']}, expected {list(expected)}"
    if not (row["finite"] and row["in_range"]):
        return f"{name} ({row['reader']}): pixels outside 0..255 or not finite"
    return None


def main(argv: list[str]) -> int:
    limit = int(argv[0]) if argv else LIMIT_BYTES
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cases = write_cases(tmp)
        written = time.perf_counter() - start
        rows = run_cases(cases)
        for case in cases:  # let the temporary folder go (the unreadable file, the loop)
            if case.path.exists() and not case.path.is_symlink() and not case.path.is_dir():
                os.chmod(case.path, 0o600)
    print("RESULT " + json.dumps({"rows": rows, "peak_rss": peak_rss(), "write_seconds": written,
                                  "cases": [c.name for c in cases]}))
    return 0


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM (Linux), which starts afresh at
    exec; ``ru_maxrss`` elsewhere, which on Linux also carries the parent's peak over a fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main(sys.argv[1:]))
