"""The FastAPI app: one hand-written page and a small JSON API over :class:`AppModel`.

Nothing is fetched from elsewhere: the page has no external scripts, styles or fonts, a
Content-Security-Policy keeps it that way, and FastAPI's Swagger/ReDoc pages (which load their
assets from a CDN) are switched off. Requests that change anything (every POST) are taken from
the app's own page only: another site's page in the same browser gets 403.

The model runs one request at a time, each in a thread of its own; a request whose client went
away, that ran past the time limit, or that is running when Ctrl+C stops the app stops at the
model's next batch (:class:`camlens.app._session.Job`), so it never keeps the model from the
next request or the app from stopping.
"""

import asyncio
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
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..io import MAX_PIXELS, ImageError  # the pixel budget: one for the CLI and the app
from ._session import DISPLAY_SIDE, AppModel, Cancelled, Job, Prepared, _fit, decode_image, png_bytes

__all__ = ["create_app", "serve", "MAX_UPLOAD_BYTES", "MAX_PIXELS"]

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
#: room for the multipart framing and the small form fields around the file
_FORM_SLACK = 64 * 1024
#: the longest method, layer, target or photo name taken (a layer path is far shorter)
MAX_FIELD_CHARS = 1000
#: seconds a request may keep the model (waiting included) before it is stopped with 503
TIME_LIMIT = 300.0
#: request methods that change nothing: the only ones another site's page may send
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

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


def _short(text: str, chars: int = 40) -> str:
    """``text`` quoted, cut to ``chars`` characters: a message names a bad value, never echoes
    a whole field."""
    return repr(text) if len(text) <= chars else repr(text[:chars]) + f"... ({len(text)} characters)"


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars] + "..."


def _cross_site(headers: dict[bytes, bytes]) -> Optional[str]:
    """Why a state-changing request is refused as coming from another site's page (CSRF), or
    ``None``. A browser says where a request comes from in ``Sec-Fetch-Site`` (the page's
    own fetches are ``same-origin``; ``none`` is the user's own action) and in ``Origin``,
    which for the app's own page is the address it was opened at, the ``Host`` header. A
    client that sends neither (curl, a script) is not a browser page and is let through."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        value = site.decode("latin-1").strip().lower()
        if value not in ("same-origin", "none"):
            return (f"refused a request from another site's page (Sec-Fetch-Site: {_cut(value, 40)}): "
                    "the camlens app takes requests from its own page only")
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1").strip()
        scheme, sep, netloc = text.lower().partition("://")
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if not sep or scheme not in ("http", "https") or not host or netloc.rstrip("/") != host:
            return (f"refused a request from the page at {_short(text, 100)}: the camlens app takes "
                    "requests from its own page only")
    return None


class _Guard:
    """ASGI middleware: refuses request bodies over ``limit`` bytes with 413 before they are
    read whole (by Content-Length, or by counting when there is none), state-changing
    requests from another site's page with 403 (:func:`_cross_site`), and, when
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
                await self._answer(send, 400, f"unexpected Host {_short(host, 100)}: open the app at the address it printed")
                return
        if scope.get("method", "GET") not in _SAFE_METHODS:
            refusal = _cross_site(headers)
            if refusal is not None:
                await self._answer(send, 403, refusal)
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


def _target(text: str) -> Optional[int]:
    """The form's target: ``None`` for the top class, else the class index. Only ASCII digits
    are a number here (``int`` takes "²"-like digits and refuses more than 4,300 of them);
    a number too long for any model gets the out-of-range message without being converted."""
    t = text.strip().lower()
    if t in ("", "top"):
        return None
    if re.fullmatch(r"-?[0-9]+", t) is None:
        raise HTTPException(400, f"bad target {_short(text)}: use top or a class index")
    if len(t.lstrip("-")) > 18:
        raise HTTPException(400, f"target class {_short(t)} is out of range: use top or a class index")
    return int(t)


def _field(name: str, value: str) -> str:
    if len(value) > MAX_FIELD_CHARS:
        raise HTTPException(400, f"the {name} field is {len(value)} characters long; the app takes up "
                                 f"to {MAX_FIELD_CHARS}")
    return value


