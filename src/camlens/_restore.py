"""Putting the user's model back, whatever interrupts it.

Every change camlens makes to a model while explaining (a probe's ``call``, a hook, a guided
ReLU ``forward``, eval mode) is a :class:`Patch`: a context manager whose ``__enter__`` applies
the change and whose ``__exit__`` undoes it. A Ctrl-C (SIGINT), or a SIGTERM that has a Python
handler, can arrive between any two bytecodes; one that arrives while a patch is being applied
or undone is held back and delivered as soon as that is done, so a patch is never half set or
half undone, and a ``with`` block is never left with its patch on:

- while any patch is on, the main thread's SIGINT/SIGTERM handler is :func:`_handler`; it
  looks at the interrupted frame and its callers, and holds the signal when one of them is a
  patch's ``__enter__`` or ``__exit__`` (the work they call is covered by the same walk);
  anywhere else (the model's runs) it calls the user's handler at once (Ctrl-C stays prompt);
- ``__enter__`` applies every change, then raises a held signal after undoing them (the block
  never starts); ``__exit__`` undoes every change, each step even when an earlier one raised,
  then raises the first failure or the held signal. Between ``__enter__`` returning and the
  block starting there is no check for signals in CPython's ``with``.

Signals reach only the main thread: elsewhere (the app's worker threads) patches install no
handler. Nothing here imports a framework.
"""

from __future__ import annotations

import signal
import threading
from types import CodeType, FrameType
from typing import Any, Callable

__all__ = ["Patch", "held_signals", "interruptible"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class _State:
    depth = 0  # patches on, in the main thread
    forwarded = False  # a signal went to the user's handler while ours was on
    saved: dict[int, Any] = {}  # the handlers ours replaced
    pending: list[int] = []  # signals held back


def held_signals() -> list[int]:
    """The signals held back now (for tests)."""
    return list(_State.pending)


def _critical(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _CRITICAL:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: FrameType | None) -> None:
    if _critical(frame):
        _State.pending.append(signum)
        return
    old = _State.saved.get(signum)
    if callable(old):
        _State.forwarded = True
        old(signum, frame)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if _State.depth == 0:
        saved: dict[int, Any] = {}
        for s in _SIGNALS:
            old = signal.getsignal(s)
            if callable(old):  # SIG_DFL / SIG_IGN stay as they are
                saved[s] = old
        _State.saved = saved
        _State.forwarded = False
        for s in saved:
            signal.signal(s, _handler)
    _State.depth += 1


def _uninstall() -> None:
    """One patch fewer; the user's handlers back when none is left."""
    if threading.current_thread() is not threading.main_thread():
        return
    _State.depth -= 1
    if _State.depth == 0:
        for s, old in _State.saved.items():
            signal.signal(s, old)


def _deliver() -> None:
    """Raise what a held signal raises (the user's handler: KeyboardInterrupt for SIGINT)."""
    if not _State.pending or threading.current_thread() is not threading.main_thread():
        return
    pending, _State.pending = _State.pending, []
    for s in dict.fromkeys(pending):
        old = _State.saved.get(s)
        if callable(old):
            _State.forwarded = True
            old(s, None)


class Patch:
    """A change to the user's model while a block runs. Subclasses implement :meth:`apply`,
    which calls :meth:`undo_with` with each undo step *before* making the change it undoes
    (an exception half-way leaves only recorded changes)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], Any]] = []

    def apply(self) -> None:
        raise NotImplementedError

    def undo_with(self, step: Callable[[], Any]) -> None:
        self._undo.append(step)

    def __enter__(self) -> "Patch":
        _install()
        try:
            self.apply()
        except BaseException:
            self._undo_all(raise_first=False)
            _uninstall()
            raise
        if _State.pending:  # a signal came while applying: undo, then raise it
            self._undo_all(raise_first=False)
            _uninstall()
            _deliver()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._undo_all(raise_first=True)
        finally:
            _uninstall()
            _deliver()

    def _undo_all(self, raise_first: bool) -> None:
        steps, self._undo = self._undo, []
        first: BaseException | None = None
        for step in reversed(steps):
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - every other step must still run
                first = first or exc
        if first is not None and raise_first:
            raise first


#: the code whose frames hold signals: a patch's enter and exit (and what they call)
_CRITICAL: set[CodeType] = {Patch.__enter__.__code__, Patch.__exit__.__code__}


class _Watch(Patch):
    """No change: keeps camlens' handler on for a whole call (see :func:`interruptible`)."""

    def apply(self) -> None:
        pass


def interruptible(fn: Callable[..., Any]) -> Callable[..., Any]:
    """For the library's verbs (``explain``, ``evaluate``, ``feature_maps``): a Ctrl-C during
    the call comes out as ``KeyboardInterrupt``. Frameworks sometimes turn the
    KeyboardInterrupt raised inside one of their callbacks into another error (TensorFlow: a
    ``SystemError`` from ``__array__``, a ``TypeError``); after a signal went to the user's
    handler, such an error is raised as KeyboardInterrupt, with the original as its cause."""
    import functools

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        outer = _State.depth == 0
        with _Watch():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if outer and _State.forwarded:
                    raise KeyboardInterrupt(f"interrupted ({type(exc).__name__} on the way out)") from exc
                raise

    return call
