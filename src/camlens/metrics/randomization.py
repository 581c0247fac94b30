"""Model randomization sanity check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity
Checks for Saliency Maps", NeurIPS 2018), cascading from the top.

A map that explains the model must change when the model's learned weights are destroyed. On a
**copy** of the model (the user's model is never touched: Keras models are cloned with
``keras.models.clone_model`` and given the same weights, torch modules are deep-copied), the
layers with weights are re-initialised one after another from the output back towards the
input, cumulatively, and after each one the map is computed again and compared with the
original map by Spearman's rank correlation (per image). A faithful method's correlation drops
towards 0 as layers are randomised; one that stays high is blind to the model.

Re-initialisation: every weight with two or more axes (kernels) is redrawn from the
Glorot-uniform distribution ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``, with a seeded
numpy generator, so the numbers are the same on every backend; one-axis weights (biases,
normalisation scales and statistics) are kept, so no layer turns to NaN (a random
BatchNormalization variance could be negative). Layers whose weights all have one axis are not
steps. Order: Keras layers in reverse order of ``model.layers`` with nested models expanded
(from the output back, for a functional model); torch modules in reverse order of their first
call in a forward pass. The class explained on the original model stays the class explained on
every randomised copy.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["RandomizationResult", "randomization_check", "spearman"]


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(v, kind="stable")
    s = v[order]
    first = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(v)]  # exclusive
    mean_rank = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(v))
    ranks[order] = mean_rank[group]
    return ranks


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two arrays of the same shape (all elements): the Pearson
    correlation of their ranks, ties given their average rank. NaN when either is constant."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs arrays of one size; got {np.shape(a)} and {np.shape(b)}")
    if x.size < 2:
        raise ValueError("spearman needs at least 2 values")
    rx = _average_ranks(x) - (x.size + 1) / 2.0
    ry = _average_ranks(y) - (y.size + 1) / 2.0
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


@dataclass
class RandomizationResult:
    """The cascading randomization check.

    Attributes:
        method: the explanation method.
        layers: the layers randomised, in order; step ``k`` has ``layers[: k + 1]`` randomised.
        correlations: ``(len(layers), N)`` Spearman correlation between each image's original
            map and its map at step ``k`` (NaN where a map is constant).
        original: ``(N, H, W)`` the maps of the unchanged model.
        maps: the ``(N, H, W)`` maps at each step.
    """

    method: str
    layers: list[str]
    correlations: np.ndarray
    original: np.ndarray
    maps: list[np.ndarray] = field(repr=False, default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        """``(len(layers),)`` the mean correlation over the images at each step."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.correlations, axis=1)

    def __str__(self) -> str:
        width = max([len("randomised down to")] + [len(n) for n in self.layers])
        lines = [f"{self.method}: Spearman correlation with the original map (cascading randomization)",
                 f"{'randomised down to':<{width}}  mean rho"]
        lines += [f"{name:<{width}}  {rho:8.4f}" for name, rho in zip(self.layers, self.mean)]
        return "\n".join(lines)

    __repr__ = __str__  # the table, not the maps


def randomization_check(
    model: Any,
    images: Any,
    method: Any = "gradcam",
    target: Any = None,
    *,
    layers: Sequence[str] | None = None,
    layer: Any = "auto",
    output: int | str | None = None,
    seed: int = 0,
    site: int = 0,
    batch_size: int = 16,
) -> RandomizationResult:
    """Cascading model randomization (Adebayo et al. 2018; see
    :mod:`camlens.metrics.randomization`): the Spearman correlation between the original maps
    and the maps of copies of the model with more and more layers re-initialised, from the top.

    Args:
        model: a Keras 3 model or ``torch.nn.Module``; never changed (a copy is randomised).
        images, method, target, layer, output, batch_size: as for :func:`camlens.explain`.
        layers: the layers to randomise, in order (cumulatively); default every layer with a
            kernel, from the output back to the input.
        seed: seed of the new weights.
        site: for maps with several call sites, which one is compared.

    Example::

        res = camlens.metrics.randomization_check(model, images, "gradcam")
        print(res)                 # one row per layer: mean rho, should fall towards 0
    """
    from ..adapters import adapt
    from .._explain import explain
    from ..targets import ClassScore, as_target

    tgt = as_target(target, output)
    original = explain(model, images, method=method, target=tgt, layer=layer, batch_size=batch_size)
    if not -len(original.maps) <= site < len(original.maps):
        raise ValueError(f"site={site} is out of range: the explanation has {len(original.maps)} site(s)")
    if isinstance(tgt, ClassScore) and original.class_indices is not None:
        tgt = copy.copy(tgt)
        tgt.index = [int(c) for c in original.class_indices]  # randomised copies explain the same class
    adapter = adapt(model)
    twin = adapter.twin()  # the copy is randomised; the model is never changed
    candidates = twin.kernel_layers(images)[::-1]
    by_name = dict(candidates)
    if layers is None:
        chosen = candidates
    else:
        chosen = []
        for name in layers:
            if name not in by_name:
                raise ValueError(
                    f"no layer {name!r} with a kernel to randomise; the candidates, from the top: "
                    f"{[n for n, _ in candidates]}"
                )
            chosen.append((name, by_name[name]))
    if not chosen:
        raise ValueError("the model has no layer with a kernel (a weight of 2 or more axes) to randomise")
    rng = np.random.default_rng(seed)
    base = original.maps[site]
    correlations = np.empty((len(chosen), len(base)))
    maps = []
    for k, (_, lyr) in enumerate(chosen):
        twin.reinitialize(lyr, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # random models often give flat maps
            exp = explain(twin.model, images, method=method, target=tgt, layer=layer, batch_size=batch_size)
        maps.append(exp.maps[site])
        correlations[k] = [spearman(base[i], exp.maps[site][i]) for i in range(len(base))]
    return RandomizationResult(original.method, [n for n, _ in chosen], correlations, base, maps)

