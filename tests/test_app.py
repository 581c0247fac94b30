"""``camlens app``: the JSON API through FastAPI's TestClient, and the page in headless Chromium
(Playwright, Debian's /usr/bin/chromium) against the app served by uvicorn on a free port.

Screenshots of the browser test go to pytest's tmp_path and, when ``$CAMLENS_ARTIFACTS`` names
a folder, are copied there too.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens import samples
from camlens.app import create_app
from camlens.cli import main
from keras_models import probe_free, small_classifier

with warnings.catch_warnings():
    # newer Starlette prefers the httpx2 package for its TestClient; httpx works the same
    warnings.filterwarnings("ignore", message=r"Using .httpx. with .starlette\.testclient")
    from fastapi.testclient import TestClient

CLASSES = ["cat", "dog", "fish", "bird"]
LIMIT = 64 * 1024
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _png_bytes(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    # smooth, so the PNG stays small (well under LIMIT)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _decode(data_url: str) -> Image.Image:
    head, _, payload = data_url.partition(",")
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture(scope="module")
def model():
    return small_classifier()


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, preprocess="unit", class_names=CLASSES, max_upload_bytes=LIMIT)
    with TestClient(app) as c:
        yield c


# ---------------------------------------------------------------- the API


def test_info_lists_the_layer_candidates_with_the_automatic_one_marked(client, model):
    info = client.get("/api/info").json()
    report = camlens.layers(model)
    assert [row["path"] for row in info["layers"]] == [r.path for r in report.candidates]
    assert [row["path"] for row in info["layers"]] == ["conv1", "conv2"]
    assert [row["auto"] for row in info["layers"]] == [False, True]
    assert info["auto_layer"] == report.chosen == ["conv2"]
    assert info["layer_reason"] == report.reason
    assert [m["name"] for m in info["methods"]] == camlens.available_methods()
    slow = {m["name"] for m in info["methods"] if m["slow"]}
    assert "scorecam" in slow and "gradcam" not in slow and "fastscorecam" not in slow
    assert info["default_method"] == "gradcam"
    assert [p["name"] for p in info["photos"]] == list(samples.PHOTOS)
    assert info["max_upload_bytes"] == LIMIT
    assert info["model"] == "small" and info["classes"] == 4
    assert probe_free(model)


def test_explain_an_upload_returns_pngs_of_the_image_size(client, model):
    data = _png_bytes(30, 40)
    r = client.post("/api/explain", files={"file": ("photo.png", data, "image/png")},
                    data={"method": "gradcam", "layer": "auto", "target": "top"})
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("image", "overlay", "heatmap"):
        img = _decode(body[key])
        assert img.size == (40, 30) and img.mode == "RGB", key
    assert (body["width"], body["height"]) == (40, 30)
    assert body["layer"] == ["conv2"] and body["reason"].startswith("conv2")

    # the same numbers as camlens.explain on the 16x16 input the model takes
    photo = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    x = np.asarray(Image.fromarray(photo).resize((16, 16), Image.BILINEAR), np.float32) / 255.0
    exp = camlens.explain(model, x[None], method="gradcam")
    expected = camlens.viz.overlay(photo[None], exp.map)[0]
    np.testing.assert_array_equal(np.asarray(_decode(body["overlay"])), expected)
    assert not np.array_equal(np.asarray(_decode(body["overlay"])), photo)

    probs = model.predict(x[None], verbose=0)[0]
    top = int(np.argmax(probs))
    assert body["target"] == {"index": top, "name": CLASSES[top]}
    assert body["score"] == pytest.approx(float(probs[top]), rel=1e-5)
    assert [p["index"] for p in body["predictions"]] == list(np.argsort(-probs, kind="stable"))
    assert [p["name"] for p in body["predictions"]] == [CLASSES[p["index"]] for p in body["predictions"]]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(sorted(probs, reverse=True), rel=1e-5)
    assert probe_free(model)


def test_explain_a_bundled_photo_for_a_chosen_class_layer_and_method(client, model):
    r = client.post("/api/explain", data={"photo": "coffee", "method": "layercam", "layer": "conv1", "target": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == {"index": 2, "name": "fish"}
    assert body["layer"] == ["conv1"] and body["method"] == "layercam"
    assert _decode(body["overlay"]).size == (512, 341)  # 600x400, long side cut to 512
    pixel = client.post("/api/explain", data={"photo": "coffee", "method": "saliency"}).json()
    assert pixel["layer"] == [] and "no layer" in pixel["reason"]


def test_an_upload_over_the_limit_gets_413_and_the_app_keeps_serving(client):
    just_over = b"\x89PNG" + b"\0" * (LIMIT - 3)
    r = client.post("/api/explain", files={"file": ("big.png", just_over, "image/png")})
    assert r.status_code == 413
    assert r.json()["detail"] == "big.png is larger than the limit of 64 KB"
    # far over: refused on Content-Length, before the body is read
    r = client.post("/api/explain", files={"file": ("huge.png", b"\0" * (4 * LIMIT), "image/png")})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]

    # no Content-Length (chunked): refused while counting
    def chunks():
        for _ in range(8):
            yield b"\0" * LIMIT

    r = client.post("/api/explain", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    assert client.get("/api/info").status_code == 200


def test_a_text_file_gets_400_with_a_message_and_the_app_keeps_serving(client):
    r = client.post("/api/explain", files={"file": ("notes.txt", b"not a picture\n", "text/plain")},
                    data={"method": "gradcam"})
    assert r.status_code == 400
    assert r.json()["detail"] == ("notes.txt: not an image file. Upload a photo (PNG, JPEG, WebP, "
                                  "GIF, BMP or TIFF).")
    truncated = _png_bytes(30, 40)[:60]
    r = client.post("/api/explain", files={"file": ("cut.png", truncated, "image/png")})
    assert r.status_code == 400 and r.json()["detail"].startswith("cut.png: the image is damaged")
    r = client.post("/api/explain", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and r.json()["detail"] == "empty.png: the file is empty"
    r = client.post("/api/explain", files={"file": ("ok.png", _png_bytes(16, 16), "image/png")})
    assert r.status_code == 200


def test_a_huge_decoded_image_is_refused(model):
    app = create_app(model, preprocess="unit", max_pixels=100 * 100)
    with TestClient(app) as c:
        r = c.post("/api/explain", files={"file": ("wide.png", _png_bytes(100, 101), "image/png")})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("wide.png: the image is 101x100 pixels; the app takes up to 0.01 megapixels")


@pytest.mark.parametrize(
    "form, message",
    [
        ({"photo": "coffee", "method": "gradcom"}, "no method 'gradcom'. Did you mean 'gradcam'"),
        ({"photo": "coffee", "layer": "conv3"}, "no layer 'conv3' in small. Did you mean"),
        ({"photo": "coffee", "target": "4"}, "target class 4 is out of range: the model has 4 classes"),
        ({"photo": "coffee", "target": "dog"}, "bad target 'dog': use top or a class index"),
        ({"method": "gradcam"}, "no image: upload a file or choose a bundled photo"),
    ],
)
def test_bad_requests_say_what_is_wrong(client, form, message):
    r = client.post("/api/explain", data=form)
    assert r.status_code == 400
    assert r.json()["detail"].startswith(message)


def test_feature_maps_of_a_chosen_layer(client):
    r = client.post("/api/features", data={"photo": "chelsea", "layer": "conv1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["layer"] == "conv1" and body["shape"] == [16, 16, 6] and body["channels_shown"] == 6
    assert _decode(body["grid"]).size[0] > 100
    auto = client.post("/api/features", data={"photo": "chelsea"}).json()
    assert auto["layer"] == "conv2" and auto["shape"] == [16, 16, 8]


def test_bundled_photos_and_the_page(client):
    r = client.get("/api/photo/chelsea")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (451, 300)
    r = client.get("/api/photo/dog")
    assert r.status_code == 404 and "no bundled photo 'dog'" in r.json()["detail"]
    page = client.get("/")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text and "@import" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # FastAPI's own docs pages load Swagger UI from a CDN: they are off
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_serve_binds_loopback_and_warns_for_every_address(tmp_path, model, monkeypatch):
    import uvicorn

    from camlens.app import serve

    path = tmp_path / "small.keras"
    model.save(path)
    calls = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: calls.append(
        (self.config.app, {"host": self.config.host, "port": self.config.port})))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the default
        serve(str(path), preprocess="unit")
    app, kw = calls[-1]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 7860
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/info").status_code == 200
    with TestClient(app, base_url="http://localhost:7860") as c:
        assert c.get("/api/info").status_code == 200
    with TestClient(app, base_url="http://rebound.example:7860") as c:  # DNS rebinding
        r = c.get("/api/info")
        assert r.status_code == 400 and "unexpected Host" in r.json()["detail"]
    with pytest.warns(UserWarning, match="binding 0.0.0.0: anyone who can reach"):
        serve(str(path), host="0.0.0.0", port=8000)
    app, kw = calls[-1]
    assert kw["host"] == "0.0.0.0" and kw["port"] == 8000


def test_cli_app_says_how_to_install_fastapi(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "camlens.app" or m.startswith("camlens.app.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    assert main(["app"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "camlens[app]"' in err and "fastapi is missing" in err


def test_cli_app_refuses_preprocess_for_the_bundled_model(capsys):
    assert main(["app", "--preprocess", "unit"]) == 2
    assert "drop --preprocess" in capsys.readouterr().err


def test_bundled_model_info():
    # only /api/info and the image preparation: explaining it is test_demo's job (and costs a
    # JIT compile of the whole model under JAX)
    app = create_app()
    with TestClient(app) as c:
        info = c.get("/api/info").json()
    assert info["model"].startswith("EfficientNet-Lite0") and info["classes"] == 1000
    auto = [row["path"] for row in info["layers"] if row["auto"]]
    assert auto == ["head_relu"] and info["layers"][-1]["path"] == "head_relu"
    assert info["auto_layer"] == ["head_relu"] and info["layer_reason"].startswith("head_relu")
    session = app.state.session
    assert session.class_name(967) == "espresso"
    prepared = session.prepare(samples.photo("coffee"))  # 600x400: short side to 256, centre 224
    assert prepared.shown.shape == (224, 224, 3) and prepared.shown.dtype == np.uint8
    assert prepared.x.shape == (224, 224, 3) and -1.0 <= prepared.x.min() < prepared.x.max() <= 1.0


# ---------------------------------------------------------------- the page in Chromium


@pytest.fixture
def live_app(model):
    """The app served by uvicorn in a thread, on a port the OS picked."""
    import uvicorn

    app = create_app(model, preprocess="unit", class_names=CLASSES, max_upload_bytes=LIMIT,
                     allowed_hosts=["127.0.0.1"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("CAMLENS_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"the browser test drives {CHROMIUM} (apt-get install chromium)")
def test_page_in_chromium_uploads_explains_and_survives_a_text_file(live_app, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "photo.png"
    photo.write_bytes(_png_bytes(30, 40, seed=1))
    other = tmp_path / "other.png"
    other.write_bytes(_png_bytes(48, 48, seed=2))
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (LIMIT + 10 * 1024))

    # the overlay <img> has loaded a picture of the upload's width (not the last one's)
    overlay_ready = """(width) => {
        const img = document.querySelector('#overlay');
        return !document.querySelector('#results').hidden && img.complete && img.naturalWidth === width
            && document.querySelector('#status').textContent.includes('took');
    }"""
    console, page_errors, foreign = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.set_default_timeout(15_000)
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((live_app, "data:")) else foreign.append(r.url))
            page.goto(live_app)
            page.wait_for_function("() => !document.querySelector('#explain').disabled")
            assert page.text_content("#model") == "small"
            options = page.eval_on_selector_all("#layer option", "os => os.map(o => [o.value, o.textContent])")
            assert options == [["conv1", "conv1 16x16x6"], ["auto", "conv2 16x16x8  (auto)"]]

            # an upload, a method, explain: the overlay appears
            # the first bundled photo is preselected and shown
            page.wait_for_function("() => document.querySelector('#preview').naturalWidth > 0")
            assert page.input_value("#photo") == "chelsea" and page.is_visible("#preview")
            page.set_input_files("#file", str(photo))
            assert page.is_hidden("#preview") and page.input_value("#photo") == ""
            page.select_option("#method", "gradcam++")
            page.click("#explain")
            page.wait_for_function(overlay_ready, arg=40, timeout=15_000)
            assert page.eval_on_selector("#overlay", "i => [i.naturalWidth, i.naturalHeight]") == [40, 30]
            assert page.is_hidden("#error")
            assert "gradcam++ at conv2" in page.text_content("#overlay-caption")
            targets = page.eval_on_selector_all("#target option", "os => os.map(o => o.textContent)")
            assert len(targets) == 5 and targets[0] == "top class"
            assert {t.split(" (")[0] for t in targets[1:]} == set(CLASSES)
            page.select_option("#feature-layer", "conv1")
            page.click("#show-features")
            page.wait_for_function("() => document.querySelector('#grid').naturalWidth > 0")
            _shot(page, tmp_path, "app-overlay.png")

            # a text file: a message on the page, and the app keeps serving
            page.set_input_files("#file", str(text))
            page.click("#explain")
            page.wait_for_selector("#error:not([hidden])")
            assert page.text_content("#error") == (
                "notes.txt: not an image file. Upload a photo (PNG, JPEG, WebP, GIF, BMP or TIFF).")
            assert page.is_hidden("#results") and page.is_hidden("#features")
            _shot(page, tmp_path, "app-error.png")

            # too large: refused in the page, before any upload
            page.set_input_files("#file", str(big))
            page.wait_for_function("() => document.querySelector('#error').textContent.startsWith('big.png')")
            assert page.text_content("#error") == "big.png is 74 KB; the limit is 64 KB."

            page.set_input_files("#file", str(other))
            page.select_option("#method", "gradcam")
            page.select_option("#layer", "conv1")
            page.click("#explain")
            page.wait_for_function(overlay_ready, arg=48, timeout=15_000)
            assert page.is_hidden("#error")
            assert page.eval_on_selector("#overlay", "i => i.naturalHeight") == 48
            assert "gradcam at conv1" in page.text_content("#overlay-caption")
            _shot(page, tmp_path, "app-again.png")
        finally:
            browser.close()

    assert page_errors == []
    assert foreign == []
    errors = [text for kind, text in console if kind == "error"]
    # the one expected: Chromium logs the 400 answer to the text file
    assert [e for e in errors if "status of 400" not in e] == []
    assert len(errors) == 1
    for name in ("app-overlay.png", "app-error.png", "app-again.png"):
        assert (tmp_path / name).stat().st_size > 5_000
