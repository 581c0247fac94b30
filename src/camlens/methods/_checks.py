"""Argument checks shared by the method constructors: errors name the method and the value."""

from __future__ import annotations

import math

import numpy as np


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
