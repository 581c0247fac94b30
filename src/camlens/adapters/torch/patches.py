"""What the torch adapter sets on modules while explaining, each put back exactly, also after
an exception or an interrupt: eval mode, forward hooks, instance-level ``forward``. Setting and
putting back hold interrupts (:mod:`camlens._restore`)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

from ..._restore import Patch

__all__ = ["eval_mode", "instance_forwards", "forward_hooks", "identity_hooks"]


class eval_mode(Patch):
    """Eval mode for every module while the block runs; each module's own flag restored.
    The flags are set directly, not by ``model.eval()``: a ``train()`` the user overrode
    might change more than the flags, which nothing would put back."""

    def __init__(self, model: Any, modules: Any = None) -> None:
        super().__init__()
        self.model = model
        self.modules = modules

    def apply(self) -> None:
        # only modules in training mode change (and are put back): a model already
        # in eval mode, as most explained models are, costs one pass over the flags.
        # ``modules``: every module of ``model``, where the caller knows them (the adapter's
        # kept trace), saves walking the tree
        mods = self.model.modules() if self.modules is None else self.modules
        for m in mods:
            if m.training:
                self.undo_with(lambda m=m, flag=m.training: setattr(m, "training", flag))
                m.training = False


class instance_forwards(Patch):
    """Give each module its own ``forward`` while the block runs; the instance attribute is
    removed again afterwards (also after an exception)."""

    def __init__(self, changes: Sequence[tuple[Any, Any]]) -> None:
        super().__init__()
        self.changes = list(changes)

    def apply(self) -> None:
        for mod, fn in self.changes:
            old = mod.__dict__.get("forward", _UNSET)
            if old is _UNSET:
                self.undo_with(lambda mod=mod: mod.__dict__.pop("forward", None))
            else:
                self.undo_with(lambda mod=mod, old=old: setattr(mod, "forward", old))
            mod.forward = fn


_UNSET = object()


class forward_hooks(Patch):
    """``module.register_forward_hook(fn)`` for each pair while the block runs, all removed
    after."""

    def __init__(self, pairs: Sequence[tuple[Any, Callable[..., Any]]]) -> None:
        super().__init__()
        self.pairs = list(pairs)

    def apply(self) -> None:
        for mod, fn in self.pairs:  # signals are held here: no hook goes in without its handle
            self.undo_with(mod.register_forward_hook(fn).remove)


def identity_hooks(mods: Sequence[Any]) -> contextlib.AbstractContextManager[None]:
    return forward_hooks([(m, lambda mod, args, out: args[0]) for m in mods])
