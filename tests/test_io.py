"""camlens.io: reading images and model files, and the errors for files that cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from camlens.io import PREPROCESSING, ImageError, load_image, load_model


def _rgb(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _img16(a: np.ndarray) -> Image.Image:
    """A 16-bit grayscale PIL image (mode "I;16") from a uint16 array."""
    img = Image.fromarray(a.astype(np.uint16))
    assert img.mode == "I;16"
    return img


# ---------------------------------------------------------------- load_image: good files
def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = _rgb(7, 5)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    arr = load_image(path)
    assert arr.dtype == np.float32
    assert arr.shape == (7, 5, 3)
    np.testing.assert_array_equal(arr, pixels.astype(np.float32))
    assert arr.min() >= 0 and arr.max() <= 255


def test_accepts_str_path(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(_rgb()).save(path)
    assert load_image(str(path)).shape == (6, 5, 3)


def test_resize_to_non_square_height_width(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(_rgb(20, 30)).save(path)
    arr = load_image(path, size=(12, 17))
    assert arr.shape == (12, 17, 3)
    assert arr.dtype == np.float32
    assert arr.min() >= 0 and arr.max() <= 255


def test_resize_keeps_constant_colour(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((10, 14, 3), (10, 120, 250), np.uint8)).save(path)
    arr = load_image(path, size=(5, 9))
    np.testing.assert_allclose(arr, np.broadcast_to([10, 120, 250], (5, 9, 3)), atol=0.5)


def test_size_with_none_or_same_size_does_not_resize(tmp_path):
    pixels = _rgb(6, 5)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(load_image(path, size=(None, None)), pixels)
    np.testing.assert_array_equal(load_image(path, size=(6, 5)), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    arr = load_image(path)
    assert arr.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray.astype(np.float32))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 30, 10)
    rgba[..., 3] = 255
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[1, 1] = (0, 0, 0, 128)  # half transparent black -> grey
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    arr = load_image(path)
    assert arr.shape == (4, 4, 3)
    np.testing.assert_array_equal(arr[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(arr[2, 2], [200, 30, 10])
    assert np.all(np.abs(arr[1, 1] - 127) <= 1)


def test_la_is_composited_on_white(tmp_path):
    la = np.zeros((3, 3, 2), np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    la[2, 2] = (0, 0)
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(la[..., 0]), Image.fromarray(la[..., 1])]).save(path)
    arr = load_image(path)
    assert arr.shape == (3, 3, 3)
    np.testing.assert_array_equal(arr[0, 0], [50, 50, 50])
    np.testing.assert_array_equal(arr[2, 2], [255, 255, 255])


def test_16bit_grayscale_is_scaled_to_0_255(tmp_path):
    a = np.array([[65535, 0, 257 * 100], [257 * 255, 257, 0]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    _img16(a).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really read back as a 16-bit image
    arr = load_image(path)
    assert arr.shape == (2, 3, 3)
    assert arr.dtype == np.float32
    assert np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])
    g = arr[..., 0]
    assert g[0, 0] == pytest.approx(255.0, abs=0.01)
    assert g[0, 1] == 0.0
    assert g[0, 2] == pytest.approx(100.0, abs=0.01)
    assert g[1, 0] == pytest.approx(255.0, abs=0.01)
    assert g[1, 1] == pytest.approx(1.0, abs=0.01)


def test_dark_16bit_grayscale_is_not_mistaken_for_8bit(tmp_path):
    # a 16-bit image whose values all happen to be <= 255 is still on the 0..65535 scale
    a = np.array([[0, 100], [200, 255]], dtype=np.uint16)
    path = tmp_path / "dark16.png"
    _img16(a).save(path)
    g = load_image(path)[..., 0]
    np.testing.assert_allclose(g, a / 257.0, atol=0.01)
    assert load_image(path).max() <= 1.0 + 1e-6


def test_16bit_grayscale_with_one_channel(tmp_path):
    a = np.array([[65535, 0], [257 * 100, 0]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    _img16(a).save(path)
    arr = load_image(path, channels=1)
    assert arr.shape == (2, 2, 1)
    np.testing.assert_allclose(arr[..., 0], a / 257.0, atol=0.01)


def test_palette_png_becomes_rgb(tmp_path):
    img = Image.new("P", (4, 3))
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    img.putpalette(palette)
    idx = np.array([[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]], dtype=np.uint8)
    img.putdata(idx.ravel().tolist())
    path = tmp_path / "pal.png"
    img.save(path)
    with Image.open(path) as im:
        assert im.mode == "P"
    arr = load_image(path)
    assert arr.shape == (3, 4, 3)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.float32)
    np.testing.assert_array_equal(arr, colours[idx])


def test_palette_png_with_transparency_on_white(tmp_path):
    img = Image.new("P", (2, 2))
    img.putpalette([10, 20, 30, 0, 0, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 0, 0])
    path = tmp_path / "palt.png"
    img.save(path, transparency=1)
    arr = load_image(path)
    np.testing.assert_array_equal(arr[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(arr[0, 1], [255, 255, 255])


def test_channels_1_gives_single_channel(tmp_path):
    pixels = _rgb(6, 5)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    arr = load_image(path, channels=1)
    assert arr.shape == (6, 5, 1)
    assert arr.dtype == np.float32
    expected = np.asarray(Image.fromarray(pixels).convert("L"), np.float32)
    np.testing.assert_array_equal(arr[..., 0], expected)
    assert load_image(path, size=(3, 4), channels=1).shape == (3, 4, 1)


def test_jpeg_reads(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((16, 12, 3), 128, np.uint8)).save(path, quality=95)
    arr = load_image(path)
    assert arr.shape == (16, 12, 3)
    np.testing.assert_allclose(arr, 128, atol=3)


def test_preprocessing_table():
    x = np.array([0.0, 127.5, 255.0], np.float32)
    np.testing.assert_allclose(PREPROCESSING["none"](x), x)
    np.testing.assert_allclose(PREPROCESSING["unit"](x), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(PREPROCESSING["symmetric"](x), [-1.0, 0.0, 1.0])


# ---------------------------------------------------------------- load_image: bad files
def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")


def test_folder(tmp_path):
    folder = tmp_path / "afolder.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="afolder.png") as info:
        load_image(folder)
    assert "folder" in str(info.value)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg"):
        load_image(path)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg") as info:
        load_image(path)
    message = str(info.value).lower()
    assert "damaged" in message or "truncated" in message


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path)
    with pytest.raises(ImageError, match="dot.png") as info:
        load_image(path)
    assert "1x1" in str(info.value)


def test_one_pixel_wide_image(tmp_path):
    path = tmp_path / "line.png"
    Image.fromarray(np.zeros((10, 1, 3), np.uint8)).save(path)
    with pytest.raises(ImageError, match="line.png"):
        load_image(path, size=(8, 8))


# ---------------------------------------------------------------- load_model
def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")


def test_load_model_wrong_suffix(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="model.pt") as info:
        load_model(path)
    assert ".keras" in str(info.value)


def test_load_model_no_suffix(tmp_path):
    path = tmp_path / "model"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="no suffix"):
        load_model(path)


def test_load_model_corrupt_keras_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=2048, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="broken.keras"):
        load_model(path)


def test_load_model_from_python_code_that_builds_a_keras_model(tmp_path):
    import keras

    (tmp_path / "zoo.py").write_text(
        "import keras\n"
        "def small():\n"
        "    inp = keras.Input((8, 8, 3))\n"
        "    x = keras.layers.Conv2D(2, 3, name='conv')(inp)\n"
        "    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name='small')\n"
        "seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])\n"
    )
    model = load_model(f"{tmp_path / 'zoo.py'}:small")
    assert isinstance(model, keras.Model) and model.name == "small" and model.get_layer("conv")
    assert isinstance(load_model(f"{tmp_path / 'zoo.py'}:seq"), keras.Sequential)
    with pytest.raises(ValueError, match=r"zoo.py:missing: .*has no 'missing'; it defines seq, small$"):
        load_model(f"{tmp_path / 'zoo.py'}:missing")


def test_an_existing_file_with_a_colon_in_its_name_is_a_file_not_python_code(tmp_path, monkeypatch):
    import keras

    inp = keras.Input((4, 4, 1))
    path = tmp_path / "model:v2.keras"
    keras.Model(inp, keras.layers.Conv2D(1, 1)(inp)).save(path)
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_model("model:v2.keras"), keras.Model)
    with pytest.raises(ValueError, match="cannot import 'other'"):
        load_model("other:v2.keras")  # no such file: read as module:NAME


def test_agreed_size_takes_the_given_size_only_where_the_model_has_none():
    from camlens.io import agreed_size

    assert agreed_size((None, None), None, "") == (None, None)
    assert agreed_size((None, None), (10, 14), "") == (10, 14)
    assert agreed_size((8, 8), None, "") == (8, 8)
    assert agreed_size((8, 8), (8, 8), "") == (8, 8)
    with pytest.raises(ValueError, match=r"the model takes 8x8 images; drop input_size=\(9, 9\)"):
        agreed_size((8, 8), (9, 9), "input_size=(9, 9)")


# ---------------------------------------------------------------- load_image: size, bombs, odd files
# (issue 14: a pixel budget checked on the header, Pillow's bomb guard as a per-file message,
# EXIF orientation, and files that are not regular files refused before they are opened)
from fuzz_images import exif_jpeg, png_bytes  # noqa: E402


def _never_decoded(monkeypatch):
    """Make decoding any pixels fail the test: the budget must refuse on the header alone."""
    from PIL import ImageFile

    def load(self):  # type: ignore[no-untyped-def]
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_the_pixel_budget_refuses_on_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(7000, 6000))  # 42 MP, under Pillow's own guard
    _never_decoded(monkeypatch)
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the image is 7000x6000 pixels; camlens reads up to 40 megapixels")
    assert "\n" not in message and "max_pixels" in message


def test_max_pixels_is_a_keyword(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(_rgb(30, 40)).save(path)
    with pytest.raises(ImageError, match="40x30 pixels; camlens reads up to 0.001 megapixels"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ValueError, match="max_pixels must be a whole number"):
        load_image(path, max_pixels=0)


def test_a_size_over_the_budget_is_refused_before_reading(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(_rgb(30, 40)).save(path)
    with pytest.raises(ValueError, match="size 7000x7000 is 49 megapixels, over max_pixels=40000000") as info:
        load_image(path, size=(7000, 7000))  # today's code: 0.6 GB of floats for a 30x40 file
    assert not isinstance(info.value, ImageError)  # the size, not the file, is wrong
    with pytest.raises(ValueError, match="size 200x300 is 0.06 megapixels, over max_pixels=1000"):
        load_image(path, size=(200, 300), max_pixels=1000)


@pytest.mark.parametrize("side", [10_000, 50_000])
def test_decompression_bombs_are_an_image_error_without_warnings(tmp_path, side):
    import warnings

    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(png_bytes(side, side, idat=False))  # a 60-byte header
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ImageError) as info:
            load_image(path)
    assert str(info.value).startswith(f"{path}: the image ")
    assert "megapixels" in str(info.value) and "Scale it down" in str(info.value)
    assert [str(w.message) for w in seen] == []


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    # a smooth picture, so that JPEG loses little: the right turn is near, every other far
    yy, xx = np.mgrid[0:24, 0:40]
    stored = np.stack([xx * 6, yy * 10, (xx + yy) * 3], axis=-1).astype(np.uint8)
    path = tmp_path / f"phone{orientation}.jpg"
    path.write_bytes(exif_jpeg(stored, orientation))
    arr = load_image(path)
    want = np.rot90(stored, k=turn).astype(np.float32)  # np.rot90: k=1 is a counter-clockwise turn
    assert arr.shape == want.shape
    assert np.abs(arr - want).mean() < 3
    for k in range(4):  # the other turns of the same shape (as stored, the opposite turn) are far
        other = np.rot90(stored, k=k)
        if k % 4 != turn % 4 and other.shape == arr.shape:
            assert np.abs(arr - other).mean() > 20, k


def test_exif_orientation_in_the_app_decoder(tmp_path):
    pytest.importorskip("fastapi")
    from camlens.app._session import decode_image

    yy, xx = np.mgrid[0:24, 0:40]
    stored = np.stack([xx * 6, yy * 10, (xx + yy) * 3], axis=-1).astype(np.uint8)
    arr = decode_image(exif_jpeg(stored, 6), "phone.jpg", 1_000_000)
    assert arr.dtype == np.uint8 and arr.shape == (40, 24, 3)
    assert np.abs(arr.astype(float) - np.rot90(stored, k=-1)).mean() < 3


def _in_thread(fn, seconds: float = 5.0):
    """``fn()`` run on a thread: its result or exception, or "hang" when it took too long."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        return "hang"
    return box


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    got = _in_thread(lambda: load_image(fifo))
    if got == "hang":  # let the stuck open go before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("load_image waited on a named pipe")
    assert isinstance(got.get("error"), ImageError), got
    assert str(got["error"]) == f"{fifo}: a named pipe, not an image file; give the image file itself"


def test_symbolic_link_loops_and_dangling_links(tmp_path):
    import os

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    os.symlink(a, b)
    os.symlink(b, a)
    with pytest.raises(ImageError, match="a loop of symbolic links"):
        load_image(a)
    gone = tmp_path / "gone.png"
    os.symlink(tmp_path / "nowhere.png", gone)
    with pytest.raises(ImageError, match="a symbolic link to .*nowhere.png, which does not exist"):
        load_image(gone)


def test_no_permission_says_so(tmp_path, monkeypatch):
    import os

    path = tmp_path / "locked.png"
    Image.fromarray(_rgb()).save(path)

    def denied(*args, **kwargs):  # what os.open does on a chmod 000 file for a non-root user
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ImageError, match="locked.png: permission denied"):
        load_image(path)


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: the file is empty"):
        load_image(path)


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.fromarray(np.full((6, 8, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    arr = load_image(path)
    assert arr.shape == (6, 8, 3) and np.abs(arr - 10).max() <= 2
