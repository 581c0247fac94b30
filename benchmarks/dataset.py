"""``camlens run`` on a folder of bundled-photo variants: images per second of forward-only
inference, the local engine and the Ray engine with 1 and 2 workers, and memory over the run.

The folder (generated into a temporary folder, never committed): ``--images`` JPEGs made from
the bundled photos by flips, crops and resizes (a different variant each, at sizes between
about 150 and 600 pixels a side). Each configuration runs in a fresh process on the same folder
at the same batch size:

- ``forward``: read each photo, preprocess it, the model's own ``predict_on_batch`` (no map);
- ``local``: ``run_local`` (Grad-CAM; the table's rows, the ``.npy`` maps, parts and the table);
- ``ray 1`` / ``ray 2``: ``run_ray`` with a local Ray started in that process, 1 or 2 actors.

Throughput is counted from the first batch done to the last (the model's loading, the first
compiled call and Ray's start are the ``start s`` column), so it is what a long run gets per
image. Memory: the resident size of the process and all its children (Ray's processes and
actors included) when the first batch is done and at the end, and its peak, sampled every
0.2 s: flat means no growth with the number of images.

    python benchmarks/dataset.py                  # 2000 images, bundled EfficientNet-Lite0
    python benchmarks/dataset.py --images 600     # fewer
    python benchmarks/dataset.py --smoke          # a tiny model, 24 small images, for CI
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import child, emit, machine, versions

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve()
CONFIGS = ("forward", "local", "ray 1", "ray 2")


# --- the folder -----------------------------------------------------------------------------


def make_folder(folder: Path, count: int, smoke: bool) -> None:
    """``count`` variants of the bundled photos (random small pictures for --smoke)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if smoke:
        for i in range(count):
            h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        return
    from camlens.samples import PHOTOS, photo

    bases = [Image.fromarray(np.clip(photo(n), 0, 255).astype(np.uint8)) for n in PHOTOS]
    for i in range(count):
        img = bases[i % len(bases)]
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.2:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        scale = rng.uniform(150, 600) / max(cw, ch)
        img = img.resize((max(8, round(cw * scale)), max(8, round(ch * scale))), Image.BILINEAR)
        img.save(folder / f"{i:05d}.jpg", quality=90)


# --- memory of a process tree ---------------------------------------------------------------


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    keep, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == p and pid not in keep:
                keep.add(pid)
                frontier.append(pid)
    return sum(rss.get(p, 0) for p in keep)


