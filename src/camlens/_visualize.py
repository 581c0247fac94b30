"""``camlens.visualize``: feature visualization by activation maximization.

An image is synthesised, from a seeded random start, by gradient ascent on what a unit of the
model computes: the mean of one channel of a layer, one neuron (a channel at one position) or
one class logit (Erhan et al. 2009, "Visualizing higher-layer features of a deep network";
Olah et al. 2017, "Feature Visualization", Distill). The adapter gives the gradient of the
unit's value with respect to the model input (``activation_gradients``, or ``input_gradients``
of a :class:`~camlens.targets.Logit` for a class); everything else is numpy here: the image's
parametrisation, the regularizers, the preprocessing's chain rule and Adam.

The image is ``rgb = sigmoid(colour(spatial))`` in [0, 1]; ``spatial`` is either the pixels
themselves (``param="pixels"``) or ``irfft2(spectrum * scale) / 4`` with ``scale`` falling as
``1 / frequency`` (``param="fourier"``: every frequency starts with equal energy in the
picture, so the ascent does not fill the image with the high frequencies plain pixels give);
``colour`` mixes the three channels by the square root of ImageNet's colour covariance
(``decorrelate=True``), so a step moves luminance and hue rather than red, green, blue
separately. Model input is ``preprocess(255 * rgb)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ._args import batches, warn
from ._restore import interruptible
from .adapters import adapt
from .features import _select
from .graph import GraphNode
from .io import as_preprocess, safe_name
from .targets import Logit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Visualization", "visualize", "PARAMS", "parse_channels"]

#: how the image is parametrised: its Fourier spectrum, or its pixels
PARAMS = ("fourier", "pixels")

#: The square root of ImageNet's RGB covariance, as its SVD ``U sqrt(S)`` (rows: R, G, B),
#: the statistic Olah et al. decorrelate colours with; scaled below so its largest column
#: has norm 1.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02],
                        [0.27, 0.00, -0.05],
                        [0.27, -0.09, 0.03]], np.float64)
_COLOR = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))

#: the spectrum's values are divided by this: a random spectrum of unit scale would give a
#: picture of values about 4 across, all in the flat ends of the sigmoid
_FOURIER_DAMP = 4.0


@dataclass
class Visualization:
    """Images that maximise units of a model, one per unit.

    Attributes:
        images: ``(N, H, W, 3)`` float32 RGB in [0, 1], one per unit.
        objectives: ``(steps, N)``: each unit's value at each step of the ascent (on the
            jittered image of that step, before its update; without the penalties).
        final: ``(N,)`` each unit's value on the finished image (no jitter).
        labels: what each image maximises (``"conv2d ch 3"``, ``"conv2d ch 3 at (4, 5)"``,
            ``"logit of class 281"``).
        layer: the call site's label; ``None`` for class logits.
        units: the channels (or the classes) in image order.
        settings: the settings of the ascent (steps, lr, regularizers, seed...).
    """

    images: np.ndarray
    objectives: np.ndarray
    final: np.ndarray
    labels: list[str]
    layer: str | None
    units: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    #: the units whose gradient was zero at every step: their images are the random start
    flat: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def as_uint8(self) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images."""
        return np.clip(np.rint(self.images * 255.0), 0, 255).astype(np.uint8)

    def plot(self, *, columns: int | None = None) -> Figure:
        """The images as one grid, each titled with its unit (:func:`camlens.viz.image_grid`)."""
        from . import viz

        title = f"{self.layer}: " if self.layer else ""
        return viz.image_grid(self.as_uint8(), self.labels if not self.layer else
                              [lab.removeprefix(f"{self.layer} ") for lab in self.labels],
                              title=f"{title}feature visualization, {self.settings.get('steps')} steps",
                              columns=columns)

    def save(self, directory: str | os.PathLike[str], *, dpi: float = 100) -> list[Path]:
        """Write ``grid.png`` (every image, titled), one PNG per image (``<label>.png``) and
        ``index.json`` (layer, units, files, the final values and the settings). Returns the
        written paths."""
        from . import viz

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        grid = out / "grid.png"
        viz.write_atomic(grid, viz.figure_to_png_bytes(self.plot(), dpi=dpi))
        written.append(grid)
        entries = []
        pixels = self.as_uint8()
        for k, label in enumerate(self.labels):
            path = out / f"{safe_name(label)}.png"
            viz.save_png(pixels[k], path)
            written.append(path)
            entries.append({"file": path.name, "label": label, "unit": self.units[k],
                            "final": float(self.final[k]), "start": float(self.objectives[0, k]),
                            "flat": self.units[k] in self.flat})
        meta = {"layer": self.layer, "grid": grid.name, "settings": self.settings, "images": entries}
        viz.write_atomic(out / "index.json", json.dumps(meta, indent=2))
        written.append(out / "index.json")
        return written


