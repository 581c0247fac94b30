"""What the benchmarks share: memory and time measurement, child processes, models, versions.

Every benchmark measures each configuration in a fresh Python process (``--worker NAME``): the
Keras backend is fixed per process, and one run's caches and allocator pools must not inflate
the next one's memory. The child prints one line ``RESULT <json>``; :func:`child` runs it and
reads that line.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
#: pytorch-grad-cam's torchvision stand-in, shared with tests/parity (one copy, see below)
STUBS = ROOT / "tests" / "stubs"


# --- memory ---------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    """Current resident set size, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakSampler:
    """Samples RSS on a thread while the ``with`` block runs."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() or 0)
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)


class MemoryWatch:
    """RSS just before the block (``base``) and its peak growth during it (``peak``), bytes.

    The peak is the larger of a thread sampling RSS every millisecond and, when the block raised
    the process's lifetime peak, ``getrusage``'s ``ru_maxrss`` (which catches spikes between
    samples)."""

    def __enter__(self) -> MemoryWatch:
        self.base = rss_bytes()
        self._lifetime = max_rss_bytes()
        self._sampler = PeakSampler().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sampler.__exit__(*exc)
        after = max_rss_bytes()
        peak = max(self._sampler.peak, after if after > self._lifetime else 0)
        self.peak = None if self.base is None else peak - self.base


# --- time -----------------------------------------------------------------------------------


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_seconds(fn: Callable[[], Any]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one call; ``cpu`` is this process's CPU time, all threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Call each function ``repeat`` times, taking turns, and return every duration (wall
    seconds); with ``cpu``, also collect the CPU seconds of each call there.

    Taking turns spreads the load of other processes over all the functions alike, so the
    ratios of their times are fair even on a busy machine; report the minimum (the run least
    disturbed) or the median. Each round starts one function later than the one before, so
    that no function always runs right after the same other one: a call that leaves much
    memory to free (an eager Keras forward pass on torch records its autograd graph: half a
    gigabyte at batch 8) slows the call after it, which made one function of a fixed order
    look 1.5x slower than in another order. A call of a minute or more cannot take turns at a
    finer grain: its CPU time, which other processes inflate far less than its wall time, is
    the fairer measure there."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, used = cpu_seconds(fns[name])
            out[name].append(wall)
            if cpu is not None:
                cpu.setdefault(name, []).append(used)
    return out


# --- child processes ------------------------------------------------------------------------


def child(script: Path, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800) -> Any:
    """Run ``script args`` in a fresh Python and return the JSON of its ``RESULT`` line."""
    full = dict(os.environ)
    full.setdefault("KERAS_BACKEND", "tensorflow")
    full.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=full, capture_output=True, text=True, timeout=timeout
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{script.name} {' '.join(args)} failed with exit status {proc.returncode}")
    return json.loads(results[-1][len("RESULT ") :])


def emit(result: Any) -> None:
    """What a worker process hands back to :func:`child`."""
    print("RESULT " + json.dumps(result), flush=True)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_cuda() -> None:
    """Exit at once, naming what is missing, unless torch sees a CUDA device (``--device cuda``)."""
    problem = None
    if not has("torch"):
        problem = "torch is not installed; install a CUDA build of torch (pip install torch)"
    else:
        import torch

        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            problem = (f"no CUDA device ({build}; torch.cuda.is_available() is False); run on a machine "
                       "with an NVIDIA GPU, or use --device cpu")
    if problem:
        print(f"{Path(sys.argv[0]).name}: --device cuda: {problem}", file=sys.stderr)
        raise SystemExit(2)


def cuda_name() -> str:
    import torch

    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


# --- peers ----------------------------------------------------------------------------------


def import_grad_cam() -> tuple[Any, bool]:
    """``pytorch_grad_cam`` and whether the torchvision stand-in was needed.

    pytorch-grad-cam (PyPI ``grad-cam``) imports torchvision when it is imported, only for its
    image utilities, which no benchmark calls; PyPI's torchvision wheels are built for one torch
    release each and none imports beside the torch 2.13.0 of this environment. Where the real
    torchvision cannot be imported, ``tests/stubs`` (a stand-in ``torchvision`` that defines just
    the names grad-cam imports, each raising ``NotImplementedError`` when called) is used for the
    import: ``tests/stubs/grad_cam_loader.py``, which the parity tests use too.
    """
    spec = importlib.util.spec_from_file_location("_camlens_grad_cam_loader", STUBS / "grad_cam_loader.py")
    assert spec is not None and spec.loader is not None
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    return loader.import_grad_cam()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings (constant maps on random weights) and no progress bars (grad-cam's tqdm)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.environ["TQDM_DISABLE"] = "1"
        yield


# --- models ---------------------------------------------------------------------------------


def tiny_keras(size: int = 32) -> Any:
    """A small conv net, for ``--smoke``: same code path, milliseconds per call."""
    import keras

    inputs = keras.Input((size, size, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def tiny_torch() -> Any:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )  # fmt: skip
    return net.eval()


def keras_model(name: str) -> Any:
    """``efficientnet-lite0`` (camlens's Keras port, ImageNet weights), ``resnet50`` (random
    weights), or ``tiny``."""
    if name == "tiny":
        return tiny_keras()
    if name == "efficientnet-lite0":
        from camlens.models import efficientnet_lite0

        return efficientnet_lite0()
    if name == "resnet50":
        import keras

        return keras.applications.ResNet50(weights=None)
    raise ValueError(f"no model {name!r}")


def torch_model(name: str) -> Any:
    """The native PyTorch counterparts of :func:`keras_model`, in eval mode; any other name is a
    torchvision model with random weights (seed 0): ``vgg11``, ``resnet18``..."""
    if name == "tiny":
        return tiny_torch()
    if name == "efficientnet-lite0":
        return efficientnet_lite0_torch()
    if name == "resnet50":
        return resnet50_torch()
    import torch
    import torchvision

    if not hasattr(torchvision.models, name):
        raise ValueError(f"no model {name!r}")
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def torch_run(name: str, batch: int, size: int, device: str = "cpu") -> tuple[Any, Any, Callable[[], Any]]:
    """``(net, x, forward)``: :func:`torch_model` on ``device``, a random ``(batch, 3, size, size)``
    input (seed 0) there, and the model's forward pass on it as a user runs it
    (``torch.no_grad()``; on CUDA it waits for the kernels, which run asynchronously)."""
    import torch

    net = torch_model(name).to(device)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size)).astype(np.float32)).to(device)

    def forward() -> Any:
        with torch.no_grad():
            out = net(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return net, x, forward


def efficientnet_lite0_torch() -> Any:
    """The original PyTorch EfficientNet-Lite0 with its ImageNet weights, except that the head's
    activation is a module of its own, ``head_act``.

    The original calls one ReLU6 module, ``_swish``, at the stem and again at the head.
    pytorch-grad-cam and torchcam hook modules, not call sites, so on the original they would
    record the 112x112 stem as well (grad-cam then explains the stem). With ``head_act`` every
    library explains the same 7x7x1280 layer; the computation is the original's.
    """
    import copy

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from camlens.models import efficientnet_lite as lite

    class Lite0(EfficientNet):  # type: ignore[misc]
        def extract_features(self, inputs: Any) -> Any:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self.head_act(self._bn1(self._conv_head(x)))

    net = Lite0.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(lite.weights_path(), weights_only=True, map_location="cpu"))
    net.head_act = copy.deepcopy(net._swish)
    return net.eval()


def resnet50_torch(classes: int = 1000) -> Any:
    """ResNet-50 (bottleneck blocks 3-4-6-3, as torchvision's, including its one in-place ReLU
    module per block called three times), random weights; no torchvision needed."""
    import torch

    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else None
            )

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            out += identity
            return self.relu(out)

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = 64, []
            for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                layers = []
                for i in range(blocks):
                    layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = width * 4
                stages.append(nn.Sequential(*layers))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    return ResNet50().eval()


def photos_nchw(batch: int, size: int = 224) -> np.ndarray:
    """``batch`` bundled photos (cycled), preprocessed for EfficientNet-Lite0, ``(N, 3, H, W)``;
    random images for other sizes."""
    if size != 224:
        return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    from camlens.models import preprocess_batch
    from camlens.samples import photo

    names = ("chelsea", "coffee", "rocket")
    x = preprocess_batch([photo(names[i % len(names)]) for i in range(batch)])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# --- the machine ----------------------------------------------------------------------------


def versions(*distributions: str) -> str:
    """Installed versions, read from the package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = [f"python {platform.python_version()}"]
    for name in distributions:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(out)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores"
