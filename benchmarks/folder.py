"""``camlens explain`` on a folder of photos: start-up, then the cost of each further image.

The batch work of the command line, measured end to end: the bundled EfficientNet-Lite0 (Keras
port, ImageNet weights) saved as a ``.keras`` file, a folder of JPEG copies of the bundled
photos at their own sizes (300x451 and the like; each is resized to 224x224 on reading), and
``camlens explain MODEL FOLDER --preprocess symmetric -o OUT`` (Grad-CAM, batch 16; per image
an overlay and a heatmap PNG and two .npy maps written at the photo's size, and
``results.json``/``results.csv``) run as a fresh process for two
folder sizes. The difference of the two wall times over the difference of the image counts is
the cost of one more image; what is left of the smaller run is the start-up (Python, Keras and
the model file loading, the first compiled call). Then, in this process, where one image's
time goes: reading and resizing the file, the explain call, writing the two PNGs.

    python benchmarks/folder.py            # 16 and 128 photos (about 2 minutes on 2 CPU cores)
    python benchmarks/folder.py --smoke    # a tiny model, 4 and 8 small images, for CI
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


def make_folder(root: Path, count: int, smoke: bool) -> Path:
    """``count`` image files: JPEG copies of the bundled photos (tiny PNGs for --smoke)."""
    from PIL import Image

    folder = root / f"photos-{count}"
    folder.mkdir()
    if smoke:
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
        return folder
    from camlens.samples import PHOTOS, photo

    names = list(PHOTOS)
    pixels = {n: np.clip(photo(n), 0, 255).astype(np.uint8) for n in names}
    for i in range(count):
        name = names[i % len(names)]
        Image.fromarray(pixels[name]).save(folder / f"{i:04d}_{name}.jpg", quality=90)
    return folder


def run_cli(model: Path, folder: Path, out: Path, preprocess: str) -> float:
    """Wall seconds of ``camlens explain`` on ``folder`` in a fresh process."""
    code = "import sys; from camlens.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "explain", str(model), str(folder), "--preprocess", preprocess,
           "--batch-size", "16", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"camlens explain failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def breakdown(model_path: Path, folder: Path, out: Path, preprocess: str) -> dict[str, float]:
    """Milliseconds per image of reading, explaining and writing, in this process (batch 16;
    the first batch, which compiles, not counted when there are more)."""
    import keras

    import camlens
    from camlens.io import PREPROCESSING, load_image

    model = keras.saving.load_model(model_path, compile=False)
    _, h, w, _ = model.input_shape
    files = sorted(folder.iterdir())
    prep = PREPROCESSING[preprocess]
    times = {"read": 0.0, "explain": 0.0, "write": 0.0}
    done = 0
    for k, start in enumerate(range(0, len(files), 16)):
        chunk = files[start : start + 16]
        t0 = time.perf_counter()
        x = np.stack([load_image(f, (h, w)) for f in chunk])
        t1 = time.perf_counter()
        exp = camlens.explain(model, prep(x), batch_size=16)
        t2 = time.perf_counter()
        exp.save(out / f"batch{k}", images=x.astype(np.uint8), write_json=False)
        t3 = time.perf_counter()
        if k == 0 and len(files) > 16:
            continue  # the first batch compiles
        times["read"] += t1 - t0
        times["explain"] += t2 - t1
        times["write"] += t3 - t2
        done += len(chunk)
    return {"images": done, **{key: 1000 * v / max(done, 1) for key, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and small images, for CI")
    args = parser.parse_args(argv)
    small, large = (4, 8) if args.smoke else (16, 128)
    with quiet(), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.smoke:
            model, preprocess, what = tiny_keras(32), "unit", "tiny Keras CNN, 32 px"
        else:
            from camlens.models import efficientnet_lite0

            model, preprocess = efficientnet_lite0(pretrained=True), "symmetric"
            what = "EfficientNet-Lite0 (ImageNet weights), 224 px"
        model_path = root / "model.keras"
        model.save(model_path)
        folders = {n: make_folder(root, n, args.smoke) for n in (small, large)}
        walls = {n: run_cli(model_path, folders[n], root / f"out-{n}", preprocess) for n in (small, large)}
        parts = breakdown(model_path, folders[large], root / "in-process", preprocess)
    import keras

    per_image = (walls[large] - walls[small]) / (large - small)
    startup = walls[small] - small * per_image
    print(f"camlens explain on a folder ({what}; Grad-CAM, batch 16, overlay, heatmap and maps at "
          "each photo's size)")
    print(f"machine: {machine()}; {versions('numpy', 'keras', 'tensorflow', 'tensorflow-cpu', 'jax', 'torch')}; "
          f"Keras backend: {keras.backend.backend()}")
    head = f"{'run':<44} {'images':>6} {'wall s':>8} {'ms / image':>11}"
    print(head)
    print("-" * len(head))
    for n in (small, large):
        print(f"{'camlens explain, a fresh process':<44} {n:>6} {walls[n]:>8.2f} {1000 * walls[n] / n:>11.1f}")
    print(f"{'one more image (difference of the two runs)':<44} {'':>6} {'':>8} {1000 * per_image:>11.1f}")
    print(f"{'start-up (imports, model file, first call)':<44} {'':>6} {startup:>8.2f} {'':>11}")
    for key, label in (("read", "in-process: read and resize the file"),
                       ("explain", "in-process: camlens.explain"),
                       ("write", "in-process: write 224x224 heatmap and overlay")):
        print(f"{label:<44} {parts['images']:>6} {'':>8} {parts[key]:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
