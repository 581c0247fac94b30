"""``camlens.feature_maps``: the activations of a model's layers for an image, channel by channel.

One forward pass per batch records every chosen layer at once (the probes of
``ARCHITECTURE.md``, without gradients); nothing is rebuilt, so nested and shared submodels
work as in :func:`camlens.explain`, and the model is left as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ._args import batches
from ._restore import interruptible
from .adapters import adapt
from .io import safe_name
from .graph import GraphNode, LayerGraph, choose_layers, find_nodes
from .targets import Target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .adapters.base import ModelAdapter

__all__ = ["FeatureMaps", "feature_maps", "LAYER_SETS"]

#: the words ``layers=`` takes besides layer names
LAYER_SETS = ("conv", "spatial", "auto")


@dataclass
class FeatureMaps:
    """Activations of the chosen layers for a batch of ``N`` images, one entry per call site
    (a layer run twice, as in a siamese encoder, gives two).

    Attributes:
        activations: one ``(N, h, w, C)`` float32 array per call site, channels-last; the batch
            axis is kept for a single image too (``N == 1``).
        layers: the call-site labels, as ``layer=`` takes them (``"encoder/conv2d_1"``,
            ``"encoder/conv2d_1#1"`` for its second call).
        kinds: the layer types (``Conv2D``, ``DepthwiseConv2D``, ``Conv2d``...).
        reason: how the layers were chosen.

    A channel constant over its map (all zero: a ReLU that never fired) is *dead*:
    :meth:`dead_channels` lists them, :meth:`dead_counts` counts them per layer, and the grids
    draw them grey and crossed out.
    """

    activations: list[np.ndarray]
    layers: list[str]
    kinds: list[str]
    reason: str

    def __len__(self) -> int:
        return len(self.layers)

    def _site(self, layer: int | str) -> int:
        if isinstance(layer, str):
            if layer not in self.layers:
                raise KeyError(f"no layer {layer!r} in these feature maps; they hold {self.layers}")
            return self.layers.index(layer)
        if not -len(self.layers) <= layer < len(self.layers):
            raise IndexError(f"layer index {layer} is out of range: {len(self.layers)} layer(s)")
        return int(layer) % len(self.layers)

    def __getitem__(self, layer: int | str) -> np.ndarray:
        """The ``(N, h, w, C)`` activations of a call site, by label or position."""
        return self.activations[self._site(layer)]

    def sample(self, layer: int | str, index: int = 0) -> np.ndarray:
        """The ``(h, w, C)`` activations of one sample at one call site."""
        acts = self[layer]
        if not -len(acts) <= index < len(acts):
            raise IndexError(f"sample {index} is out of range: the batch has {len(acts)} image(s)")
        return acts[index]

    def dead_channels(self, layer: int | str, index: int = 0) -> list[int]:
        """The channels of a call site that are dead for sample ``index``: constant over the
        map (all zero, or one value), so standard deviation 0. The grids draw them grey and
        crossed out; :meth:`save` counts them in ``index.json``."""
        from . import viz

        return viz.dead_channels(self.sample(layer, index))

    def dead_counts(self, index: int = 0) -> dict[str, int]:
        """For sample ``index``, the number of dead channels of each call site, by label."""
        return {label: len(self.dead_channels(k, index)) for k, label in enumerate(self.layers)}

    def plot(
        self,
        layer: int | str | None = None,
        *,
        index: int = 0,
        max_channels: int = 64,
        cmap: str = "viridis",
        rank: str = "mean",
        style: str = "minmax",
    ) -> Figure:
        """The grid of one layer (see :func:`camlens.viz.feature_grid`) or, with ``layer=None``,
        the overview of all layers, for sample ``index``. ``style="minmax"`` scales each tile
        to its own range; ``style="standardized"`` draws ``(x - mean) / std * 64 + 128``
        (:func:`camlens.viz.standardize`). Dead channels are grey and crossed out."""
        from . import viz

        if layer is None:
            return viz.feature_overview(self, index=index, cmap=cmap, rank=rank, style=style)
        k = self._site(layer)
        return viz.feature_grid(self.sample(k, index), layer=self.layers[k],
                                max_channels=max_channels, cmap=cmap, rank=rank, style=style)

    def save(
        self,
        directory: str | os.PathLike[str],
        *,
        index: int = 0,
        max_channels: int = 64,
        cmap: str = "viridis",
        rank: str = "mean",
        style: str = "minmax",
        dpi: float = 100,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Write, for sample ``index``, one grid PNG per call site (named after the layer,
        ``encoder-conv2d_1.png``), ``overview.png`` and ``index.json`` (file, layer, type,
        shape, the channels shown in tile order and the dead channels, per grid; the style and
        the dead channels of all layers together). ``style`` as in :meth:`plot`. Returns the
        written paths. ``progress(1)`` is called after each picture (``len(self.layers) + 1`` in
        all)."""
        from . import viz

        if style not in viz.STYLES:  # before any file is written
            raise ValueError(f"unknown style {style!r}; use one of {', '.join(viz.STYLES)}")

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        taken = {"overview", "index"}
        entries, written = [], []
        for k, label in enumerate(self.layers):
            acts = self.sample(k, index)
            stem = name = safe_name(label)
            n = 1
            while name in taken:  # "a/b" and "a-b" would both be "a-b"
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
            _, shown = viz.feature_grid_array(acts, max_channels=max_channels, rank=rank)
            fig = viz.feature_grid(acts, layer=label, max_channels=max_channels, cmap=cmap, rank=rank,
                                   style=style)
            dead = viz.dead_channels(acts)
            path = out / f"{name}.png"
            viz.write_atomic(path, viz.figure_to_png_bytes(fig, dpi=dpi))
            written.append(path)
            if progress is not None:
                progress(1)
            entries.append({
                "file": path.name,
                "layer": label,
                "kind": self.kinds[k],
                "shape": [int(d) for d in acts.shape],
                "channels_shown": shown,
                "channels_total": int(acts.shape[-1]),
                "dead_channels": dead,
                "dead_count": len(dead),
            })
        overview = out / "overview.png"
        viz.write_atomic(overview, viz.figure_to_png_bytes(
            viz.feature_overview(self, index=index, cmap=cmap, rank=rank, style=style), dpi=dpi))
        written.append(overview)
        if progress is not None:
            progress(1)
        meta = {"sample": index, "rank": rank, "style": style, "reason": self.reason,
                "dead_count": sum(e["dead_count"] for e in entries),
                "overview": overview.name, "layers": entries}
        viz.write_atomic(out / "index.json", json.dumps(meta, indent=2))
        written.append(out / "index.json")
        return written


