"""``camlens app``: a local web page to explain a model's predictions on photos.

    >>> from camlens.app import create_app, serve        # doctest: +SKIP
    >>> serve()                     # the bundled EfficientNet-Lite0 on http://127.0.0.1:7860/
    >>> app = create_app(model, preprocess="unit", class_names=["cat", "dog"])   # a FastAPI app

Upload a photo or pick a bundled one, choose the method, the layer (the candidates of
``camlens.layers``, the automatic one marked) and the target class, and see the overlay and the
feature maps of a layer. Needs ``pip install "camlens[app]"`` (FastAPI, uvicorn,
python-multipart). The page loads nothing from the internet.
"""

from importlib.util import find_spec

try:
    if find_spec("python_multipart") is None and find_spec("multipart") is None:
        # FastAPI would only notice when the first form route is declared, as a RuntimeError
        raise ImportError("No module named 'python_multipart'", name="python_multipart")
    from ._server import MAX_PIXELS, MAX_UPLOAD_BYTES, create_app, serve
except ImportError as exc:  # fastapi, uvicorn or python-multipart missing
    if exc.name not in ("fastapi", "starlette", "multipart", "python_multipart", "uvicorn"):
        raise
    raise ImportError(
        f'the camlens web app needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): '
        'pip install "camlens[app]"'
    ) from exc

__all__ = ["create_app", "serve", "MAX_UPLOAD_BYTES", "MAX_PIXELS"]
