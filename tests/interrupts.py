"""Interrupts injected at chosen points of a run, for the restoration tests and the reliability
figures (``benchmarks/reliability.py``).

A real Ctrl-C can arrive between any two bytecodes. :func:`run_interrupted` counts the points
where one could land while ``fn`` runs: every line camlens executes and every Python function
call anywhere (the frameworks' own code included), and sends a real SIGINT to the process at
the ``n``-th: whatever handler is on then (Python's, or camlens' while a patch is on) decides
what happens, as it would for a Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable

import camlens

CAMLENS = str(Path(camlens.__file__).resolve().parent)


def run_interrupted(fn: Callable[[], Any], n: int | None) -> tuple[int, bool]:
    """Run ``fn`` with an interrupt at point ``n`` (``None``: count only). Returns ``(points
    seen, interrupted)``; any other exception of ``fn`` propagates."""
    seen = 0
    fired = False

    def ours(frame: Any) -> bool:
        return frame.f_code.co_filename.startswith(CAMLENS)

    def point() -> None:
        nonlocal seen, fired
        if fired:
            return
        seen += 1
        if n is not None and seen == n:
            fired = True
            signal.raise_signal(signal.SIGINT)

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            point()
        return local

    def glob(frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            point()
            return local if ours(frame) else None
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
