"""Name registries for methods, metrics and targets: one file adds one entry.

Each kind keeps one :class:`Registry`. Lookups forgive spelling ("Grad-CAM++", "gradcam_pp"
and "gradcampp" find "gradcam++") and a miss names the close matches and every name there
is, so the CLI, the app, ``evaluate`` and the report derive their lists from here.
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

__all__ = ["Registry", "canonical"]

T = TypeVar("T")


def canonical(name: str) -> str:
    """The spelling-free key of ``name``: lower case, no ``-``, ``_`` or spaces, ``++`` as
    ``pp``."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return key.replace("++", "pp").replace("plusplus", "pp")


class Registry(Generic[T]):
    """Entries by name, in the order registered; ``kind`` ("method", "metric") words errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        clash = next((n for n in self._entries if canonical(n) == canonical(name)), None)
        if clash is not None and self._entries[clash] is not entry:
            raise ValueError(f"a {self.kind} named {clash!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register a temporary entry)."""
        self._entries.pop(name, None)

    def find(self, name: str) -> tuple[str, T] | None:
        key = canonical(name)
        for registered, entry in self._entries.items():
            if canonical(registered) == key:
                return registered, entry
        return None

    def get(self, name: str) -> tuple[str, T]:
        """``(registered name, entry)`` for ``name``, or a ValueError that lists the names."""
        if not isinstance(name, str):
            raise TypeError(f"a {self.kind} name must be a string; got {type(name).__name__}")
        found = self.find(name)
        if found is None:
            close = difflib.get_close_matches(canonical(name), list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"no {self.kind} {name!r}.{hint} Available: {', '.join(self.names())}")
        return found

    def names(self) -> list[str]:
        return sorted(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
