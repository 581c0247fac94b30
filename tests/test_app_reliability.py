"""``camlens app`` under hostile or careless clients (issue 14): another site's page posting
to it (CSRF), odd and huge form fields, a client that goes away mid-request, a request that
runs too long, Ctrl+C while a request runs, and a request fuzz with concurrent clients.

A registered method, ``test-slow``, stands in for a slow one (Score-CAM on a large model): it
reruns the model many times, a batch at a time, sleeping between batches, and counts its steps,
so a test sees whether it is still running. It is removed from the registry afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import camlens
from camlens.app import create_app
from camlens.methods.base import _REGISTRY as METHODS
from keras_models import small_classifier
from test_app import CLASSES, LIMIT, _png_bytes

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using .httpx. with .starlette\.testclient")
    from fastapi.testclient import TestClient

#: steps of test-slow: about 20 s if nothing stops it, so a test of today's code fails, not hangs
SLOW_STEPS = 2000

SLOW_METHOD = '''
import sys
import threading
import time

import numpy as np

from camlens.methods import PixelMethod, register


@register
class Slow(PixelMethod):
    """Reruns the model SLOW_STEPS times, one copy at a time, with a pause before each."""

    name = "test-slow"
    cost = "a test's method: reruns the model many times"
    steps = 0
    started = threading.Event()

    def attribute(self, data):
        for _ in range(SLOW_STEPS):
            type(self).steps += 1
            if not type(self).started.is_set():
                print("test-slow: started", file=sys.stderr, flush=True)
                type(self).started.set()
            time.sleep(0.01)
            data.score(0, data.images[:1])
        return np.zeros(data.images.shape[:3] + (1,), np.float32), {}
'''.replace("SLOW_STEPS", str(SLOW_STEPS))


@pytest.fixture(scope="module")
def slow() -> Iterator[type]:
    """The test-slow method's class (its ``steps`` count and ``started`` event)."""
    space: dict[str, Any] = {}
    exec(compile(SLOW_METHOD, "<test-slow>", "exec"), space)
    yield space["Slow"]
    METHODS.remove("test-slow")


