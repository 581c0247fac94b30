"""Peak memory of ``camlens report`` and ``camlens evaluate`` on a few photos, each a fresh process.

What a user's machine must hold for the two commands that rerun the model most: the bundled
EfficientNet-Lite0 (``bundled``), one, two and five of the bundled photos written as PNG files,
``camlens report bundled PHOTOS -o r.html`` (Grad-CAM; and with ``--metrics deletion,insertion``)
and ``camlens evaluate bundled PHOTOS`` (its defaults: Grad-CAM, Grad-CAM++, Score-CAM;
deletion, insertion, Average Drop, Increase in Confidence, 100 steps). The figure is the child
process's resident-set high-water mark (``ru_maxrss`` of ``os.wait4``), so it counts what the
framework allocates outside Python too; importing TensorFlow and Keras alone is about 0.9 GB
of it (the ``import only`` row).

    python benchmarks/cli_memory.py            # about 6 minutes on 2 CPU cores
    python benchmarks/cli_memory.py --smoke    # a tiny Keras model file and small images, for CI
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine, quiet, tiny_keras, versions

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLI = "import sys; from camlens.cli import main; sys.exit(main(sys.argv[1:]))"


def peak(args: list[str], code: str = CLI) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of ``python -c code ARGS`` in a fresh process."""
    env = dict(os.environ, TQDM_DISABLE="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


def photos(root: Path, count: int, smoke: bool) -> list[str]:
    from PIL import Image

    out = []
    if smoke:
        rng = np.random.default_rng(0)
        for i in range(count):
            out.append(str(root / f"{i}.png"))
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(out[-1])
        return out
    from camlens.samples import PHOTOS, photo

    for name in list(PHOTOS)[:count]:
        out.append(str(root / f"{name}.png"))
        Image.fromarray(np.clip(photo(name), 0, 255).astype(np.uint8)).save(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and small images, for CI")
    args = parser.parse_args(argv)
    counts = (1, 2) if args.smoke else (1, 2, 5)
    rows = []
    with quiet(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.smoke:
            model_path = root / "tiny.keras"
            tiny_keras(32).save(model_path)
            model, extra, what = str(model_path), ["--preprocess", "unit"], "tiny Keras CNN, 32 px"
        else:
            model, extra, what = "bundled", [], "bundled EfficientNet-Lite0 (ImageNet weights), 224 px"
        imports = "import os, keras, camlens.cli"
        rows.append(("import only (Python, TensorFlow, Keras, camlens)", "", *peak([], imports)))
        files = photos(root, max(counts), args.smoke)
        steps = ["--steps", "10"] if args.smoke else []
        for n in counts:
            chosen = files[:n]
            out = str(root / "r.html")
            rows.append(("report (Grad-CAM)", n, *peak(["report", model, *chosen, *extra, "-o", out])))
            rows.append(("report (Grad-CAM; deletion, insertion)", n,
                         *peak(["report", model, *chosen, *extra, "--metrics", "deletion,insertion", "-o", out])))
            rows.append(("evaluate (3 methods, 4 metrics)", n, *peak(["evaluate", model, *chosen, *extra, *steps])))
    import keras

    print(f"peak memory of camlens report / evaluate, a fresh process per row ({what})")
    print(f"machine: {machine()}; {versions('numpy', 'keras', 'tensorflow', 'tensorflow-cpu')}; "
          f"Keras backend: {keras.backend.backend()}")
    head = f"{'command':<52} {'photos':>6} {'peak MiB':>9} {'wall s':>7}"
    print(head)
    print("-" * len(head))
    for label, n, mib, wall in rows:
        print(f"{label:<52} {n!s:>6} {mib:>9.0f} {wall:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
