"""The one way a method reaches the model: :class:`ModelAccess`.

``explain`` runs the batched capture pass (activations, and gradients where the method
declares ``needs_gradients``) and hands every method one ``ModelAccess`` per call site (layer
methods) or per image input (pixel methods). Everything else a method may ask for is computed
only when it asks: the model's scores on modified copies of an image, the scores with the
layer's activations replaced (only the layers after it rerun), activations and gradients of
modified copies, input gradients plain or under the Guided Backpropagation rule, CAM's
head weights, and FullGrad's gradients at every layer with a bias. So a method declares no flags for them, and a new method is one file.

The same attribute names are what :class:`camlens.methods.SiteData` and
:class:`camlens.methods.PixelData` hold as given arrays and callables, for tests of methods
without a model.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from ._args import batches
from .adapters.base import ModelAdapter
from .graph import GraphNode
from .methods.cam import head_weights as cam_head_weights
from .rules import GUIDED, ReluRule, Rescale
from .targets import ClassScore, Target
from .tokens import grid_to_tokens, tokens_to_grid

__all__ = ["ModelAccess", "pinned", "part_target", "part_rule", "rule_runs"]


def pinned(arrays: list[np.ndarray], n: int, which: int, part: np.ndarray) -> list[np.ndarray]:
    """The model inputs for copies ``part`` of sample ``n``'s input ``which``: the other inputs
    repeated at sample ``n``."""
    full = [np.repeat(a[n : n + 1], len(part), axis=0) for a in arrays]
    full[which] = np.asarray(part, dtype=np.float32)
    return full


def part_target(target: Target, class_idx: np.ndarray | None, part: slice) -> Target:
    """The target of the samples ``part`` with each one's class pinned as :meth:`Target.for_sample`
    pins it (a top-class target keeps the classes it explained), for a run of those samples."""
    tgt = target.for_samples(part)
    if class_idx is not None and isinstance(tgt, ClassScore):
        return tgt.pinned(class_idx[part])
    return tgt


def part_rule(rule: Any, part: slice) -> Any:
    """``rule`` for the samples ``part``: a :class:`Rescale`'s references cut to them."""
    if not isinstance(rule, Rescale):
        return rule
    ref = np.asarray(rule.reference)
    if ref.ndim == 4 and len(ref) > 1:
        ref = ref[part]
    return Rescale(ref, name=rule.name, plain=rule.plain)


def rule_runs(rule: Any, parts: Iterable[slice], run: Callable[[slice, Any], Any]) -> tuple[list, list] | None:
    """``run(part, rule cut to part)`` for each of ``parts`` in turn (:func:`part_rule`):
    ``(what the runs gave, the reference scores they appended to their cut rules)``, the scores
    (a :class:`Rescale`'s reference run, where the adapter gives them) in the parts' order, so
    that they add up to one per sample as the caller's rule had them. ``None`` as soon as a run
    gives ``None`` (one the adapter cannot do)."""
    results, refs = [], []
    for part in parts:
        got = part_rule(rule, part)
        one = run(part, got)
        if one is None:
            return None
        results.append(one)
        refs.extend(getattr(got, "scores", ()))
    return results, refs


