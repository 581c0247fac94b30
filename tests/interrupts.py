"""Interrupts injected at chosen points of a run, for the restoration tests and the reliability
figures (``benchmarks/reliability.py``).

A real Ctrl-C is handled where CPython checks for signals: mostly at the start of a Python
function (the ``RESUME`` of a new frame, generators resumed included), never between two plain
statements. :func:`run_interrupted` counts the Python calls while ``fn`` runs, anywhere (camlens
and the frameworks' own code), and sends a real SIGINT to the process at the ``n``-th:
whatever handler is on then (Python's, or camlens' while a patch is on) decides what happens,
as it would for a Ctrl-C. (A raise at an arbitrary line, as a naive injector does, can fall
between a ``with`` body and its ``__exit__`` call, where CPython never handles a signal.)
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable


def run_interrupted(fn: Callable[[], Any], n: int | None) -> tuple[int, bool]:
    """Run ``fn`` with an interrupt at point ``n`` (``None``: count only). Returns ``(points
    seen, interrupted)``; any other exception of ``fn`` propagates."""
    seen = 0
    fired = False

    def point() -> None:
        nonlocal seen, fired
        if fired:
            return
        seen += 1
        if n is not None and seen == n:
            fired = True
            signal.raise_signal(signal.SIGINT)

    def glob(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            point()
        return None

    old = sys.gettrace()
    sys.settrace(glob)
    try:
        fn()
    except KeyboardInterrupt:
        return seen, True
    finally:
        sys.settrace(old)
    return seen, False