def parse_channels(text: str) -> list[int]:
    """``"0-15"``, ``"3"``, ``"0,4,8-11"`` as a list of channel numbers."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"channels {text!r}: use numbers and ranges such as 0-15 or 0,4,8-11") from None
    return out


def _int_list(value: Any, what: str) -> list[int]:
    items = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    try:
        out = list(items)
    except TypeError:
        out = None
    if not out or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in out):
        raise TypeError(f"{what} must be a whole number or a non-empty list of them; got {value!r}")
    return [int(c) for c in out]


def _affine(preprocess: Callable[[np.ndarray], np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(A (3, 3), b (3,))`` with ``preprocess(255 * rgb) == rgb @ A.T + b`` per pixel:
    the chain rule through the preprocessing needs it linear. Checked on random pixels."""
    probe = np.concatenate([np.zeros((1, 3)), 255.0 * np.eye(3)]).reshape(1, 4, 1, 3).astype(np.float32)
    try:
        got = np.asarray(preprocess(probe), np.float64).reshape(4, -1)
    except Exception as exc:  # a user's function may raise anything on this probe
        raise ValueError(f"preprocess {name} fails on a (1, 4, 1, 3) batch of pixels: {exc}") from exc
    if got.shape[1] != 3:
        raise ValueError(f"preprocess {name} gives {got.shape[1]} channels; visualize makes RGB images")
    b = got[0]
    a = (got[1:] - b).T
    rgb = np.random.default_rng(0).random((1, 5, 5, 3))
    want = rgb @ a.T + b
    back = np.asarray(preprocess((255.0 * rgb).astype(np.float32)), np.float64)
    if back.shape != want.shape or not np.allclose(back, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max())):
        raise ValueError(
            f"preprocess {name} does not scale pixels linearly (x * a + b per channel, as none, "
            "unit, symmetric, imagenet and caffe do); visualize follows the gradient through it "
            "and needs that: pass the model's pixel scaling only (resizing and cropping have "
            "nothing to do on a synthesised image)"
        )
    return a, b


class _Image:
    """The parametrised images ``(N, H, W, 3)`` and the way back from a gradient on them."""

    def __init__(self, n: int, h: int, w: int, param: str, decorrelate: bool, rng: np.random.Generator) -> None:
        self.h, self.w, self.param = h, w, param
        self.color = _COLOR if decorrelate else np.eye(3)
        if param == "fourier":
            fy = np.fft.fftfreq(h)[:, None]
            fx = np.fft.rfftfreq(w)[None, :]
            freq = np.sqrt(fy * fy + fx * fx)
            self.scale = (1.0 / np.maximum(freq, 1.0 / max(h, w)))[None, :, :, None]
            # irfft2 reads the columns of the DC and (even width) Nyquist once, the others
            # twice (their mirror image): its adjoint weighs them so
            twice = np.full(fx.shape[1], 2.0)
            twice[0] = 1.0
            if w % 2 == 0:
                twice[-1] = 1.0
            self.twice = twice[None, None, :, None]
            shape = (n, h, w // 2 + 1, 3)
            self.params = [rng.normal(0.0, 0.01, shape), rng.normal(0.0, 0.01, shape)]  # re, im
        else:
            self.params = [rng.normal(0.0, 0.01, (n, h, w, 3))]

    def spatial(self, params: list[np.ndarray]) -> np.ndarray:
        if self.param == "fourier":
            spectrum = (params[0] + 1j * params[1]) * self.scale
            return np.fft.irfft2(spectrum, s=(self.h, self.w), axes=(1, 2), norm="ortho") / _FOURIER_DAMP
        return params[0]

    def rgb(self, params: list[np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.spatial(params) @ self.color.T)))

    def backward(self, rgb: np.ndarray, grad_rgb: np.ndarray) -> list[np.ndarray]:
        """The gradient on the parameters of a gradient on ``rgb`` (the images they give)."""
        g = (grad_rgb * rgb * (1.0 - rgb)) @ self.color
        if self.param == "fourier":
            gs = np.fft.rfft2(g / _FOURIER_DAMP, axes=(1, 2), norm="ortho") * self.twice * self.scale
            return [gs.real, gs.imag]
        return [g]

    def blur(self, params: list[np.ndarray], sigma: float) -> list[np.ndarray]:
        """A Gaussian blur of the picture before the colour mixing (which commutes with it),
        periodic like the jitter; in the spectrum a product."""
        fy = np.fft.fftfreq(self.h)[:, None]
        fx = np.fft.rfftfreq(self.w)[None, :]
        gain = np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * (fy * fy + fx * fx))[None, :, :, None]
        if self.param == "fourier":
            return [p * gain for p in params]
        spec = np.fft.rfft2(params[0], axes=(1, 2)) * gain
        return [np.fft.irfft2(spec, s=(self.h, self.w), axes=(1, 2))]