def _invalid(exc: RequestValidationError) -> str:
    """A form FastAPI could not read, in a line that names the field and never repeats what
    was sent (an upload's bytes would otherwise come back in the answer)."""
    problems = []
    for error in exc.errors():
        loc = error.get("loc") or ("?",)
        field = str(loc[-1])[:40]
        if field == "file":
            problems.append("the file field is not a file upload (it has no file name): choose the "
                            "image as a file")
        else:
            problems.append(f"the {field} field: {str(error.get('msg', 'not valid'))[:120]}")
    return "; ".join(dict.fromkeys(problems)) or "the form could not be read"


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a daemon thread of its own, awaited. Unlike the shared thread pool,
    nothing waits for the thread when the app stops: a job is cancelled and gives up at its next
    batch, but one batch of a slow model must not hold up Ctrl+C."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: Optional[BaseException]) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def work() -> None:
        try:
            outcome: tuple[Any, Optional[BaseException]] = (fn(*args), None)
        except BaseException as exc:  # handed to the awaiting request
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the app stopped meanwhile
            pass

    threading.Thread(target=work, name="camlens-app-job", daemon=True).start()
    return await future


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
    time_limit: float = TIME_LIMIT,
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
        time_limit: seconds one request may keep the model (its wait for the model included);
            a longer one is stopped at the model's next batch and answered 503.

    Endpoints: ``GET /`` the page; ``GET /api/info`` model, methods, layer candidates (the
    automatic one marked, with the reason) and bundled photos; ``GET /api/photo/{name}`` a
    bundled photo as PNG; ``POST /api/explain`` (form: ``file`` or ``photo``, ``method``,
    ``layer``, ``target`` = "top" or a class index) the overlay, heatmap and top classes;
    ``POST /api/features`` (form: ``file`` or ``photo``, ``layer``) the feature-map grid.
    ``app.state.jobs`` holds the requests running now (:func:`serve` cancels them on Ctrl+C).
    """
    from .. import samples

    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be a positive whole number; got {max_upload_bytes!r}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds; got {time_limit!r}")
    session = AppModel(model, preprocess=preprocess, class_names=class_names, name=name,
                       input_size=input_size)
    html, csp = _page()
    too_large = f"the upload is larger than the limit of {_mb(max_upload_bytes)}"

    app = FastAPI(title="camlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, limit=max_upload_bytes + _FORM_SLACK, message=too_large,
                       allowed_hosts=allowed_hosts)
    app.state.session = session
    jobs: set[Job] = set()
    app.state.jobs = jobs

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
        photo_name = _field("photo", photo_name)
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

    async def run(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, job=...)`` on the model, stopped (at its next batch) when the client goes
        away, the time limit passes or the app stops."""
        job = Job()
        jobs.add(job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        work = asyncio.ensure_future(_in_thread(lambda: fn(*args, job=job)))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=0.1)
                if work.done() or job.reason is not None:
                    continue
                if await request.is_disconnected():
                    job.cancel("the client went away")
                elif loop.time() > deadline:
                    job.cancel(f"the request took longer than the app's limit of {time_limit:g} s: "
                               "choose a faster method or a smaller model")
            return work.result()
        except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
            if job.reason is not None:
                raise HTTPException(503, job.reason) from None
            raise HTTPException(400, _cut(str(exc).strip("'\""), 600)) from None
        except Cancelled as exc:
            raise HTTPException(503, str(exc)) from None
        except asyncio.CancelledError:
            job.cancel("the app is stopping")
            raise
        except Exception as exc:
            if job.reason is not None:
                raise HTTPException(503, job.reason) from None
            # answered here rather than by the app-wide handler, which closes the connection
            _log.exception("camlens app: %s failed", request.url.path)
            raise HTTPException(500, f"camlens failed: {type(exc).__name__}: {_cut(str(exc), 300)}") from None
        finally:
            jobs.discard(job)

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
        request: Request,
        file: Optional[UploadFile] = File(None),
        photo: str = Form(""),
        method: str = Form("gradcam"),
        layer: str = Form("auto"),
        target: str = Form("top"),
    ) -> dict:
        method, layer = _field("method", method), _field("layer", layer)
        tgt = _target(_field("target", target))
        prepared = await image_of(file, photo)
        return await run(request, session.explain, prepared, method, layer, tgt)

    @app.post("/api/features")
    async def api_features(
        request: Request,
        file: Optional[UploadFile] = File(None),
        photo: str = Form(""),
        layer: str = Form("auto"),
    ) -> dict:
        layer = _field("layer", layer)
        prepared = await image_of(file, photo)
        return await run(request, session.features, prepared, layer)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _invalid(exc)}, status_code=400)

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
    time_limit: float = TIME_LIMIT,
) -> None:
    """Load ``model_path`` (a ``.keras``/``.h5`` file or ``FILE.py:NAME``, see
    :func:`camlens.io.load_model`; ``None`` for the bundled model) and serve
    the app on ``host:port`` until interrupted. Binds 127.0.0.1 by default: only this computer
    can reach the app. Another address (``0.0.0.0``) lets anyone on the network upload images
    and run the model; that is warned about.

    Ctrl+C stops it within about a second, running requests or not: they are cancelled (each
    stops at the model's next batch), the server closes, one line says so, and
    ``KeyboardInterrupt`` is raised to the caller. ``time_limit``: as for :func:`create_app`."""
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
                     max_upload_bytes=max_upload_bytes, allowed_hosts=hosts, input_size=input_size,
                     time_limit=time_limit)
    shown = f"[{host}]" if ":" in host else host
    print(f"camlens app: {app.state.session.name} on http://{shown}:{port}/  (Ctrl+C stops it)",
          file=sys.stderr)
    jobs: set[Job] = app.state.jobs

    class _Server(uvicorn.Server):
        """uvicorn's server, which on Ctrl+C also cancels the running requests: uvicorn alone
        waits for them to finish, however long the method takes."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            for job in list(jobs):
                job.cancel("the app is stopping")

    # a request that does not finish within a second of Ctrl+C is dropped
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=1)
    try:
        _Server(config).run()
    except KeyboardInterrupt:
        print("camlens app: stopped by Ctrl+C", file=sys.stderr)
        raise