def _same_rule(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return (isinstance(a, Rescale) and isinstance(b, Rescale) and a.plain == b.plain
            and np.array_equal(np.asarray(a.reference), np.asarray(b.reference)))


class ModelAccess:
    """The model as one method sees it: image input ``which`` of a batch, and for layer methods
    one call site ``node`` with its captured ``activations`` ``(N, h, w, C)`` and ``gradients``.

    For every sample ``n`` the target is pinned to what was explained for ``n`` (its class
    with ``target=None``), and the other model inputs are held at sample ``n``. Token layers
    are seen as their patch grid; the set-aside tokens (class token...) are put back unchanged
    where the model is rerun from the layer.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        arrays: list[np.ndarray],
        which: int,
        target: Target,
        class_idx: np.ndarray | None,
        batch_size: int,
        *,
        node: GraphNode | None = None,
        activations: np.ndarray | None = None,
        gradients: np.ndarray | None = None,
        extra: np.ndarray | None = None,
        token_grid: Any = None,
        output_index: int = 0,
        fused: tuple[Any, np.ndarray, np.ndarray, list] | None = None,
    ) -> None:
        self._adapter = adapter
        #: ``(rule, scores, grads, reference scores)`` of every image, taken by ``explain`` in its
        #: one pass (:meth:`PixelMethod.first_rule`): :meth:`rule_gradients` of that rule reads them
        self._fused = fused
        self._score_rows = 0  # the most rows scored in one call: later calls are padded to it
        self._arrays = arrays
        self._which = which
        self._target = target
        self._class_idx = class_idx
        self._batch_size = batch_size
        self._node = node
        self._extra = extra
        self._token_grid = token_grid
        self._output_index = output_index
        self._site_scorers: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
        self._bias_nodes: list[tuple[GraphNode, np.ndarray, str]] | None = None
        self.activations = activations
        self.gradients = gradients

    # ------------------------------------------------------------------ what was explained
    @property
    def images(self) -> np.ndarray:
        """``(N, H, W, c)`` the input image each map belongs to, as the model takes it."""
        return self._arrays[self._which]

    @property
    def head_weights(self) -> np.ndarray:
        """``(N, C)``: for each sample, the weights of the Dense unit of its class in the layer
        after global average pooling (CAM)."""
        if not isinstance(self._target, ClassScore):
            raise ValueError(
                f"CAM explains a class; the target is {self._target.describe()!r}. Use a class "
                "target (an index, None, ClassScore or Logit) or method='gradcam'."
            )
        assert self._class_idx is not None
        return self.head_kernel[:, self._class_idx].T

    @property
    def head_kernel(self) -> np.ndarray:
        """``(C, classes)``: the whole kernel of the Dense layer after global average pooling,
        every class's weights; ``ValueError`` where the model has no such head."""
        node = self._site()
        adapter = self._adapter
        return cam_head_weights(adapter.graph(), node, self._output_index, adapter.layer_role, adapter.dense_kernel)

    # ------------------------------------------------------------------ rerunning the model
    def _batches(self, batch: np.ndarray) -> Any:
        for part in batches(len(batch), self._batch_size):
            yield batch[part]

    def score(self, n: int, batch: np.ndarray) -> np.ndarray:
        """Sample ``n``'s target score for each of ``batch`` ``(B, H, W, c)`` modified copies of
        its image, ``(B,)``."""
        pin = self._target.for_sample(n, self._class_idx)
        pads = getattr(self._adapter, "compiles_per_shape", False)
        out = []
        for part in self._batches(batch):
            rows = len(part)
            if pads and rows < self._score_rows:
                # a compiled program serves one batch size: a last batch of its own size (1024
                # channels in batches of 24) would compile once more, for fewer rows than it
                # saves; the padded rows' scores are dropped (samples do not mix in a batch)
                part = np.concatenate([part, np.repeat(part[-1:], self._score_rows - rows, axis=0)])
            self._score_rows = max(self._score_rows, len(part))
            out.append(self._adapter.score(pinned(self._arrays, n, self._which, part), pin)[:rows])
        return np.concatenate(out)

    def gradient(self, n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (B,), grads (B, H, W, c))``: the scores of :meth:`score` and their gradient
        with respect to each copy."""
        return self.rule_gradient(n, batch, None)

    def guided_gradient(self, n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`gradient` with the Guided Backpropagation rule on every ReLU."""
        return self.rule_gradient(n, batch, GUIDED)

    def rule_gradient(self, n: int, batch: np.ndarray, rule: ReluRule | None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`gradient` with every ReLU passing gradients back by ``rule``
        (:mod:`camlens.rules`; ``None``: the plain gradient)."""
        fused = self._fused
        if (fused is not None and _same_rule(fused[0], rule) and not isinstance(rule, Rescale)
                and len(batch) == 1 and np.array_equal(batch[0], self._arrays[self._which][n])):
            # explain's own pass took this gradient already, for the class it found
            return fused[1][n : n + 1].copy(), fused[2][n : n + 1].copy()
        pin = self._target.for_sample(n, self._class_idx)
        scores, grads = [], []
        for part in self._batches(batch):
            s, g = self._adapter.input_gradients(
                pinned(self._arrays, n, self._which, part), self._which, pin, rule=rule
            )
            scores.append(s)
            grads.append(g)
        return np.concatenate(scores), np.concatenate(grads)

    def rule_gradients(self, rule: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,), grads (N, H, W, c))``: :meth:`rule_gradient` of every sample's own
        image under its own target, the same values. Where the adapter's rules treat each sample
        alone (``adapter.batched_rules``: native torch) one run per ``batch_size`` samples, else
        one per sample. A :class:`~camlens.rules.Rescale` rule has one reference per sample; the
        scores of its reference run are appended to ``rule.scores`` where the adapter gives them
        (torch), so that DeepLIFT needs no run of its own for them."""
        if self._fused is not None and _same_rule(self._fused[0], rule):
            if isinstance(rule, Rescale):
                rule.scores.extend(self._fused[3])
            return self._fused[1], self._fused[2]
        images = self.images
        if getattr(self._adapter, "batched_rules", False):
            parts = batches(len(images), self._batch_size)

            def run(part: slice, got: Any) -> Any:
                return self._adapter.input_gradients([a[part] for a in self._arrays], self._which,
                                                     part_target(self._target, self._class_idx, part), rule=got)
        else:
            parts = [slice(n, n + 1) for n in range(len(images))]

            def run(part: slice, got: Any) -> Any:
                return self.rule_gradient(part.start, images[part], got)
        done = rule_runs(rule, parts, run)
        assert done is not None  # neither run gives None
        runs, refs = done
        if isinstance(rule, Rescale):
            rule.scores.extend(refs)
        return np.concatenate([s for s, _ in runs]), np.concatenate([g for _, g in runs])

    def bias_gradients(self, n: int, batch: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """FullGrad's bias terms for ``batch`` ``(B, H, W, c)`` copies of sample ``n``'s image,
        for sample ``n``'s target: for every call site of a convolution or batch normalisation
        that adds a bias (``adapter.layer_bias``) computed from this image input, in graph
        order, ``(site label, bias (C,), gradient of the score with respect to the layer's
        output before its activation (B, h, w, C))``; one backward pass per part of ``batch``."""
        sites = self._bias_sites()
        if not sites:
            return []
        pin = self._target.for_sample(n, self._class_idx)
        grads: list[list[np.ndarray]] = [[] for _ in sites]
        for part in self._batches(batch):
            got = self._adapter.capture(pinned(self._arrays, n, self._which, part),
                                        [node for node, _, _ in sites], pin).sites
            for k, ((_, _, act), site) in enumerate(zip(sites, got)):
                assert site.gradients is not None
                g = site.gradients
                # a relu applied by the layer itself: its output is positive exactly where the
                # value before it is, and the gradient passes there only
                grads[k].append(g * (site.activations > 0) if act == "relu" else g)
        return [(node.label, bias, np.concatenate(g)) for (node, bias, _), g in zip(sites, grads)]

    def _bias_sites(self) -> list[tuple[GraphNode, np.ndarray, str]]:
        if self._bias_nodes is None:
            graph = self._adapter.graph()
            anc = graph.input_ancestry()
            found = []
            for node in graph.nodes:
                if node.is_input or self._which not in anc[node.id]:
                    continue
                got = self._adapter.layer_bias(node)
                if got is None:
                    continue
                bias, act = got
                if node.unusable is not None:
                    raise ValueError(f"layer {node.label!r} adds a bias that FullGrad needs, but its "
                                     f"output cannot be read: {node.unusable}")
                if act not in ("linear", "relu"):
                    raise ValueError(
                        f"layer {node.label!r} applies activation {act!r} after its bias; FullGrad "
                        "needs the gradient before it: build the layer with activation=None and "
                        "add the activation as a layer of its own"
                    )
                if node.shape is None or len(node.shape) != 3 or node.shape[-1] not in (None, len(bias)):
                    raise ValueError(f"layer {node.label!r} has output shape {node.shape}; FullGrad "
                                     f"reads one map per channel of its {len(bias)} biases")
                found.append((node, np.asarray(bias, dtype=np.float64), act))
            self._bias_nodes = found
        return self._bias_nodes

    # ------------------------------------------------------------------ at the call site
    def _site(self) -> GraphNode:
        if self._node is None:
            raise ValueError("this method needs a layer; pixel methods have no call site")
        return self._node

    def capture(self, n: int, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Activations and gradients at the call site, each ``(B, h, w, C)``, for ``batch``
        modified copies of sample ``n``'s image, for sample ``n``'s target."""
        node = self._site()
        pin = self._target.for_sample(n, self._class_idx)
        acts, grads = [], []
        for part in self._batches(batch):
            got = self._adapter.capture(pinned(self._arrays, n, self._which, part), [node], pin).sites[0]
            a, g = got.activations, got.gradients
            if a.ndim == 3:  # token layer
                a = tokens_to_grid(a, self._token_grid, argname="token_grid")
                g = tokens_to_grid(g, self._token_grid, argname="token_grid")
            acts.append(a)
            grads.append(g)
        return np.concatenate(acts), np.concatenate(grads)

    def score_site(self, n: int, acts: np.ndarray) -> np.ndarray:
        """Sample ``n``'s target score with the call site's activations replaced by each of
        ``acts`` ``(B, h, w, C)``; only the part of the model after the layer is recomputed."""
        node = self._site()
        if n not in self._site_scorers:
            self._site_scorers.clear()  # one sample at a time: its kept values go with it
            one = [a[n : n + 1] for a in self._arrays]
            self._site_scorers[n] = self._adapter.site_scorer(
                one, node, self._target.for_sample(n, self._class_idx)
            )
        if self._extra is not None:
            acts = grid_to_tokens(acts, self._extra[n : n + 1])
        return self._site_scorers[n](acts)