class _ActivationsOnly(Target):
    """A zero score per sample: the adapters run a target, but feature maps need none. Unlike
    ``ClassScore`` it reads any output shape (a segmentation map, an embedding, a regression,
    a detector's boxes)."""

    explains = False

    def score(self, outputs: Sequence[Any], names: Sequence[str], xp: Any) -> Any:
        y = self.select(outputs, names)
        return xp.sum(xp.reshape(y, (int(y.shape[0]), -1)), axis=1) * 0.0

    def describe(self) -> str:
        return "none (activations only)"


def _probeable(adapter: ModelAdapter, node: GraphNode) -> bool:
    """Whether the adapter can record ``node``: PyTorch hooks exist on modules only, not on
    functions called inside ``forward()`` (``F.relu``, ``x + y``)."""
    return adapter.can_probe(node)


def _has_map(node: GraphNode) -> bool:
    return (not node.is_input and node.unusable is None and node.shape is not None
            and len(node.shape) == 3)


def _sites(n: int) -> str:
    return f"{n} call site" + ("" if n == 1 else "s")


def _select(adapter: ModelAdapter, graph: LayerGraph, layers: Any) -> tuple[list[GraphNode], str]:
    if isinstance(layers, str) and layers in LAYER_SETS:
        if layers == "auto":
            choice = choose_layers(graph, [0])
            return choice.nodes, choice.reason
        if layers == "conv":
            nodes = [n for n in graph.nodes if "Conv" in n.kind and _has_map(n) and _probeable(adapter, n)]
            if not nodes:
                raise ValueError(
                    "the model has no convolution layer with a (height, width, channels) output; "
                    "use layers='spatial' for every layer with one, or name layers "
                    "(`camlens.layers(model)` lists them)"
                )
            return nodes, f"every convolution layer ({_sites(len(nodes))})"
        nodes = [n for n in graph.nodes if n.spatial and not n.is_input and _probeable(adapter, n)]
        if not nodes:
            raise ValueError("no layer of this model has a spatial (height, width, channels) output")
        return nodes, f"every layer with a spatial output ({_sites(len(nodes))})"
    specs = [layers] if isinstance(layers, str) else layers
    if not isinstance(specs, (list, tuple)) or not specs or not all(isinstance(s, str) for s in specs):
        raise TypeError(
            f"layers must be {', '.join(repr(s) for s in LAYER_SETS)}, a layer name or a "
            f"non-empty list of names; got {layers!r}"
        )
    nodes: list[GraphNode] = []
    for spec in specs:
        for n in find_nodes(graph, spec):
            if n.is_input:
                raise ValueError(f"{spec!r} is a model input, not a layer; pick a layer after it")
            if n.unusable is not None:
                raise ValueError(f"layer {n.label!r} has no feature map to show: {n.unusable}")
            if not _has_map(n):
                raise ValueError(
                    f"layer {n.label!r} ({n.kind}) has output shape {n.shape} (without batch), "
                    "not a (height, width, channels) feature map. `camlens.layers(model)` lists "
                    "every layer with its shape; layers='spatial' takes all spatial ones."
                )
            if n not in nodes:
                nodes.append(n)
    return nodes, "given by the caller: " + ", ".join(n.label for n in nodes)