def _penalties(rgb: np.ndarray, l2: float, tv: float) -> np.ndarray:
    """The gradient of ``- l2 * mean((rgb - 0.5)^2) - tv * (mean(dx^2) + mean(dy^2))`` per image."""
    g = np.zeros_like(rgb)
    if l2:
        g -= l2 * 2.0 * (rgb - 0.5) / (rgb[0].size)
    if tv:
        dy = rgb[:, 1:] - rgb[:, :-1]
        dx = rgb[:, :, 1:] - rgb[:, :, :-1]
        gy = 2.0 * tv * dy / max(dy[0].size, 1)
        gx = 2.0 * tv * dx / max(dx[0].size, 1)
        g[:, 1:] -= gy
        g[:, :-1] += gy
        g[:, :, 1:] -= gx
        g[:, :, :-1] += gx
    return g


def _layer(adapter: Any, layer: Any) -> GraphNode:
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (`camlens.layers(model)` lists them); got {layer!r}")
    nodes, _ = _select(adapter, adapter.graph(), [layer])
    if len(nodes) != 1:
        raise ValueError(
            f"layer {layer!r} has {len(nodes)} call sites ({', '.join(n.label for n in nodes)}); name one"
        )
    if not adapter.can_probe(nodes[0]):
        raise ValueError(f"{nodes[0].label!r} is a function inside forward(), not a module; pick a module")
    return nodes[0]


