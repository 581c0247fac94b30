"""Reading images and model files, with errors that say what is wrong with which file."""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["ImageError", "load_image", "MAX_PIXELS", "decode_pixels", "load_model", "image_files",
           "PREPROCESSING", "IMAGE_SUFFIXES", "safe_name", "unique_names", "agreed_size", "image_geometry",
           "as_preprocess", "DISPLAY", "as_display", "use_keras_backend"]


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


#: ImageNet channel means and standard deviations on a 0..1 scale (torchvision's models)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _imagenet(x: np.ndarray) -> np.ndarray:
    if np.shape(x)[-1] != 3:
        raise ValueError(
            f"'imagenet' scaling normalises 3 colour channels; these pixels have shape "
            f"{np.shape(x)}: use none, unit or symmetric"
        )
    return (np.asarray(x, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


#: ImageNet channel means on a 0..255 scale in BGR order, as Keras' ResNet50 and VGG16
#: ``preprocess_input`` (the "caffe" mode) subtracts them
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _three_channels(x: np.ndarray, name: str, what: str) -> None:
    if np.shape(x)[-1] != 3:
        raise ValueError(f"{name!r} scaling {what} 3 colour channels; these pixels have shape "
                         f"{np.shape(x)}: use none, unit or symmetric")


def _caffe(x: np.ndarray) -> np.ndarray:
    _three_channels(x, "caffe", "reorders and centres")
    return np.asarray(x, np.float32)[..., ::-1] - CAFFE_MEAN_BGR


def _caffe_display(x: np.ndarray) -> np.ndarray:
    _three_channels(x, "caffe", "reorders and centres")
    return (np.asarray(x, np.float32) + CAFFE_MEAN_BGR)[..., ::-1]


def _imagenet_display(x: np.ndarray) -> np.ndarray:
    _three_channels(x, "imagenet", "normalises")
    return (np.asarray(x, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0


#: how pixel values (0..255, channels last) are turned into model inputs
PREPROCESSING = {
    "none": lambda x: x,  # 0..255 floats, as keras.utils.img_to_array gives them
    "unit": lambda x: x / 255.0,
    "symmetric": lambda x: x / 127.5 - 1.0,
    "imagenet": _imagenet,  # (x / 255 - mean) / std, as torchvision's pretrained models expect
    # RGB -> BGR, minus the ImageNet mean, no scaling: Keras' ResNet50 / VGG16 preprocess_input
    "caffe": _caffe,
}

#: the way back of each :data:`PREPROCESSING`: model input -> RGB pixels 0..255 (float), the
#: photo to draw a map on. An input drawn as it is would show a "caffe" photo with red and blue
#: swapped and darkened by the mean.
DISPLAY = {
    "none": lambda x: x,
    "unit": lambda x: x * 255.0,
    "symmetric": lambda x: (x + 1.0) * 127.5,
    "imagenet": _imagenet_display,
    "caffe": _caffe_display,
}

def agreed_size(
    model_size: tuple[int | None, int | None], given: tuple[int, int] | None, drop: str
) -> tuple[int | None, int | None]:
    """The ``(H, W)`` images are read at: the model's own size, or ``given`` for a model
    without a fixed size. A ``given`` size must agree with a model's own; the ValueError says to
    drop ``drop`` (how the caller named it: ``--size 9,9``, ``input_size=(9, 9)``)."""
    h, w = model_size
    if given is None:
        return h, w
    want = (int(given[0]), int(given[1]))
    if h and w and (h, w) != want:
        raise ValueError(f"the model takes {h}x{w} images; drop {drop}")
    return want


def as_preprocess(preprocess: str | Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray], np.ndarray]:
    """A name of :data:`PREPROCESSING` (``None``: "none") or a function of the pixels, as the
    function."""
    if preprocess is None or isinstance(preprocess, str):
        key = preprocess or "none"
        if key not in PREPROCESSING:
            raise ValueError(f"unknown preprocess {key!r}; use one of {', '.join(sorted(PREPROCESSING))} or a function")
        return PREPROCESSING[key]
    if callable(preprocess):
        return preprocess
    raise TypeError(f"preprocess must be a name or a function; got {type(preprocess).__name__}")


def use_keras_backend(name: str | None, what: str = "backend") -> None:
    """Keras reads its backend once, when it is first imported: set ``KERAS_BACKEND`` to
    ``name`` before that (``None``: TensorFlow, unless the environment names one), or refuse a
    different one once Keras is loaded (ValueError; ``what``: how the caller names the setting,
    ``--backend`` on the command line)."""
    import sys

    if name is None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        return
    keras = sys.modules.get("keras")
    if keras is not None:  # camlens run from Python, after the caller imported Keras
        current = keras.backend.backend()
        if current != name:
            raise ValueError(f"{what} {name}: Keras is already loaded with the {current} backend "
                             f"in this process, and cannot switch; run camlens in a new process, "
                             f"or drop {what} to use {current}")
        return
    os.environ["KERAS_BACKEND"] = name


def as_display(preprocess: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """The :data:`DISPLAY` function of a :data:`PREPROCESSING` name (``None``: "none"): model
    input back to uint8 RGB pixels, rounded and clipped to 0..255."""
    key = preprocess or "none"
    if key not in DISPLAY:
        raise ValueError(f"unknown preprocess {key!r}; use one of {', '.join(sorted(DISPLAY))}")
    back = DISPLAY[key]
    return lambda x: np.clip(np.rint(back(np.asarray(x, np.float32))), 0, 255).astype(np.uint8)


def image_geometry(
    model: Any, size: tuple[int, int] | None, *, drop: str, refusal: str
) -> tuple[tuple[int | None, int | None], int]:
    """``((H, W), channels)`` the images of a model with one image input are read at: ``None``
    sides for a model without a fixed size when ``size`` is not given (each image keeps its own).
    ``size`` must agree with a model's own size (:func:`agreed_size`; ``drop``: how the caller
    named it). A model that does not take one image batch raises ValueError(``refusal``, in
    which ``{shapes}`` becomes the shapes of its inputs)."""
    from .adapters import adapt

    specs = adapt(model).input_specs()
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ValueError(refusal.format(shapes=[s.shape for s in specs]))
    _, h, w, c = specs[0].shape
    return agreed_size((h, w), size, drop), int(c or 3)


#: file suffixes that :func:`image_files` takes from a folder (PIL reads them all)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_files(paths: "list[str] | tuple[str, ...]") -> list[str]:
    """The image files of ``paths``: a file is kept as given (a bad one fails later, with its
    name), a folder gives its image files (by suffix, at any depth, sorted; hidden files and
    folders skipped; links to folders not followed, so a link loop cannot recurse). Raises
    ValueError for a folder that holds no image file, and for one that cannot be read or holds
    a subfolder that cannot be read: its images would be left out without a word.

    A path that does not exist and holds ``*``, ``?`` or ``[`` is a glob pattern (a quoted
    ``'photos/*.jpg'`` that no shell expanded, or a Windows shell, which never expands): it
    gives the files and folders it matches, sorted (``**`` spans folders). A pattern that
    matches nothing raises ValueError: it would otherwise read as a missing file."""
    out: list[str] = []
    for item in _expand_globs(paths):
        p = Path(item)
        if not os.path.isdir(p):  # False, not PermissionError, in a folder that cannot be read
            out.append(str(item))
            continue
        unreadable: list[OSError] = []
        found = []
        for top, dirs, names in os.walk(p, onerror=unreadable.append):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(top, n) for n in names
                      if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES
                      and os.path.isfile(os.path.join(top, n))]  # isfile: no hang, no raise
        if unreadable:
            bad = unreadable[0]
            raise ValueError(f"{bad.filename}: cannot read the folder ({bad.strerror}); fix "
                             "its permissions (chmod u+rx) or give the folders you can read")
        found.sort()
        if not found:
            raise ValueError(f"{p}: the folder holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        out.extend(found)
    return out


def _expand_globs(paths: "list[str] | tuple[str, ...]") -> list[str]:
    import glob

    out: list[str] = []
    for item in paths:
        text = str(item)
        # a file whose name holds a bracket or star is itself, not a pattern
        if not re.search(r"[*?[]", text) or os.path.lexists(text):
            out.append(text)
            continue
        found = sorted(m for m in glob.glob(text, recursive=True)
                       if not Path(m).name.startswith("."))
        if not found:
            raise ValueError(f"{text}: no file matches this pattern; check the folder and the "
                             "pattern (e.g. 'photos/*.jpg')")
        out.extend(found)
    return out


#: the most pixels (width x height) an image file may declare to be read (40 megapixels, the
#: web app's limit too): checked on the file's header, before any pixel is decoded, because a
#: PNG of a few hundred bytes can declare billions of pixels. A decoded 40-megapixel image is
#: about 0.5 GB of float32; :func:`load_image` and the app take ``max_pixels`` to change it.
MAX_PIXELS = 40_000_000

#: Pillow warns about, or refuses, images over ``PIL.Image.MAX_IMAGE_PIXELS`` while it opens
#: them, through the process-wide warnings filters; this lock keeps two threads (the app
#: decodes on two) from interleaving the ``catch_warnings`` blocks that silence that warning,
#: which would leave a filter behind
_OPENING = threading.Lock()


def load_image(
    path: str | os.PathLike[str],
    size: tuple[int | None, int | None] | None = None,
    channels: int = 3,
    *,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Read an image file as float32 ``(H, W, channels)`` with values 0..255.

    The image is turned upright by its EXIF orientation (phone photos), RGBA and palette
    images are composited on white, grayscale is repeated to RGB (or RGB converted to gray for
    ``channels=1``), 16-bit images are scaled to 0..255, the first frame of an animation or
    the first page of a multi-page TIFF is read, and the image is resized to ``size`` =
    (height, width) when given.

    Raises :class:`ImageError`, one line naming the file, for anything that is not a readable
    image: no such file, a folder, a named pipe or other non-regular file (refused before it
    is opened, so a pipe cannot hang the read), a symlink loop, no permission, an unknown or
    damaged format, under 2 pixels a side, or more than ``max_pixels`` pixels declared in its
    header (:data:`MAX_PIXELS`, 40 megapixels, by default; checked before the pixels are
    decoded, so a decompression bomb costs nothing). A ``size`` over ``max_pixels`` is a
    ValueError: no file could be read at it.
    """
    _check_budget(max_pixels)
    target = None
    if size is not None and None not in size:
        target = (int(size[0]), int(size[1]))  # type: ignore[arg-type]
        if target[0] * target[1] > max_pixels:
            raise ValueError(
                f"size {target[0]}x{target[1]} is {target[0] * target[1] / 1e6:g} megapixels, over "
                f"max_pixels={max_pixels}: give a smaller size or a larger max_pixels"
            )
    p = Path(path)
    label = _label(str(p))
    with _open_regular(p, label) as fp:
        arr = decode_pixels(fp, label, channels=channels, max_pixels=max_pixels,
                            reader="camlens reads",
                            fix="Scale it down first (in Python: load_image's max_pixels).")
    if target is not None and target != arr.shape[:2]:
        arr = _resize(arr, target)
    return arr


def _check_budget(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 4:
        raise ValueError(f"max_pixels must be a whole number of at least 4 (2x2 pixels); got {max_pixels!r}")


def _label(text: str) -> str:
    """``text`` as it goes into a one-line message: as is, or quoted when it holds a newline or
    another character that would break the line."""
    return text if text.isprintable() else ascii(text)


def _open_regular(p: Path, label: str) -> Any:
    """``p`` opened for binary reading, or ImageError for what is not a regular file. The file
    is opened without blocking and checked on its descriptor: a named pipe is refused instead
    of waiting forever for a writer, and nothing can swap the file between check and read."""
    import errno
    import stat

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        if p.is_symlink():
            target = _label(os.readlink(p))
            raise ImageError(f"{label}: a symbolic link to {target}, which does not exist") from None
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:  # Windows; on POSIX a folder opens and fstat says what it is
        raise ImageError(f"{label}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied (the file, or a folder on the way, cannot be "
                         "read); fix its permissions (chmod u+r, u+rx for a folder)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{label}: a loop of symbolic links, not an image") from None
        raise ImageError(f"{label}: cannot open the file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISREG(mode) and info.st_size == 0:
            raise ImageError(f"{label}: the file is empty")
        if stat.S_ISDIR(mode):
            raise ImageError(f"{label}: is a folder, not an image")
        if not stat.S_ISREG(mode):
            kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise ImageError(f"{label}: {kind}, not an image file; give the image file itself")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode_pixels(
    fp: Any,
    label: str,
    *,
    channels: int = 3,
    max_pixels: int = MAX_PIXELS,
    dtype: Any = np.float32,
    reader: str = "camlens reads",
    fix: str = "Scale it down first.",
    not_image: str | None = None,
) -> np.ndarray:
    """The one decoder of image files, for :func:`load_image` and the web app: a binary file
    object as ``(H, W, channels)`` pixels 0..255 (``dtype`` float32, or uint8 without a float
    copy), upright by its EXIF orientation. Raises :class:`ImageError` whose message starts with
    ``label``: an unreadable or damaged file (``not_image``: the sentence for a file PIL does
    not recognise), one under 2 pixels a side, and one declaring more than ``max_pixels``
    pixels, refused on its header before anything is decoded (``reader`` and ``fix`` word that
    message). Pillow's own decompression-bomb error becomes that message too, and its warning
    is not shown: the budget here is the guard.
    """
    from PIL import Image, UnidentifiedImageError

    def too_big(w: int, h: int) -> ImageError:
        return ImageError(f"{label}: the image is {w}x{h} pixels; {reader} up to "
                          f"{max_pixels / 1e6:g} megapixels. {fix}")

    try:
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        many = f"{int(declared.group(1)) / 1e6:,.0f} megapixels" if declared else "too many pixels"
        raise ImageError(f"{label}: the image declares {many}, too many to open safely; {reader} up to "
                         f"{max_pixels / 1e6:g} megapixels. {fix}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: {not_image or 'not an image file PIL can read'}") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageError(f"{label}: the image is damaged or truncated ({_one_line(exc)})") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise too_big(w, h)
        try:
            img.load()
            arr = _to_array(_upright(img), channels, dtype)
        except MemoryError:
            raise ImageError(f"{label}: not enough memory to decode {w}x{h} pixels. {fix}") from None
        except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as exc:
            raise ImageError(f"{label}: the image is damaged or truncated ({_one_line(exc)})") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageError(f"{label}: the image is {arr.shape[1]}x{arr.shape[0]} pixels; too small to explain")
    return arr


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _upright(img: Any) -> Any:
    """``img`` turned by its EXIF orientation (tags 2-8: a phone held sideways stores its
    pixels sideways). Metadata that cannot be parsed means no known orientation: the pixels
    are used as stored rather than refusing a photo for its metadata."""
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # any parse failure of the EXIF block (Pillow raises several kinds)
        return img
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_array(img: Any, channels: int, dtype: Any = np.float32) -> np.ndarray:
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        # "I;16*" is 16-bit by definition (a dark image may have no value above 255);
        # only plain 32-bit "I" images need a guess at their range
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = (a * (255.0 / top)).astype(np.float32)
        if np.dtype(dtype) == np.uint8:
            gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return gray[..., None] if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if channels == 1 else "RGB")
    a = np.asarray(img, dtype=dtype)
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
    """Load a model for inference: a ``.keras`` or ``.h5`` Keras file (not compiled), or Python
    code that builds one, ``FILE.py:NAME`` or ``package.module:NAME``.

    ``NAME`` (dots allowed) is a Keras model or ``torch.nn.Module``, or a function or class
    called with no arguments that returns one (load your weights there). The code runs as
    Python: give only files you trust. A ``FILE.py`` may import modules beside it.
    """
    text = os.fspath(path)
    if _PYTHON_SPEC.match(text) and not os.path.lexists(text):  # a file named "a:b.keras" is a file
        return _load_python_model(text)
    p = Path(path)
    _check_model_file(p)
    if p.suffix not in (".keras", ".h5", ".hdf5"):
        hint = ""
        if p.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
            hint = (" A PyTorch file holds weights, not code: write a function that builds the "
                    "module and loads them, and give it as FILE.py:FUNCTION")
        raise ValueError(
            f"{p}: camlens reads Keras models saved as .keras or .h5, or Python code as "
            f"FILE.py:NAME; got {p.suffix or 'no suffix'!r}.{hint}"
        )
    _check_keras_container(p)
    from .adapters.keras import load_keras_file

    try:
        return load_keras_file(p)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe_deserialization" in str(exc):
            raise ValueError(
                f"{p}: the model holds Python code (a Lambda layer or a custom function), and "
                "camlens loads Keras files with safe_mode=True, which refuses to run it. If you "
                "trust the file, load it yourself with keras.saving.load_model(path, "
                "safe_mode=False) and pass the model to camlens.explain, or on the command line "
                "give FILE.py:NAME where NAME does that"
            ) from exc
        raise


def _check_model_file(p: Path) -> None:
    """Fails with a message naming ``p`` and the fix unless it is a regular, readable,
    non-empty file. The one ``os.stat`` does not open the file: a named pipe would block a
    reader forever, and Keras says "File not found" for a folder or an empty file."""
    import errno
    import stat

    try:
        info = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such model file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{p}: a symbolic link that points back at itself (a loop); give "
                             "the model file itself") from None
        if exc.errno == errno.EACCES:
            raise ValueError(f"{p}: permission denied (a folder on the way cannot be read); "
                             "fix the permissions or copy the model somewhere readable") from None
        raise ValueError(f"{p}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{p}: is a folder, not a model file; give the .keras or .h5 file "
                         "(a SavedModel folder loads with keras.layers.TFSMLayer in Python)")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{p}: not a regular file (a named pipe or a device); save the model "
                         "to a file and give that")
    if info.st_size == 0:
        raise ValueError(f"{p}: the file is empty (0 bytes); was it saved or copied completely?")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{p}: permission denied; fix the file's permissions (chmod +r)")


def _check_keras_container(p: Path) -> None:
    """A ``.keras`` file is a zip archive and an ``.h5`` one an HDF5 file: one that is not
    (truncated, damaged, or another kind of file renamed) is refused here, with what it is,
    because Keras says "File not found" for a damaged zip."""
    import zipfile

    with open(p, "rb") as fh:
        head = fh.read(8)
    if p.suffix == ".keras":
        if not zipfile.is_zipfile(p):
            what = "truncated or damaged" if head.startswith(b"PK") else "not a zip archive"
            raise ValueError(f"{p}: not a readable .keras file ({what}; a .keras model is a zip "
                             "archive): save or download it again")
        with zipfile.ZipFile(p) as archive:
            if "config.json" not in archive.namelist():
                raise ValueError(f"{p}: a zip archive but not a Keras model (no config.json); "
                                 "save the model with model.save('model.keras')")
    elif head != b"\x89HDF\r\n\x1a\n" and not _hdf5_at_offset(p):
        raise ValueError(f"{p}: not an HDF5 file (an .h5 model starts with the HDF5 "
                         "signature); save or download it again")


def _hdf5_at_offset(p: Path) -> bool:
    """HDF5 allows a user block before the signature, at 512, 1024, 2048, ... bytes."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        offset = 512
        while offset + 8 <= size and offset <= 1 << 20:
            fh.seek(offset)
            if fh.read(8) == b"\x89HDF\r\n\x1a\n":
                return True
            offset *= 2
    return False


#: "models.py:build", "pkg.models:Net", "path/to/m.py:zoo.resnet" (not "C:\\models\\m.keras")
_PYTHON_SPEC = re.compile(r"^(?P<source>.+\.py|[A-Za-z_][\w.]*):(?P<name>[A-Za-z_][\w.]*)$")


def _is_model(obj: Any) -> bool:
    kind = type(obj)
    for base in kind.__mro__:
        if (base.__module__, base.__name__) in (("torch.nn.modules.module", "Module"),):
            return True
        if base.__module__.startswith("keras") and base.__name__ in ("Model", "Functional", "Sequential"):
            return True
    return False


def _load_python_model(spec: str) -> Any:
    import importlib
    import importlib.util
    import inspect
    import sys

    m = _PYTHON_SPEC.match(spec)
    assert m is not None
    source, name = m.group("source"), m.group("name")
    if source.endswith(".py"):
        file = Path(source)
        if not file.is_file():
            raise FileNotFoundError(f"{spec}: no such Python file {file}")
        folder = str(file.resolve().parent)
        module_name = f"_camlens_model_{abs(hash(str(file.resolve())))}"
        loader = importlib.util.spec_from_file_location(module_name, file)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.path.insert(0, folder)  # so that the file can import its neighbours
        try:
            loader.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a script that calls sys.exit() at import, too
            raise ValueError(f"{spec}: running {file} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise ValueError(f"{spec}: cannot import {source!r} ({exc}); give a file as FILE.py:{name}") from exc
        except (Exception, SystemExit) as exc:
            raise ValueError(f"{spec}: importing {source} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            offered = sorted(
                k for k, v in vars(module).items()
                if not k.startswith("_") and (
                    _is_model(v)  # a model built at import
                    or (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__
                )
            )
            raise ValueError(f"{spec}: {source} has no {name!r}; it defines "
                             f"{', '.join(offered) or 'no function, class or model'}")
        obj = getattr(obj, part)
    what = name
    if not _is_model(obj) and (inspect.isclass(obj) or callable(obj)):
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:
            raise ValueError(f"{spec}: calling {name}() failed: {type(exc).__name__}: {exc}") from exc
        what = f"{name}()"
    if not _is_model(obj):
        raise ValueError(
            f"{spec}: {what} is of type {type(obj).__name__}, not a Keras model or torch.nn.Module"
        )
    return obj


def safe_name(name: str) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9._-]`` made one ``-``: safe in
    any file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "x"


def unique_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """File-safe output names, one per image, never two alike (``a``, ``a-1``, ...)."""
    taken: set[str] = set()
    names = []
    for path in paths:
        stem = safe_name(Path(path).stem or "image")
        name, k = stem, 0
        while name in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name)
        names.append(name)
    return names
