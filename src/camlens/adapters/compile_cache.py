"""JAX's persistent compilation cache: off unless asked for.

A first ``explain`` on the Keras JAX backend is mostly XLA compilation, paid again by every new
process. JAX can keep compiled programs on disk and reuse them in the next process (its key is
the program, the JAX and XLA versions and the device; weights are arguments of camlens'
programs, so a retrained model of the same architecture reuses them). camlens never turns it on
by itself, and so never writes into a folder nobody named: :func:`enable_compile_cache` or the
environment variable ``CAMLENS_JAX_CACHE=<folder>`` (read when camlens first runs a model on the
JAX backend; empty means unset) do. JAX stores only programs that took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile.

No framework is imported here: the folder is handed to JAX when JAX is (or already was) loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["enable_compile_cache", "apply_jax_cache", "ENV"]

ENV = "CAMLENS_JAX_CACHE"

_UNSET = object()
#: what :func:`enable_compile_cache` chose (a folder, or None: off); ``_UNSET``: never called
_chosen: Any = _UNSET


def enable_compile_cache(path: str | os.PathLike[str] | None) -> Path | None:
    """Keep JAX's compiled programs in the folder ``path`` (created if missing), so that a later
    process reuses them instead of compiling again; ``None`` turns the cache off. Applies to
    everything JAX compiles in this process from now on, camlens' programs and the model's own
    ``predict``. Only the Keras JAX backend has such a cache (TensorFlow's ``tf.function`` and
    torch keep nothing between processes); calling it loads no framework.

    Returns the folder used (absolute), or ``None``.

    Example::

        >>> import camlens, tempfile
        >>> camlens.enable_compile_cache(tempfile.mkdtemp()).is_dir()
        True
        >>> camlens.enable_compile_cache(None) is None
        True
    """
    global _chosen
    folder = _folder(path, "enable_compile_cache: path")
    _chosen = folder
    if "jax" in sys.modules:  # already loaded: from now on; otherwise when it is
        apply_jax_cache()
    return folder


def _folder(path: Any, what: str) -> Path | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"{what} must be a folder (str or path) or None; got {path!r}")
    folder = Path(os.fspath(path)).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is a file, not a folder; name a folder for the cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wanted() -> tuple[bool, Path | None]:
    """``(asked, folder)``: whether the cache was set by camlens' means, and the folder."""
    if _chosen is not _UNSET:
        return True, _chosen
    env = os.environ.get(ENV, "")
    if not env:
        return False, None
    return True, _folder(env, f"the environment variable {ENV}")


def apply_jax_cache() -> None:
    """Hand the chosen folder to JAX (the Keras JAX backend calls it when first used). Where
    nothing was chosen, JAX's own settings (``JAX_COMPILATION_CACHE_DIR``) are left alone."""
    asked, folder = _wanted()
    if not asked:
        return
    import jax

    value = None if folder is None else str(folder)
    if jax.config.jax_compilation_cache_dir == value:
        return
    jax.config.update("jax_compilation_cache_dir", value)
    # JAX opens its cache at the first compilation and keeps it open: a new folder (or none)
    # takes effect only once that is forgotten (a private function; absent, a JAX that has
    # compiled nothing yet still reads the new setting)
    try:
        from jax._src import compilation_cache
    except ImportError:
        return
    reset = getattr(compilation_cache, "reset_cache", None)
    if reset is not None:
        reset()
