"""Argument checks and batching shared by every layer of camlens: an error names the argument,
the bad value and, where there is one, the method or function it was given to.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import numpy as np

__all__ = ["positive_int", "non_negative", "seed_or_none", "whole_number", "batches", "checking_batches", "warn"]


def positive_int(method: str, name: str, value: object) -> int:
    """``value`` as an ``int`` of at least 1, or an error naming ``name`` and the bad value."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{method}: {name} must be an integer of at least 1; got {value!r}")
    if value < 1:
        raise ValueError(f"{method}: {name} must be at least 1; got {value}")
    return int(value)


def non_negative(method: str, name: str, value: object) -> float:
    """``value`` as a finite ``float`` of at least 0, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{method}: {name} must be a number of at least 0; got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{method}: {name} must be a finite number of at least 0; got {value}")
    return float(value)


def seed_or_none(method: str, value: object) -> int | None:
    """A seed: ``None`` (fresh noise on every call) or a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{method}: seed must be None or an integer of at least 0; got {value!r}")
    return int(value)


def whole_number(name: str, value: object) -> int:
    """``value`` as an ``int`` of at least 1 (a ValueError for anything else, bools too)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1; got {value!r}")
    return int(value)


#: called before every batch of :func:`batches` in this context (None: nothing is called)
_BATCH_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("camlens_batch_check", default=None)


@contextmanager
def checking_batches(check: Callable[[], None]) -> Iterator[None]:
    """Call ``check()`` before each batch of every :func:`batches` loop run inside this block
    (this thread or task). The web app raises from it to stop a request's work between
    batches when its client went away or time ran out; every patch on the model is undone on
    an exception, so the model is left as it was."""
    token = _BATCH_CHECK.set(check)
    try:
        yield
    finally:
        _BATCH_CHECK.reset(token)


def batches(total: int, size: int) -> Iterator[slice]:
    """``slice``s of at most ``size`` that cover ``range(total)`` in order: how every loop over
    samples, copies or masks takes them a batch at a time (and where long work can be
    stopped: see :func:`checking_batches`)."""
    check = _BATCH_CHECK.get()
    for start in range(0, total, size):
        if check is not None:
            check()
        yield slice(start, min(start + size, total))


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside camlens: the user's line that
    called ``explain`` (or whatever led here), however deep inside camlens the warning is
    raised. A fixed ``stacklevel`` points into camlens as soon as a call goes one frame deeper."""
    import sys
    import warnings

    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of warn
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