@interruptible
def feature_maps(
    model: Any,
    image: Any,
    layers: str | Sequence[str] = "conv",
    *,
    batch_size: int = 16,
) -> FeatureMaps:
    """The activations of ``layers`` of ``model`` for ``image``, channels-last.

    Args:
        model: a Keras 3 model or a ``torch.nn.Module`` (left exactly as it was).
        image: one image ``(H, W, c)`` or a batch ``(N, H, W, c)``, preprocessed as the model
            expects (PyTorch modules also take ``(N, c, H, W)``); a list for several inputs.
        layers: ``"conv"`` (every convolution: Conv2D, DepthwiseConv2D, SeparableConv2D,
            Conv2DTranspose, torch Conv2d...), ``"spatial"`` (every layer with an
            ``(h, w, C)`` output), ``"auto"`` (the layer :func:`camlens.explain` picks), a layer
            name (``"encoder/conv2d_1"``, ``"path#1"`` for a second call) or a list of names.
            A layer named like one of the three words is selected with a list: ``["conv"]``.
        batch_size: images per forward pass; each pass records all chosen layers at once.

    Returns:
        a :class:`FeatureMaps` with ``(N, h, w, C)`` activations per call site.

    Example::

        fmaps = camlens.feature_maps(model, image)      # every conv layer
        fmaps.layers                                    # ['conv2d', 'conv2d_1', ...]
        fmaps["conv2d_1"].shape                         # (1, 72, 72, 16)
        fmaps.save("features/")                         # one grid per layer, overview, index.json
        fmaps.plot("conv2d_1", style="standardized")    # (x - mean) / std * 64 + 128 per channel
        fmaps.dead_counts()                             # {'conv2d': 0, 'conv2d_1': 3, ...}
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1; got {batch_size!r}")
    adapter = adapt(model)
    arrays = adapter.prepare(image)
    graph = adapter.graph()
    nodes, reason = _select(adapter, graph, layers)
    target = _ActivationsOnly()
    parts = []
    for part in batches(arrays[0].shape[0], batch_size):
        parts.append(adapter.capture([a[part] for a in arrays], nodes, target, need_gradients=False))
    acts = [
        np.concatenate([p.sites[k].activations for p in parts]).astype(np.float32, copy=False)
        for k in range(len(nodes))
    ]
    return FeatureMaps(acts, [n.label for n in nodes], [n.kind for n in nodes], reason)
