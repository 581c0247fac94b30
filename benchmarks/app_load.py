"""Load on ``camlens app``: the app served by ``camlens app`` (the bundled
EfficientNet-Lite0; ``--smoke``: a tiny Keras model) on a free port of 127.0.0.1, a number of
explain requests from several clients at once (Grad-CAM and the other fast methods, on small
photos from scikit-image uploaded as JPEG), then a request fuzz (odd targets and methods, huge
fields, wrong content types, missing file names, empty bodies). It prints the answers by status,
the latency, the server's peak RSS, and whether it still serves afterwards.

    python benchmarks/app_load.py                           # 200 requests, 8 at a time
    python benchmarks/app_load.py --requests 60 --concurrency 4 --fuzz 100
    python benchmarks/app_load.py --smoke                   # a tiny model, 24 requests

Every load request is a valid one, so any answer but 200 is an error; the fuzz must get no 5xx.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- requests


def multipart(fields: list[tuple[str, Any]], boundary: str = "camlensbound") -> tuple[bytes, str]:
    """A multipart/form-data body of ``(name, text)`` and ``(name, (file name, bytes))`` fields,
    written out by hand so that a test can send what no client library would."""
    out = []
    for name, value in fields:
        if isinstance(value, tuple):
            fname, data = value
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                       f'filename="{fname}"\r\nContent-Type: image/png\r\n\r\n'.encode("utf-8")
                       + data + b"\r\n")
        else:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                       .encode("utf-8") + value.encode("utf-8", "surrogatepass") + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def fuzz_requests(rng: random.Random, count: int, image: bytes, limit: int,
                  layers: tuple[str, ...] = ("conv1", "conv2")) -> list[dict[str, Any]]:
    """``count`` odd requests to the app, as ``http.client`` ``request()`` arguments: targets,
    methods, layers and photo names of every odd kind, huge fields, wrong content types,
    missing file names, empty and broken bodies, a field twice, another site's Origin.
    ``image`` is a small valid upload, ``limit`` the app's upload limit, ``layers`` real
    layer names of the model."""
    targets = ["top", "TOP", " 2 ", "", "-1", "4", "-0", "²", "٣", "1.0", "1e3", "0x1", "9" * 5000,
               "9" * 100, "\x00", "🐱", "top\n", "3" * 19, "1_0", "+1"]
    methods = ["gradcam", "Grad-CAM++", "saliency", "layercam", "gradcom", "", " ", "../etc",
               "é" * 10, "x" * 5000, "\x00", "cam", "eigencam"]
    odd_layers = ["auto", *layers, f"{layers[-1]}#0", f"{layers[-1]}#9", f"{layers[-1]}#-1",
                  f"{layers[-1]}#x", "#", "", "conv3", "x" * 3000, "input_layer", "dense"]
    photos = ["coffee", "chelsea", "", "dog", "../../etc/passwd", "coffee\x00", "x" * 2000]
    files = [("a.png", image), ("", image), ("cut.png", image[:40]), ("e.png", b""),
             ("t.txt", b"hello"), ("x" * 300 + ".png", image), ("../../evil.png", image),
             ("big.png", b"\0" * (limit + 1))]
    requests = []
    for _ in range(count):
        kind = rng.choice(["form", "form", "form", "upload", "upload", "content", "empty", "features"])
        path = "/api/features" if kind == "features" else "/api/explain"
        fields: list[tuple[str, Any]] = []
        if kind == "upload":
            fields.append(("file", rng.choice(files)))
        elif rng.random() < 0.9:
            fields.append(("photo", rng.choice(photos)))
        for name, choices in (("method", methods), ("layer", odd_layers), ("target", targets)):
            if rng.random() < 0.7:
                fields.append((name, rng.choice(choices)))
        if rng.random() < 0.1 and fields:
            fields.append(rng.choice(fields))  # a field twice
        headers = {}
        if kind == "empty":
            body, headers["Content-Type"] = b"", rng.choice(
                ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/plain"])
        elif kind == "content":
            body = rng.choice([b'{"photo": "coffee"}', b"photo=coffee", b"--x\r\ngarbage", b"\xff" * 100])
            headers["Content-Type"] = rng.choice(["application/json", "text/plain", "image/png",
                                                  "multipart/form-data", "multipart/form-data; boundary=x",
                                                  "application/x-www-form-urlencoded; charset=latin-1"])
        elif rng.random() < 0.5 and kind != "upload":
            body = urllib.parse.urlencode([(k, v) for k, v in fields if isinstance(v, str)]).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body, headers["Content-Type"] = multipart(fields)
        if rng.random() < 0.05:
            headers["Origin"] = "http://evil.example"
        requests.append({"method": "POST", "url": path, "body": body, "headers": headers})
    return requests


def send(port: int, request: dict[str, Any], timeout: float = 300) -> tuple[int, float]:
    """``(status, seconds)`` of one request on a fresh connection; status 0 when the
    connection failed (reset, refused, timed out)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(**request)
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - start