class Watch:
    """Progress and memory of a run: the time and the images done at the first batch, the
    process tree's RSS then, its peak (sampled every 0.2 s) and at the end."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.done = 0
        self.rss_first = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss(os.getpid()))

    def progress(self, n: int) -> None:
        self.done += n
        if self.first is None:
            self.first = (time.perf_counter(), self.done)
            self.rss_first = tree_rss(os.getpid())

    def finish(self, images: int) -> dict[str, Any]:
        end = time.perf_counter()
        rss_end = tree_rss(os.getpid())
        self._stop.set()
        self._thread.join()
        t_first, n_first = self.first or (self.start, 0)
        return {"images": images, "start": t_first - self.start, "rate": (images - n_first) / max(end - t_first, 1e-9),
                "wall": end - self.start, "rss_first": self.rss_first, "rss_end": rss_end,
                "peak": max(self.peak, rss_end, self.rss_first)}  # fmt: skip


# --- one configuration, in its own process --------------------------------------------------


def _spec(model: str, out: Path, batch: int, smoke: bool) -> Any:
    from camlens.dataset.spec import RunSpec

    if smoke:
        return RunSpec(model=model, out=str(out), methods=("gradcam",), preprocess="unit", batch_size=batch)
    return RunSpec(model=model, out=str(out), methods=("gradcam",), batch_size=batch)


def forward(model: str, folder: Path, batch: int, smoke: bool) -> dict[str, Any]:
    """Read, preprocess and ``predict_on_batch`` every photo, batch by batch: the work of a
    run without the maps."""
    from camlens.files import _read_image, _read_photo

    files = sorted(str(p) for p in folder.iterdir())
    if smoke:
        from camlens.io import load_model

        net = load_model(model)
        _, h, w, _ = net.input_shape

        def inputs(chunk: list[str]) -> np.ndarray:
            return np.stack([_read_photo(p, (h, w), 3)[1] for p in chunk]) / 255.0
    else:
        from camlens.models import bundled

        lite = bundled()
        net = lite.model

        def inputs(chunk: list[str]) -> np.ndarray:
            return np.stack([np.asarray(lite.preprocess(_read_image(p, None, 3)), np.float32) for p in chunk])

    watch = Watch()
    for start in range(0, len(files), batch):
        net.predict_on_batch(inputs(files[start : start + batch]))
        watch.progress(len(files[start : start + batch]))
    return watch.finish(len(files))


def engine(kind: str, workers: int, model: str, folder: Path, out: Path, batch: int, smoke: bool) -> dict[str, Any]:
    from camlens.dataset.source import read_source

    items = read_source([str(folder)])
    spec = _spec(model, out, batch, smoke)
    watch = Watch()
    if kind == "local":
        from camlens.dataset.local import run_local

        run_local(spec, items, progress=watch.progress)
    else:
        import ray

        from camlens.dataset.ray_engine import run_ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        run_ray(spec, items, workers=workers, progress=watch.progress)
    result = watch.finish(len(items))
    if kind != "local":
        import ray

        ray.shutdown()
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet", columns=["error"])
    result["rows"], result["errors"] = table.num_rows, table.num_rows - table.column("error").null_count
    return result


# --- the table ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 24 small images, for CI")
    parser.add_argument("--images", type=int, default=2000, help="how many variants (default 2000)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of every configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        folder, out = Path(args.folder), Path(args.out)
        if args.worker == "forward":
            emit(forward(args.model, folder, args.batch, args.smoke))
        else:
            kind, _, n = args.worker.partition(" ")
            emit(engine(kind, int(n or 1), args.model, folder, out, args.batch, args.smoke))
        return 0

    count = 24 if args.smoke else args.images
    batch = 8 if args.smoke else args.batch
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "photos"
        make_folder(folder, count, args.smoke)
        if args.smoke:
            from _common import tiny_keras

            model_path = root / "tiny.keras"
            tiny_keras(32).save(model_path)
            model, what = str(model_path), "tiny Keras CNN, 32 px"
        else:
            model, what = "bundled", "bundled EfficientNet-Lite0 (ImageNet weights), 224 px"
        results = {}
        for config in CONFIGS:
            extra = ["--smoke"] if args.smoke else []
            results[config] = child(HERE, ["--worker", config, "--model", model, "--folder", str(folder),
                                           "--out", str(root / config.replace(" ", "-")),
                                           "--batch", str(batch), *extra], timeout=3600)  # fmt: skip
    print(f"camlens run on {count} images ({what}; Grad-CAM, batch {batch}; "
          f"{'random small pictures' if args.smoke else 'flips, crops and resizes of the bundled photos'})")
    print(f"machine: {machine()}; {versions('numpy', 'keras', 'tensorflow', 'tensorflow-cpu', 'ray', 'pyarrow')}")
    head = (f"{'config':<8} {'images':>6} {'img/s':>7} {'vs_fwd':>6} {'start_s':>7} {'wall_s':>7} "
            f"{'RSS@first_MiB':>13} {'RSS@end_MiB':>11} {'peak_MiB':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    base = results["forward"]["rate"]
    mib = 1024 * 1024
    for config, r in results.items():
        print(f"{config.replace(' ', '-'):<8} {r['images']:>6} {r['rate']:>7.1f} {r['rate'] / base:>6.2f} "
              f"{r['start']:>7.1f} {r['wall']:>7.1f} {r['rss_first'] / mib:>13.0f} {r['rss_end'] / mib:>11.0f} "
              f"{r['peak'] / mib:>8.0f}")  # fmt: skip
    local = results["local"]["rate"]
    print(f"\nlocal / forward: {local / base:.2f} (issue: >= 0.70); ray-1 / local: "
          f"{results['ray 1']['rate'] / local:.2f} (issue: >= 0.75); ray-2 / ray-1: "
          f"{results['ray 2']['rate'] / results['ray 1']['rate']:.2f}")
    rows = {c: (r.get("rows"), r.get("errors")) for c, r in results.items() if c != "forward"}
    print("table rows (errors): " + ", ".join(f"{c} {n} ({e})" for c, (n, e) in rows.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
