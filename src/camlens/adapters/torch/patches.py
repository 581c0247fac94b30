"""What the torch adapter sets on modules while explaining, each put back exactly, also after
an exception or an interrupt: eval mode, forward hooks, instance-level ``forward``."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

__all__ = ["eval_mode", "instance_forwards", "forward_hooks", "identity_hooks"]


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode for every module while the block runs; each module's own flag restored."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def instance_forwards(changes: Sequence[tuple[Any, Any]]) -> Iterator[None]:
    """Give each module its own ``forward`` while the block runs; the instance attribute is
    removed again afterwards (also after an exception)."""
    done: list[tuple[Any, Any]] = []
    try:
        for mod, fn in changes:
            done.append((mod, mod.__dict__.get("forward", _UNSET)))
            mod.forward = fn
        yield
    finally:
        for mod, old in reversed(done):
            if old is _UNSET:  # pop: an interrupt may have come before the swap itself
                mod.__dict__.pop("forward", None)
            else:
                mod.forward = old


_UNSET = object()


@contextlib.contextmanager
def forward_hooks(pairs: Sequence[tuple[Any, Callable[..., Any]]]) -> Iterator[None]:
    """``module.register_forward_hook(fn)`` for each pair while the block runs. Registered one
    by one inside the ``try``, so an exception or interrupt half-way leaves none behind."""
    handles: list[Any] = []
    try:
        for mod, fn in pairs:
            handles.append(mod.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def identity_hooks(mods: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
    return forward_hooks([(m, lambda mod, args, out: args[0]) for m in mods])