def photos(side: int = 320) -> list[tuple[str, bytes]]:
    """scikit-image's astronaut, coffee and chelsea, long side cut to ``side``, as JPEG."""
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(data, name)())
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append((f"{name}.jpg", buf.getvalue()))
    return out


def serving(port: int) -> bool:
    """Whether the app still answers: its info, and one Grad-CAM of a bundled photo."""
    info, _ = send(port, {"method": "GET", "url": "/api/info"}, timeout=60)
    explained, _ = send(port, {"method": "POST", "url": "/api/explain", "body": b"photo=coffee&method=gradcam",
                               "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, timeout=120)
    return info == 200 and explained == 200


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model(folder: Path) -> Path:
    """A small Keras classifier as a ``.keras`` file (``--smoke``)."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    out = L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(h))
    path = folder / "tiny.keras"
    keras.Model(inp, out, name="tiny").save(path)
    return path


class App:
    """``camlens app`` in a child process on a free port, until :meth:`stop`."""

    def __init__(self, model: Path | None, max_upload_mb: float = 1.0) -> None:
        self.port = _free_port()
        # what the ``camlens`` command runs
        args = [sys.executable, "-c", "import sys; from camlens.cli import main; sys.exit(main(sys.argv[1:]))", "app"]
        if model is not None:
            args += [str(model), "--preprocess", "unit"]
        args += ["--port", str(self.port), "--max-upload-mb", str(max_upload_mb)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        env.setdefault("KERAS_BACKEND", "tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("camlens app exited: " + "".join(self.log)[-2000:])
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("camlens app did not start within 180 s")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident set size (the kernel's VmHWM), in MiB; None off Linux."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(requests: int = 200, concurrency: int = 8, fuzz: int = 200, smoke: bool = False,
        seed: int = 14) -> dict[str, Any]:
    """Serve the app, send the load, then the fuzz; the figures as a dict."""
    rng = random.Random(seed)
    pictures = photos(96 if smoke else 320)
    with tempfile.TemporaryDirectory() as tmp:
        app = App(_tiny_model(Path(tmp)) if smoke else None)
        try:
            port = app.port
            info_status, _ = send(port, {"method": "GET", "url": "/api/info"})
            import json

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/info")
            info = json.loads(conn.getresponse().read())
            conn.close()
            fast = [m["name"] for m in info["methods"] if not m["slow"]]
            layers = tuple(row["path"] for row in info["layers"])
            load, chosen = [], []
            for i in range(requests):
                name, data = rng.choice(pictures)
                method = "gradcam" if i % 2 == 0 else rng.choice(fast)
                chosen.append(method)
                body, ctype = multipart([("file", (name, data)), ("method", method), ("target", "top")])
                headers = {"Content-Type": ctype}
                if i % 3 == 0:  # as the page sends it
                    headers.update({"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
                load.append({"method": "POST", "url": "/api/explain", "body": body, "headers": headers})
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(lambda r: send(port, r), load))
            wall = time.perf_counter() - start
            load_serving = serving(port)
            fuzzed = fuzz_requests(rng, fuzz, pictures[0][1], 1024 * 1024, layers or ("conv",))
            with ThreadPoolExecutor(concurrency) as pool:
                fuzz_answers = [s for s, _ in pool.map(lambda r: send(port, r), fuzzed)]
            fuzz_serving = serving(port)
            rss = app.peak_rss_mb()
        finally:
            app.stop()
    statuses = collections.Counter(s for s, _ in answers)
    latencies = [t for s, t in answers if s == 200]
    per_method: dict[str, list[float]] = collections.defaultdict(list)
    for m, (s, t) in zip(chosen, answers):
        per_method[m].append(t)
    return {
        "model": info.get("model"), "requests": requests, "concurrency": concurrency,
        "statuses": dict(sorted(statuses.items())), "errors": sum(n for s, n in statuses.items() if s != 200),
        "p50_ms": 1000 * _percentile(latencies, 50) if latencies else None,
        "p95_ms": 1000 * _percentile(latencies, 95) if latencies else None,
        "wall_s": wall, "peak_rss_mb": rss, "serving_after_load": load_serving,
        "fuzz": fuzz, "fuzz_statuses": dict(sorted(collections.Counter(fuzz_answers).items())),
        "fuzz_5xx": sum(1 for s in fuzz_answers if s >= 500 or s == 0),
        "serving_after_fuzz": fuzz_serving, "info_status": info_status,
        "methods": {m: {"requests": len(ts), "median_ms": 1000 * _percentile(ts, 50), "max_ms": 1000 * max(ts)}
                    for m, ts in sorted(per_method.items())},
    }


def _fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="load requests (default 200; --smoke 24)")
    parser.add_argument("--concurrency", type=int, default=None, help="clients at once (default 8; --smoke 4)")
    parser.add_argument("--fuzz", type=int, default=None, help="fuzz requests (default 200; --smoke 40)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, fewer requests (CI)")
    args = parser.parse_args(argv)
    requests = args.requests or (24 if args.smoke else 200)
    concurrency = args.concurrency or (4 if args.smoke else 8)
    fuzz = args.fuzz if args.fuzz is not None else (40 if args.smoke else 200)
    r = run(requests, concurrency, fuzz, smoke=args.smoke)
    statuses = ", ".join(f"{s or 'failed'}: {n}" for s, n in r["statuses"].items())
    fuzz_statuses = ", ".join(f"{s or 'failed'}: {n}" for s, n in r["fuzz_statuses"].items())
    print(f"camlens app, {r['model']}, on 127.0.0.1 ({os.cpu_count()} CPUs)")
    print(f"{'run':<6} {'requests':>8} {'clients':>7} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'wall s':>7} {'peak RSS MB':>11} {'serving after':>13}  answers")
    print("-" * 100)
    print(f"{'load':<6} {requests:>8} {concurrency:>7} {r['errors']:>6} {_fmt(r['p50_ms']):>8} "
          f"{_fmt(r['p95_ms']):>8} {r['wall_s']:>7.1f} {_fmt(r['peak_rss_mb']):>11} "
          f"{'yes' if r['serving_after_load'] else 'NO':>13}  {statuses}")
    print(f"{'fuzz':<6} {fuzz:>8} {concurrency:>7} {r['fuzz_5xx']:>6} {'-':>8} {'-':>8} {'-':>7} "
          f"{_fmt(r['peak_rss_mb']):>11} {'yes' if r['serving_after_fuzz'] else 'NO':>13}  {fuzz_statuses}")
    print("errors: load answers other than 200; for the fuzz, 5xx answers and failed connections")
    print("latency: from sending to the whole answer, waiting for the model included (it explains one")
    print("request at a time), so it grows with the clients; per method of the load run:")
    print(f"{'method':<22} {'requests':>8} {'median ms':>9} {'max ms':>8}")
    for m, row in r["methods"].items():
        print(f"{m:<22} {row['requests']:>8} {row['median_ms']:>9.0f} {row['max_ms']:>8.0f}")
    ok = r["errors"] == 0 and r["fuzz_5xx"] == 0 and r["serving_after_load"] and r["serving_after_fuzz"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
