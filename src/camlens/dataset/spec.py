"""What a data-set run computes: :class:`RunSpec`, the settings every worker gets (it is
pickled to Ray's actors) and that ``run.json`` records, so that a resumed run can check it is
the same run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["RunSpec"]


@dataclass(frozen=True)
class RunSpec:
    """The settings of one data-set run.

    ``model``: a ``.keras``/``.h5`` file, ``FILE.py:NAME``, ``package.module:NAME`` or
    ``"bundled"``; it is loaded again by each worker, so on a cluster it must name something
    every worker can load (a file on a shared disk, an installed package). ``methods``:
    registered method names; ``metrics``: names of :func:`camlens.metrics.model_metrics`
    (one ``metric_<name>`` column each); ``size``: ``(H, W)`` for a model without a fixed
    size; ``preprocess``: a name of :data:`camlens.io.PREPROCESSING` (None: ``"none"``;
    the bundled model uses its own); ``layer``: as ``camlens explain --layer``; ``target``:
    text as ``--target`` takes it (None: each image's top class); ``out``: the output folder;
    ``save_overlays``: also write PNG overlays; ``backend``: the Keras backend workers load
    the model with (None: ``KERAS_BACKEND``, else tensorflow); ``steps``: deletion/insertion
    steps.
    """

    model: str
    out: str
    methods: tuple[str, ...] = ("gradcam",)
    metrics: tuple[str, ...] = ()
    size: tuple[int, int] | None = None
    preprocess: str | None = None
    layer: str = "auto"
    target: str | None = None
    batch_size: int = 16
    save_overlays: bool = False
    backend: str | None = None
    steps: int = 100

    def __post_init__(self) -> None:
        # lists from JSON or a caller become tuples: the spec stays hashable and comparable
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def problems(self) -> list[str]:
        """What is wrong with the settings, one text each (empty: nothing); no model needed."""
        from ..io import PREPROCESSING
        from ..methods import get_method
        from ..metrics import model_metrics

        found = []
        if not self.methods:
            found.append("methods is empty; give e.g. gradcam,layercam")
        for m in self.methods:
            try:
                get_method(m)
            except ValueError as exc:
                found.append(str(exc))
        known = model_metrics()
        bad = [m for m in self.metrics if m not in known]
        if bad:
            found.append(f"unknown metric(s) {', '.join(bad)}: choose from {', '.join(known)} "
                         "(the pointing game is measured by itself when boxes are given)")
        if self.preprocess is not None and self.preprocess not in PREPROCESSING:
            found.append(f"unknown preprocess {self.preprocess!r}; use one of "
                         f"{', '.join(sorted(PREPROCESSING))}")
        if self.model == "bundled" and (self.preprocess is not None or self.size is not None):
            found.append("the bundled model scales and resizes photos itself; drop preprocess and size")
        for name in ("batch_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                found.append(f"{name} must be a whole number of at least 1; got {value!r}")
        if self.target is not None:
            from ..targets import parse_target

            try:
                parse_target(self.target)
            except ValueError as exc:
                found.append(str(exc))
        return found

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"], d["metrics"] = list(self.methods), list(self.metrics)
        d["size"] = None if self.size is None else list(self.size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