@interruptible
def visualize(
    model: Any,
    layer: str | None = None,
    channels: int | Sequence[int] | None = None,
    *,
    classes: int | Sequence[int] | None = None,
    position: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    preprocess: str | Callable[[np.ndarray], np.ndarray] | None = None,
    steps: int = 256,
    lr: float = 0.05,
    param: str = "fourier",
    decorrelate: bool = True,
    jitter: int = 8,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    tv: float = 0.0,
    l2: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> Visualization:
    """Images that maximise units of ``model``: one per channel of ``layer`` (its mean over
    the map, or the neuron at ``position``), or one per class logit of ``classes``.

    Gradient ascent (Adam, step ``lr``) for ``steps`` steps, from a random start drawn with
    ``seed``, maximising ``unit - l2 * mean((rgb - 0.5)^2) - tv * (mean(dx^2) + mean(dy^2))``
    on the RGB image ``rgb`` in [0, 1] (means over pixels and colours; ``dx``, ``dy`` the
    differences of neighbouring pixels). Each step the image is shifted by up to ``jitter``
    pixels (the same random shift for every image; wrapping round, so the shift is undone
    exactly on the gradient, where Lucent pads and crops); every ``blur_every`` steps the
    picture gets a Gaussian blur of ``blur_sigma`` pixels. The result does not depend on
    ``batch_size`` (images per model run): the start and the shifts are drawn for all at once.

    Args:
        model: a Keras 3 model or a ``torch.nn.Module`` with one RGB image input (left exactly
            as it was).
        layer, channels: a layer name and its channels (an int, a list, ``range(16)``).
        classes: class indices, for their logits (the final softmax skipped) instead of a layer.
        position: ``(y, x)`` on the layer's map: maximise that neuron, not the channel's mean.
        size: ``(H, W)`` of the images; a model with its own input size needs none.
        preprocess: what the model's inputs are made with from pixels 0..255, a name of
            :data:`camlens.io.PREPROCESSING` (``None``: "none") or a function; it must be
            linear per pixel, since the gradient is followed through it.
        param: ``"fourier"`` (the spectrum, scaled by ``1 / frequency``) or ``"pixels"``.
        decorrelate: mix the colours by ImageNet's colour covariance.

    Returns:
        a :class:`Visualization`: ``images (N, H, W, 3)``, ``objectives (steps, N)``,
        ``save(folder)`` (``grid.png``, one PNG per image, ``index.json``).

    Differences from Lucent's ``render_vis``: the shift wraps round instead of padding and
    cropping (so it is exact on the gradient), no random scaling or rotation (each would need
    an interpolation's adjoint in numpy), blur is applied to the parameters (Lucent has none;
    Yosinski et al. 2015 blur the pixels), and the L2 and TV penalties are means, so their
    weights do not depend on the image size.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a whole number of at least {0 if name == 'seed' else 1}; got {value!r}")
    for name, value in (("jitter", jitter), ("blur_every", blur_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a whole number of at least 0; got {value!r}")
    for name, value in (("lr", lr), ("tv", tv), ("l2", l2), ("blur_sigma", blur_sigma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a number of at least 0; got {value!r}")
    if param not in PARAMS:
        raise ValueError(f"unknown param {param!r}; use one of {', '.join(PARAMS)}")
    pre_name = repr(preprocess) if isinstance(preprocess, str) or preprocess is None else getattr(
        preprocess, "__name__", "function")
    a_pre, b_pre = _affine(as_preprocess(preprocess), pre_name)

    adapter = adapt(model)
    specs = adapter.input_specs()
    if len(specs) != 1 or len(specs[0].shape) != 4:
        raise ValueError(f"visualize needs a model with one image input; this one takes {[s.shape for s in specs]}")
    _, mh, mw, mc = specs[0].shape
    if mc is not None and mc != 3:
        raise ValueError(f"visualize makes RGB images; the model takes {mc} channel(s)")
    if size is None:
        if mh is None or mw is None:
            raise ValueError("the model has no input size of its own: give size=(H, W), e.g. size=(224, 224)")
        size = (int(mh), int(mw))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 2 for d in size)):
        raise ValueError(f"size must be (height, width) of at least 2 pixels each; got {size!r}")
    h, w = int(size[0]), int(size[1])
    if (mh is not None and mh != h) or (mw is not None and mw != w):
        raise ValueError(f"size {h}x{w} differs from the model's input size {mh}x{mw}; drop size=")
    adapter.prepare(np.zeros((1, h, w, 3), np.float32))  # the graph at this size

    node = None
    weights_for: Callable[[list[int]], np.ndarray] | None = None
    if classes is not None:
        if layer is not None or channels is not None or position is not None:
            raise ValueError("give classes= or layer= with channels=, not both")
        units = _int_list(classes, "classes")
        graph = adapter.graph()
        out_shape = graph.nodes[graph.outputs[0]].shape
        k = int(out_shape[-1]) if out_shape and out_shape[-1] is not None else None
        bad = [c for c in units if c < 0 or (k is not None and c >= k)]
        if bad:
            raise ValueError(f"class {bad[0]} is out of range: the model gives {k} classes (0-{(k or 1) - 1})")
        labels = [f"logit of class {c}" for c in units]
    else:
        if layer is None or channels is None:
            raise ValueError("give layer= and channels= (or classes= for class logits)")
        node = _layer(adapter, layer)
        assert node.shape is not None
        mh_, mw_, depth = (int(d) for d in node.shape)  # type: ignore[arg-type]
        units = _int_list(channels, "channels")
        bad = [c for c in units if not 0 <= c < depth]
        if bad:
            raise ValueError(f"channel {bad[0]} is out of range: layer {node.label!r} has {depth} channels (0-{depth - 1})")
        if position is not None:
            if (not isinstance(position, (tuple, list)) or len(position) != 2
                    or not all(isinstance(d, int) and not isinstance(d, bool) for d in position)
                    or not (0 <= position[0] < mh_ and 0 <= position[1] < mw_)):
                raise ValueError(f"position must be (y, x) on the layer's {mh_}x{mw_} map; got {position!r}")
        labels = [f"{node.label} ch {c}" + ("" if position is None else f" at ({position[0]}, {position[1]})")
                  for c in units]

        def weights_for(part: list[int]) -> np.ndarray:
            wts = np.zeros((len(part), mh_, mw_, depth), np.float32)
            for i, c in enumerate(part):
                if position is None:
                    wts[i, :, :, c] = 1.0 / (mh_ * mw_)
                else:
                    wts[i, position[0], position[1], c] = 1.0
            return wts

    n = len(units)
    rng = np.random.default_rng(seed)
    image = _Image(n, h, w, param, decorrelate, rng)
    shifts = rng.integers(-jitter, jitter + 1, size=(steps, 2))

    def unit_gradients(rgb: np.ndarray, idx: np.ndarray, shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        x = (rgb @ a_pre.T + b_pre).astype(np.float32)
        x = np.roll(x, shift, axis=(1, 2))
        part = [units[i] for i in idx]
        if node is None:
            scores, g = adapter.input_gradients([x], 0, Logit(part if len(part) > 1 else part[0]))
        else:
            assert weights_for is not None
            scores, g = adapter.activation_gradients([x], node, weights_for(part))
        g = np.roll(np.asarray(g, np.float64), (-shift[0], -shift[1]), axis=(1, 2))
        return np.asarray(scores, np.float64), g @ a_pre

    objectives = np.zeros((steps, n))
    flat = np.ones(n, bool)  # no gradient at any step: the image is the random start
    final = np.zeros(n)
    images = np.zeros((n, h, w, 3), np.float32)
    for part in batches(n, batch_size):
        idx = np.arange(n)[part]
        params = [p[part].copy() for p in image.params]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        for t in range(steps):
            if blur_every and t and t % blur_every == 0 and blur_sigma > 0:
                params = image.blur(params, blur_sigma)
            rgb = image.rgb(params)
            scores, g = unit_gradients(rgb, idx, (int(shifts[t, 0]), int(shifts[t, 1])))
            objectives[t, idx] = scores
            flat[idx] &= ~np.any(g != 0, axis=(1, 2, 3))
            grads = image.backward(rgb, g + _penalties(rgb, l2, tv))
            for k, gk in enumerate(grads):  # Adam, ascending
                m[k] = 0.9 * m[k] + 0.1 * gk
                v[k] = 0.999 * v[k] + 0.001 * gk * gk
                mhat = m[k] / (1 - 0.9 ** (t + 1))
                vhat = v[k] / (1 - 0.999 ** (t + 1))
                params[k] = params[k] + lr * mhat / (np.sqrt(vhat) + 1e-8)
        rgb = image.rgb(params)
        final[idx] = unit_gradients(rgb, idx, (0, 0))[0]
        images[idx] = rgb.astype(np.float32)
    if flat.any():
        warn(f"{', '.join(labels[i] for i in np.flatnonzero(flat))}: the gradient was zero at every "
             "step (a ReLU that never fired on these images), so the image is the random start; "
             "try another seed, more jitter, or the layer before the activation", RuntimeWarning)
    settings = {"steps": steps, "lr": lr, "param": param, "decorrelate": decorrelate, "jitter": jitter,
                "blur_every": blur_every, "blur_sigma": blur_sigma, "tv": tv, "l2": l2, "seed": seed,
                "size": [h, w], "position": None if position is None else list(position),
                "objective": "class logit" if node is None else ("neuron" if position is not None else "channel mean")}
    return Visualization(images, objectives, final, labels, None if node is None else node.label, units, settings,
                         [units[i] for i in np.flatnonzero(flat)])
