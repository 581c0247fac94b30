"""Start-up: what each command costs on a tiny model, and which frameworks it imports.

A command should pay only for the framework its model needs (issue 18, target 2): ``camlens
explain`` on a small torch module within 2x of ``python -c "import torch"``, ``camlens --help``
under 0.5 s. Each row runs one command in a fresh Python (``_startup_probe.py``: the command
line's ``main``, then the frameworks found in ``sys.modules``) on a model that costs next to
nothing to run, so what is left is imports and set-up:

* ``torch``: a torch ``FILE.py:NAME`` (a 3x3 convolution and a linear layer, ``--size 32``);
* ``keras/jax``, ``keras/torch``, ``keras/tensorflow``: a ``.keras`` file (two convolutions,
  32x32) with ``KERAS_BACKEND`` set; ``keras --backend jax``: the same file, no
  ``KERAS_BACKEND``, the backend given by the flag;
* ``demo``: the bundled EfficientNet-Lite0 on one photo, Grad-CAM only (its time is mostly
  the model's work, not start-up).

``wall s`` is the fastest of ``--repeat`` runs (the child's whole life, interpreter start
included), ``CPU s`` its least CPU time (all threads; a shared machine disturbs it less);
``baseline`` is the same for ``python -c "import torch"`` (torch models) or ``import keras``
on the model's backend (Keras models; ``python -c pass`` for ``--help``); ``ratio`` is wall
over the baseline's wall (CPU over CPU in brackets). The runs take turns, baselines included,
so that the load of other processes falls on all alike. ``app`` starts the server's set-up
(model loaded, app built) and returns where it would start serving.

Keras 3 imports JAX when ``import keras`` runs wherever JAX is installed
(``keras.src.callbacks.orbax_checkpoint``), on every backend: the ``jax`` beside a Keras model on
torch or TensorFlow is Keras's, and is in the ``import keras`` baseline too.

    python benchmarks/startup.py                    # every command x model kind (minutes)
    python benchmarks/startup.py --commands explain,layers --kinds torch
    python benchmarks/startup.py --smoke            # --help, torch and the caller's Keras backend
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import has, machine, versions

HERE = Path(__file__).resolve().parent
PROBE = HERE / "_startup_probe.py"
COMMANDS = ("help", "explain", "layers", "features", "report", "evaluate", "run", "visualize", "app", "demo")
KINDS = ("torch", "keras/jax", "keras/torch", "keras/tensorflow", "keras --backend jax")
HELP_TARGET, EXPLAIN_TARGET = 0.5, 2.0

TORCH_FILE = """\
import torch


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()
"""

KERAS_FILE = """\
import sys
import keras
inputs = keras.Input((32, 32, 3))
h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h)).save(sys.argv[1])
"""


def _env(kind: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TQDM_DISABLE="1")
    env.pop("KERAS_BACKEND", None)
    if kind.startswith("keras/"):
        env["KERAS_BACKEND"] = kind.partition("/")[2]
    elif kind == "torch":
        env["KERAS_BACKEND"] = "tensorflow"  # what the command line sets when nothing is
    return env


def _argv(command: str, kind: str, folder: Path, out: Path) -> list[str]:
    if command == "help":
        return ["--help"]
    if command == "demo":
        return ["demo", "--method", "gradcam", "--image", str(folder / "a.png"), "-o", str(out),
                "--backend", kind.partition("/")[2]]
    model = str(folder / "tiny_net.py") + ":net" if kind == "torch" else str(folder / "tiny.keras")
    images = [str(folder / "a.png")]
    extra = ["--size", "32"] if kind == "torch" else []
    if kind == "keras --backend jax":
        extra += ["--backend", "jax"]
    argv = {
        "explain": [model, *images, "-o", str(out)],
        "layers": [model],
        "features": [model, *images, "-o", str(out)],
        "report": [model, *images, "-o", str(out / "report.html")],
        "evaluate": [model, *images, "--method", "gradcam"],
        "run": [model, *images, "-o", str(out)],
        "visualize": [model, "--classes", "0", "-o", str(out)],
        "app": [model],
    }[command]
    return [command, *argv, *extra]


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one child process, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(cmd[1:])} failed with exit status {proc.returncode}")
    return wall, cpu, proc.stdout + proc.stderr


def _baseline(kind: str, command: str) -> tuple[str, list[str], dict[str, str]]:
    if command == "help":
        return "python", [sys.executable, "-c", "pass"], _env("torch")
    if kind == "torch":
        return "import torch", [sys.executable, "-c", "import torch"], _env(kind)
    backend = kind.partition("/")[2] if "/" in kind else "jax"
    return f"import keras ({backend})", [sys.executable, "-c", "import keras"], _env(f"keras/{backend}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="--help, explain and layers on torch, explain on the caller's Keras backend (CI)")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"from {','.join(COMMANDS)}")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"from {','.join(KINDS)}")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each (default 3; smoke 1)")
    args = parser.parse_args(argv)
    commands = [c for c in args.commands.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [c for c in commands if c not in COMMANDS] + [k for k in kinds if k not in KINDS]
    if bad:
        parser.error(f"unknown {bad}; commands are {', '.join(COMMANDS)}; kinds are {', '.join(KINDS)}")
    repeat = args.repeat or (1 if args.smoke else 3)

    if args.smoke:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        rows = [("help", "-"), ("explain", "torch"), ("layers", "torch"), ("explain", f"keras/{backend}")]
    else:
        rows = [("help", "-")] if "help" in commands else []
        rows += [(c, k) for c in commands if c not in ("help", "demo") for k in kinds]
        if "demo" in commands:
            rows += [("demo", k) for k in kinds if k.startswith("keras/")]
    needs = {"torch": "torch", "keras": "keras"}
    for c, k in list(rows):
        missing = [m for p, m in needs.items() if k.startswith(p) and not has(m)]
        if missing or (k.startswith("keras/torch") and not has("torch")) or ("jax" in k and not has("jax")):
            print(f"({c} on {k}: {missing or 'its backend'} not installed; skipped)")
            rows.remove((c, k))
    if not has("fastapi") and any(c == "app" for c, _ in rows):
        rows = [r for r in rows if r[0] != "app"]
        print("(fastapi is not installed: the app rows are skipped)")

    print(f"Start-up: each command in a fresh process on a tiny model; best of {repeat} run(s)")
    print(f"machine: {machine()}; {versions('numpy', 'keras', 'tensorflow-cpu', 'tensorflow', 'jax', 'torch')}")
    with tempfile.TemporaryDirectory(prefix="camlens-startup-") as tmp:
        folder = Path(tmp)
        (folder / "tiny_net.py").write_text(TORCH_FILE)
        from PIL import Image

        Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
        if any(k.startswith("keras") for _, k in rows):
            save_backend = next((k.partition("/")[2] for _, k in rows if k.startswith("keras/")), "jax")
            _timed([sys.executable, "-c", KERAS_FILE, str(folder / "tiny.keras")], _env(f"keras/{save_backend}"))

        jobs: dict[str, tuple[list[str], dict[str, str]]] = {}
        base_of: dict[tuple[str, str], str] = {}
        for i, (c, k) in enumerate(rows):
            name, cmd, env = _baseline(k, c)
            jobs.setdefault(name, (cmd, env))
            base_of[(c, k)] = name
            out = folder / f"out{i}"
            jobs[f"{c} {k}"] = ([sys.executable, str(PROBE), *_argv(c, k, folder, out)], _env(k))
        walls: dict[str, list[float]] = {n: [] for n in jobs}
        cpus: dict[str, list[float]] = {n: [] for n in jobs}
        found: dict[str, str] = {}
        for _ in range(repeat):  # taking turns, baselines included
            for name, (cmd, env) in jobs.items():
                wall, cpu, text = _timed(cmd, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                lines = [line for line in text.splitlines() if line.startswith("FRAMEWORKS ")]
                if lines:  # "FRAMEWORKS <exit status> <name,name,...>"
                    found[name] = lines[-1].split(" ", 2)[2].strip()

    head = (f"{'command':<10} {'model':<20} {'wall s':>7} {'CPU s':>6}  {'baseline':<22} {'wall s':>7} {'CPU s':>6} "
            f"{'ratio':>12}  frameworks imported")
    print(head)
    print("-" * len(head))
    for name in (n for n in jobs if n in base_of.values()):
        print(f"{'(baseline)':<10} {name:<20} {min(walls[name]):>7.2f} {min(cpus[name]):>6.2f}")
    results: dict[tuple[str, str], float] = {}
    for c, k in rows:
        name, base = f"{c} {k}", base_of[(c, k)]
        wall, cpu, bwall, bcpu = min(walls[name]), min(cpus[name]), min(walls[base]), min(cpus[base])
        results[(c, k)] = wall / bwall
        ratio = f"{wall / bwall:.2f} ({cpu / bcpu:.2f})" if c != "help" else "-"
        print(f"{c:<10} {k:<20} {wall:>7.2f} {cpu:>6.2f}  {base:<22} {bwall:>7.2f} {bcpu:>6.2f} {ratio:>12}  "
              f"{found.get(name) or '(none)'}", flush=True)
    if ("help", "-") in results:
        print(f"target: --help under {HELP_TARGET} s: {min(walls['help -']):.2f} s, "
              f"{'met' if min(walls['help -']) < HELP_TARGET else 'NOT met'}")
    if ("explain", "torch") in results:
        r = results[("explain", "torch")]
        print(f"target: explain on a torch module within {EXPLAIN_TARGET}x of import torch: {r:.2f}x, "
              f"{'met' if r <= EXPLAIN_TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
