"""The patches a Keras explanation sets on layer instances, each a context manager that puts
back exactly what was there, also after an exception or an interrupt: probes on ``call``, the
guided ReLU rule, and the final activation skipped for logit targets."""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any, Callable, Sequence

from ..._restore import Patch
from ...rules import ReluRule, no_relu_warning

__all__ = ["instance_attrs", "probes", "rule_relus", "without_final_activation"]

_MISSING = object()


class instance_attrs(Patch):
    """Set ``obj.attr = value`` on each instance while the block runs; always put back what
    was there (an instance attribute the user had set comes back as it was, one that was not
    set is removed again). ``object.__setattr__`` keeps Keras' attribute tracking out of it.
    Never half set or half undone, whatever interrupts it (:mod:`camlens._restore`)."""

    def __init__(self, changes: Sequence[tuple[Any, str, Any]]) -> None:
        super().__init__()
        self.changes = list(changes)

    def apply(self) -> None:
        for obj, attr, value in self.changes:
            old = obj.__dict__.get(attr, _MISSING)
            if old is _MISSING:
                self.undo_with(lambda obj=obj, attr=attr: obj.__dict__.pop(attr, None))
            else:
                self.undo_with(lambda obj=obj, attr=attr, old=old: object.__setattr__(obj, attr, old))
            object.__setattr__(obj, attr, value)


def probes(ops: Sequence[Any], on_call: Callable[[Any, Any], Any]) -> contextlib.AbstractContextManager[None]:
    """Route each op's output through ``on_call`` while the block runs: a wrapper set on the
    instance shadows the class's ``call``."""

    def wrap(op: Any) -> Callable[..., Any]:
        original = op.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return on_call(op, original(*args, **kwargs))

        return wrapper

    return instance_attrs([(op, "call", wrap(op)) for op in ops])


def rule_relus(backend: ModuleType, ops: Any, rule: ReluRule) -> contextlib.AbstractContextManager[None]:
    """Swap every ReLU of the model (``activation="relu"``/``"relu6"`` of any layer, an
    ``Activation`` layer, a plain ``ReLU`` layer) for one whose gradient follows ``rule``, on
    the instances, while the block runs."""
    changes: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()
    for op in ops:
        if id(op) in seen:
            continue
        seen.add(id(op))
        act = getattr(op, "activation", None)
        name = getattr(act, "__name__", "")
        if type(op).__name__ == "ReLU":
            if float(getattr(op, "negative_slope", 0) or 0) == 0 and float(getattr(op, "threshold", 0) or 0) == 0:
                top = getattr(op, "max_value", None)
                fn = backend.rule_relu(rule, None if top is None else float(top))
                changes.append((op, "call", lambda x, *a, __fn=fn, **k: __fn(x)))
        elif name in ("relu", "relu6") and callable(act):
            changes.append((op, "activation", backend.rule_relu(rule, 6.0 if name == "relu6" else None)))
    if not changes:
        others = sorted({getattr(getattr(op, "activation", None), "__name__", "") for op in ops} - {"", "linear"})
        no_relu_warning(rule, others)
    return instance_attrs(changes)


_SQUASHING = ("softmax", "sigmoid", "log_softmax")


def without_final_activation(ops: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
    import keras

    changes: list[tuple[Any, str, Any]] = []
    for op in ops:
        name = getattr(getattr(op, "activation", None), "__name__", "")
        if type(op).__name__ == "Softmax" or (type(op).__name__ == "Activation" and name in _SQUASHING):
            changes.append((op, "call", lambda x, *a, **k: x))
        elif name in _SQUASHING:
            changes.append((op, "activation", keras.activations.linear))
    return instance_attrs(changes)
