"""The FastAPI app: one hand-written page and a small JSON API over :class:`AppModel`.

Nothing is fetched from elsewhere: the page has no external scripts, styles or fonts, a
Content-Security-Policy keeps it that way, and FastAPI's Swagger/ReDoc pages (which load their
assets from a CDN) are switched off.
"""

import base64
import hashlib
import ipaddress
import json
import logging
import re
import sys
import threading
import warnings
from importlib import resources
from typing import Any, Callable, Optional, Sequence

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..io import ImageError
from ._session import DISPLAY_SIDE, AppModel, Prepared, _fit, decode_image, png_bytes

__all__ = ["create_app", "serve", "MAX_UPLOAD_BYTES", "MAX_PIXELS"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: decoded size limit: a small, highly compressed file can still be a huge image
MAX_PIXELS = 40_000_000
#: room for the multipart framing and the small form fields around the file
_FORM_SLACK = 64 * 1024

_log = logging.getLogger("camlens.app")


def _page() -> tuple[str, str]:
    """The page and its Content-Security-Policy, which allows only the page's own inline script
    and style (by hash), images from the app and data URLs, and requests to the app."""
    html = resources.files("camlens.app").joinpath("page.html").read_text("utf-8")

    def digest(tag: str) -> str:
        m = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        if m is None:  # pragma: no cover - guards the shipped page
            raise RuntimeError(f"page.html has no <{tag}> block")
        return "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode("utf-8")).digest()).decode() + "'"

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html, csp


class _Guard:
    """ASGI middleware: refuses request bodies over ``limit`` bytes with 413 before they are
    read whole (by Content-Length, or by counting when there is none), and, when
    ``allowed_hosts`` is given, requests for other Host names (DNS rebinding)."""

    def __init__(self, app: Any, limit: int, message: str, allowed_hosts: Optional[Sequence[str]]) -> None:
        self.app = app
        self.limit = limit
        self.message = message
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def _answer(self, send: Callable, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.allowed is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
            if name not in self.allowed:
                await self._answer(send, 400, f"unexpected Host {host!r}: open the app at the address it printed")
                return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._answer(send, 413, self.message)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if over:  # whatever the app made of a cut-off body gives way to the 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._answer(send, 413, self.message)


class _TooLarge(Exception):
    pass


def _mb(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MB"


def create_app(
    model: Any = None,
    *,
    preprocess: "str | Callable[[np.ndarray], np.ndarray] | None" = None,
    class_names: Optional[Sequence[str]] = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    name: Optional[str] = None,
    allowed_hosts: Optional[Sequence[str]] = None,
    input_size: Optional[tuple[int, int]] = None,
) -> FastAPI:
    """The camlens web app for ``model`` as a FastAPI application (serve it with uvicorn, or
    use :func:`serve`).

    Args:
        model: a Keras model taking one image batch ``(N, H, W, c)`` or a torch module taking
            ``(N, c, H, W)``; ``None`` for the bundled EfficientNet-Lite0 with ImageNet weights
            and class names. It is left as it was.
        preprocess: pixel scaling the model expects, "none" (0..255, default), "unit" (0..1),
            "symmetric" (-1..1), "imagenet" (torchvision's mean and std), or a function of
            float32 pixels ``(H, W, c)`` in 0..255, applied after resizing to the model's input
            size.
        class_names: one name per output class, shown instead of "class 3".
        max_upload_bytes: the largest upload accepted; larger ones get 413.
        max_pixels: the largest decoded image (width x height) accepted.
        name: the model's name on the page (default: the model's own).
        allowed_hosts: Host names the app answers to (``serve`` passes the loopback names when
            it binds a loopback address, against DNS rebinding); ``None`` answers any.
        input_size: ``(H, W)`` photos are resized to, for a model without a fixed input size;
            a torch module needs it.

    Endpoints: ``GET /`` the page; ``GET /api/info`` model, methods, layer candidates (the
    automatic one marked, with the reason) and bundled photos; ``GET /api/photo/{name}`` a
    bundled photo as PNG; ``POST /api/explain`` (form: ``file`` or ``photo``, ``method``,
    ``layer``, ``target`` = "top" or a class index) the overlay, heatmap and top classes;
    ``POST /api/features`` (form: ``file`` or ``photo``, ``layer``) the feature-map grid.
    """
    from .. import samples

    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be a positive whole number; got {max_upload_bytes!r}")
    session = AppModel(model, preprocess=preprocess, class_names=class_names, name=name,
                       input_size=input_size)
    html, csp = _page()
    too_large = f"the upload is larger than the limit of {_mb(max_upload_bytes)}"

    app = FastAPI(title="camlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, limit=max_upload_bytes + _FORM_SLACK, message=too_large,
                       allowed_hosts=allowed_hosts)
    app.state.session = session

    info = session.info()
    info["photos"] = [{"name": n, "about": about} for n, (about, _) in samples.PHOTOS.items()]
    info["max_upload_bytes"] = max_upload_bytes
    info["max_pixels"] = max_pixels

    photo_cache: dict[str, np.ndarray] = {}
    # a decoded 40-megapixel image takes about half a gigabyte as floats: a few at a time
    decoding = threading.BoundedSemaphore(2)

    def decode(data: bytes, filename: str) -> np.ndarray:
        with decoding:
            return decode_image(data, filename, max_pixels)

    def photo(name: str) -> np.ndarray:
        if name not in photo_cache:
            try:
                photo_cache[name] = samples.photo(name)
            except ValueError as exc:
                raise HTTPException(404, str(exc)) from None
            except ImportError as exc:
                raise HTTPException(404, f"the photo {name!r} is not installed: {exc}") from None
        return photo_cache[name]

    async def image_of(file: Optional[UploadFile], photo_name: str) -> Prepared:
        if file is not None and file.filename:
            data = await file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"{file.filename} is larger than the limit of {_mb(max_upload_bytes)}")
            try:
                pixels = await run_in_threadpool(decode, data, file.filename)
            except ImageError as exc:
                raise HTTPException(400, str(exc)) from None
        elif photo_name:
            pixels = photo(photo_name)
        else:
            raise HTTPException(400, "no image: upload a file or choose a bundled photo")
        return await run_in_threadpool(session.prepare, pixels)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
            raise HTTPException(400, str(exc).strip("'\"")) from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp,
                                           "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer",
                                           "Cache-Control": "no-store"})

    @app.get("/api/info")
    def api_info() -> dict:
        return info

    @app.get("/api/photo/{name}")
    def api_photo(name: str) -> Response:
        return Response(png_bytes(_fit(photo(name), DISPLAY_SIDE)), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/explain")
    async def api_explain(
        file: Optional[UploadFile] = File(None),
        photo: str = Form(""),
        method: str = Form("gradcam"),
        layer: str = Form("auto"),
        target: str = Form("top"),
    ) -> dict:
        text = target.strip().lower()
        if text in ("", "top"):
            tgt = None
        elif text.lstrip("-").isdigit():
            tgt = int(text)
        else:
            raise HTTPException(400, f"bad target {target!r}: use top or a class index")
        prepared = await image_of(file, photo)
        return await run(session.explain, prepared, method, layer, tgt)

    @app.post("/api/features")
    async def api_features(
        file: Optional[UploadFile] = File(None),
        photo: str = Form(""),
        layer: str = Form("auto"),
    ) -> dict:
        prepared = await image_of(file, photo)
        return await run(session.features, prepared, layer)

    @app.exception_handler(Exception)
    async def unexpected(request: Any, exc: Exception) -> JSONResponse:
        # the page shows the message; the server log keeps the traceback; serving goes on
        _log.exception("camlens app: %s failed", request.url.path)
        return JSONResponse({"detail": f"camlens failed: {type(exc).__name__}: {exc}"}, status_code=500)

    return app


_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model_path: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    preprocess: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    log_level: str = "warning",
    input_size: Optional[tuple[int, int]] = None,
) -> None:
    """Load ``model_path`` (a ``.keras``/``.h5`` file or ``FILE.py:NAME``, see
    :func:`camlens.io.load_model`; ``None`` for the bundled model) and serve
    the app on ``host:port`` until interrupted. Binds 127.0.0.1 by default: only this computer
    can reach the app. Another address (``0.0.0.0``) lets anyone on the network upload images
    and run the model; that is warned about."""
    import uvicorn

    model = None
    if model_path is not None:
        from ..io import load_model

        model = load_model(model_path)
    loopback = _is_loopback(host)
    if not loopback:
        warnings.warn(
            f"binding {host}: anyone who can reach this machine on port {port} can use the app "
            "and run the model. Use the default 127.0.0.1 to keep it local.",
            stacklevel=2,
        )
    hosts = list(_LOOPBACK_NAMES) + [host] if loopback else None
    app = create_app(model, preprocess=preprocess, class_names=class_names,
                     max_upload_bytes=max_upload_bytes, allowed_hosts=hosts, input_size=input_size)
    shown = f"[{host}]" if ":" in host else host
    print(f"camlens app: {app.state.session.name} on http://{shown}:{port}/  (Ctrl+C stops it)",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