@pytest.fixture(scope="module")
def model():
    return small_classifier()


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, preprocess="unit", class_names=CLASSES, max_upload_bytes=LIMIT)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port of 127.0.0.1; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _settled(slow: type, within: float = 3.0) -> bool:
    """Whether test-slow stops counting steps within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = slow.steps
        time.sleep(0.3)
        if slow.steps == before:
            return True
    return False


# ---------------------------------------------------------------- another site's page (CSRF)


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:8000"},          # another local server: another origin
    {"Origin": "http://localhost:7860"},          # opened as 127.0.0.1, so not its page
    {"Origin": "null"},                           # a sandboxed frame or a file:// page
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},              # another port of localhost is same-site
    {"Origin": "http://127.0.0.1:7860", "Sec-Fetch-Site": "cross-site"},
])
def test_a_post_from_another_sites_page_is_refused(client, headers):
    for path, form in (("/api/explain", {"photo": "coffee", "method": "gradcam"}),
                       ("/api/features", {"photo": "coffee"})):
        r = client.post(path, data=form, headers=headers)
        assert r.status_code == 403, (path, headers, r.text)
        assert r.json()["detail"].startswith("refused a request from")
        assert r.json()["detail"].endswith("the camlens app takes requests from its own page only")


@pytest.mark.parametrize("headers", [
    {},                                                          # not a browser (curl, a script)
    {"Origin": "http://127.0.0.1:7860", "Sec-Fetch-Site": "same-origin"},   # the app's own page
    {"Origin": "HTTP://127.0.0.1:7860"},
    {"Sec-Fetch-Site": "none"},                                  # the user's own action
])
def test_a_post_from_the_apps_own_page_is_served(client, headers):
    r = client.post("/api/explain", data={"photo": "coffee", "method": "gradcam"}, headers=headers)
    assert r.status_code == 200, r.text


def test_reading_from_another_site_is_left_to_the_browser(client):
    # a GET changes nothing: the browser keeps another site from reading the answer
    r = client.get("/api/info", headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------- odd form fields


@pytest.mark.parametrize("target, message", [
    ("²", "bad target '²': use top or a class index"),           # str.isdigit, but int() fails
    ("٣", "bad target '٣': use top or a class index"),           # int() takes it as 3
    ("9" * 5000, "the target field is 5000 characters long; the app takes up to 1000"),
    ("9" * 999, "target class '9999999999"),                    # over int()'s 4,300-digit limit
    ("-" + "9" * 30, "target class '-99999999"),
    ("1.5", "bad target '1.5'"),
    ("3\x00", "bad target '3\\x00'"),
])
def test_odd_targets_get_400_and_the_next_request_is_served(client, target, message):
    r = client.post("/api/explain", data={"photo": "coffee", "target": target})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail.startswith(message) and len(detail) < 200, detail
    assert client.post("/api/explain", data={"photo": "coffee", "target": "top"}).status_code == 200


@pytest.mark.parametrize("field", ["method", "layer", "photo"])
def test_a_huge_field_gets_400_without_being_echoed(client, field):
    r = client.post("/api/explain", data={"photo": "coffee", field: "x" * 50_000})
    assert r.status_code == 400
    assert r.json()["detail"] == f"the {field} field is 50000 characters long; the app takes up to 1000"


def test_a_file_field_without_a_file_name_gets_400_without_the_bytes(client):
    data = b"\x89PNG-secret-pixels-" + bytes(range(256))
    for path in ("/api/explain", "/api/features"):
        r = client.post(path, files={"file": ("", data, "image/png")})
        assert r.status_code == 400, r.text
        assert r.json()["detail"] == ("the file field is not a file upload (it has no file name): "
                                      "choose the image as a file")
        assert b"secret" not in r.content
    r = client.post("/api/explain", data={"file": "not a file"})
    assert r.status_code == 400 and "not a file upload" in r.json()["detail"]


# ---------------------------------------------------------------- work that must stop


def test_a_request_over_the_time_limit_stops_and_frees_the_model(model, slow):
    app = create_app(model, preprocess="unit", time_limit=0.5)
    with TestClient(app) as c:
        start = time.monotonic()
        r = c.post("/api/explain", data={"photo": "coffee", "method": "test-slow"})
        took = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert r.json()["detail"] == ("the request took longer than the app's limit of 0.5 s: "
                                      "choose a faster method or a smaller model")
        assert took < 5, took
        assert _settled(slow), "test-slow kept running after its request was answered"
        assert slow.steps < SLOW_STEPS / 2
        assert not app.state.session.lock.locked() and not app.state.jobs
        assert c.post("/api/explain", data={"photo": "coffee", "method": "gradcam"}).status_code == 200


def test_an_abandoned_request_releases_the_model(model, slow):
    app = create_app(model, preprocess="unit", allowed_hosts=["127.0.0.1"])
    session = app.state.session
    with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        body = urllib.parse.urlencode({"photo": "coffee", "method": "test-slow"}).encode()
        slow.started.clear()
        before = slow.steps
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert slow.started.wait(20), "test-slow did not start"
        # the client is gone: the method stops at its next batch and lets go of the model
        assert _settled(slow), "test-slow kept running for a client that went away"
        assert slow.steps - before < SLOW_STEPS / 2
        deadline = time.monotonic() + 3
        while session.lock.locked() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not session.lock.locked()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("POST", "/api/explain", urllib.parse.urlencode({"photo": "coffee"}),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        assert conn.getresponse().status == 200
        conn.close()


TORCH_MODEL = '''
import torch


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()
'''

SERVE_SCRIPT = '''
import sys

{method}

from camlens.app import serve

try:
    serve({spec!r}, port={port}, preprocess="unit", input_size=(16, 16))
except KeyboardInterrupt:
    sys.exit(130)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_the_app_while_a_request_runs(tmp_path):
    # a small torch module: the app's process starts in seconds (no TensorFlow to load), and
    # stopping does not depend on the framework (the check is in camlens' batch loop)
    pytest.importorskip("torch")
    (tmp_path / "tiny.py").write_text(TORCH_MODEL)
    port = _free_port()
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT.format(method=SLOW_METHOD, spec=f"{tmp_path / 'tiny.py'}:model", port=port))
    src = str(Path(camlens.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []  # (when, line) of the app's stderr
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stderr),
                              daemon=True)
    reader.start()
    answers: list[Any] = []

    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/explain", urllib.parse.urlencode(
                {"photo": "coffee", "method": "test-slow"}),
                {"Content-Type": "application/x-www-form-urlencoded"})
            answers.append(conn.getresponse().status)
        except OSError as exc:  # the server may close the connection as it stops
            answers.append(exc)

    try:
        deadline = time.monotonic() + 90
        while not any("Ctrl+C stops it" in line for _, line in lines):
            assert proc.poll() is None, "".join(line for _, line in lines)[-3000:]
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.1)
        while True:  # the banner comes just before uvicorn listens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the app does not listen"
                time.sleep(0.1)
        client = threading.Thread(target=post, daemon=True)
        client.start()
        while not any(line.startswith("test-slow: started") for _, line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "test-slow did not start"
            time.sleep(0.05)
        time.sleep(0.5)  # the request is running (test-slow alone takes 20 s)
        assert proc.poll() is None and client.is_alive() and not answers
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl+C did not stop the app within 30 s")
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(line for _, line in lines)
    stopped = [when for when, line in lines if line.startswith("camlens app: stopped by Ctrl+C")]
    assert len(stopped) == 1, err[-3000:]
    # the server has stopped and said so; what follows is the interpreter's exit (with
    # TensorFlow loaded, seconds on a busy machine: any camlens command pays it)
    assert stopped[0] - start < 2, f"the app took {stopped[0] - start:.1f} s to stop"
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    client.join(5)
    assert answers and (answers[0] == 503 or isinstance(answers[0], OSError)), answers


# ---------------------------------------------------------------- request fuzz


def _app_load() -> Any:
    """benchmarks/app_load.py, whose fuzz generator the test shares (one list of odd requests)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "app_load.py"
    spec = importlib.util.spec_from_file_location("camlens_bench_app_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _send(port: int, request: dict[str, Any]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(**request)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_request_fuzz_gets_no_5xx_and_the_app_keeps_serving(model):
    app = create_app(model, preprocess="unit", class_names=CLASSES, max_upload_bytes=LIMIT,
                     allowed_hosts=["127.0.0.1"])
    requests = _app_load().fuzz_requests(random.Random(14), 160, _png_bytes(20, 24, seed=3), LIMIT)
    start = time.monotonic()
    with served(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda r: _send(port, r), requests))
        # bytes that are not HTTP, and a body shorter than its Content-Length
        for raw in (b"GARBAGE\r\n\r\n", b"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 100\r\nContent-Type: multipart/form-data; boundary=x\r\n\r\n--x"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(raw)
                sock.shutdown(socket.SHUT_WR)
                answer = sock.recv(100)
                assert not answer or int(answer.split()[1]) < 500, answer
        assert _send(port, {"method": "GET", "url": "/api/info"}) == 200
        ok = _send(port, {"method": "POST", "url": "/api/explain", "body": b"photo=coffee",
                          "headers": {"Content-Type": "application/x-www-form-urlencoded"}})
        assert ok == 200
    took = time.monotonic() - start
    server_errors = [(s, r) for s, r in zip(statuses, requests) if s >= 500]
    assert server_errors == []
    assert {s // 100 for s in statuses} <= {2, 4}
    assert sum(s == 200 for s in statuses) >= 5 and sum(400 <= s < 500 for s in statuses) >= 50
    assert took < 60, took
    print("fuzz statuses:", sorted(collections.Counter(statuses).items()))


# ---------------------------------------------------------------- the library's hook


def test_the_batch_check_stops_explain_between_batches_and_leaves_the_model_as_it_was(model):
    """The one hook the app uses (``camlens._args.checking_batches``): what the check raises
    stops the method at its next batch, the model's patches are undone, and outside the block
    nothing is checked."""
    from camlens._args import checking_batches
    from keras_models import probe_free

    class Stop(Exception):
        pass

    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) > 2:
            raise Stop

    x = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    with checking_batches(check), pytest.raises(Stop):
        camlens.explain(model, x, method="scorecam", batch_size=1)  # one batch per channel
    assert len(checks) == 3 and probe_free(model)
    whole = camlens.explain(model, x, method="scorecam", batch_size=1)
    assert len(checks) == 3 and np.isfinite(whole.map).all()
