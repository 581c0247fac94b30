"""The types the backend modules share with the adapter."""

from __future__ import annotations

from typing import Any, Callable

Key = tuple[int, int]  # (id of the probed op, call index)
MakeProbe = Callable[[Key, Any], Any]
Runner = Callable[[MakeProbe], tuple[list[Any], Any, dict[Key, Any]]]
#: ``parts(idx) -> (model, adapter, nodes, target)``: what one trace of a compiled program runs
Parts = Callable[[Any], tuple[Any, Any, list[Any], Any]]
#: ``program(model, inputs, idx)``: a compiled run, arrays in, numpy and tensors out
Program = Callable[..., Any]
