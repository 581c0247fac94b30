"""Reliability figures of the command line and the model readers (issue 14), for docs.

``figures()`` runs, in about a minute on 2 CPU cores:

* every broken model file of ``tests/fuzz_models.py`` through ``camlens layers``;
* bad image paths (a folder that cannot be read, a named pipe, a link loop, a dangling link) and
  output that cannot be written (``-o`` a file, a read-only folder) through ``explain``,
  ``features``, ``report`` and ``evaluate``;
* SIGTERM and SIGINT sent to ``python -m camlens explain`` once its first PNG exists;
* the crafted ``.pth`` payloads, and random byte flips of a small valid torch file, through
  ``camlens._torchfile.load``.

It returns ``(what, figure)`` rows; ``python benchmarks/_reliability_cli.py`` prints them. The
permission cases run as a user files' permissions apply to (root drops its two file
capabilities in the child, ``fuzz_models.as_a_user``).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import fuzz_models  # noqa: E402

#: SIGTERM and SIGINT runs each (every run starts a Python with torch: about 5 s)
SIGNAL_RUNS = 3
#: random byte flips of a valid torch file
FLIPS = 400


def _one_line(result: dict, why: str = "") -> bool:
    """One ``camlens:`` line on stderr (containing ``why``), no traceback, a non-zero exit."""
    lines = [ln for ln in result["err"].splitlines() if ln.strip()]
    return (result["rc"] not in (0, None, "raised") and "Traceback" not in result["err"]
            and len(lines) == 1 and lines[0].startswith("camlens: ") and why in lines[0])


def _model_files(work: Path) -> tuple[str, str]:
    cases = fuzz_models.model_cases(work / "models")
    runs = fuzz_models.run_cli([["layers", spec] for _, spec, _ in cases], cwd=work, timeout=300)
    good = sum(_one_line(r, why) for r, (_, _, why) in zip(runs, cases))
    tracebacks = sum("Traceback" in r["err"] for r in runs)
    return ("model-file fuzz cases (`camlens layers`)",
            f"{len(cases)} tried, {good} refused with a one-line message naming the file, "
            f"{tracebacks} tracebacks")


def _bad_paths(work: Path) -> list[tuple[str, str]]:
    from PIL import Image

    here = work / "paths"
    (here / "locked").mkdir(parents=True)
    (here / "ro").mkdir()
    (here / "net.py").write_text(fuzz_models.NET)
    for name in ("good.png", "locked/inside.png"):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(here / name)
    os.mkfifo(here / "pipe.png")
    os.symlink("loop_b.png", here / "loop_a.png")
    os.symlink("loop_a.png", here / "loop_b.png")
    os.symlink("gone.png", here / "dangling.png")
    (here / "taken").write_text("a file")
    (here / "locked").chmod(0)
    (here / "ro").chmod(0o555)
    model = "net.py:build"
    bad = ["locked/inside.png", "pipe.png", "loop_a.png", "dangling.png"]
    outputs = [
        ["explain", model, "good.png", "-o", "taken"],
        ["explain", model, "good.png", "-o", "ro"],
        ["explain", model, "good.png", "-o", "ro/new"],
        ["features", model, "good.png", "--size", "16", "-o", "ro"],
        ["report", model, "good.png", "--size", "16", "-o", "ro/page.html"],
        ["evaluate", model, "good.png", "--size", "16", "--json", "ro/n.json"],
        ["explain", model, "locked", "-o", "out2"],
    ]
    try:
        runs = fuzz_models.run_cli([["explain", model, "good.png", *bad, "-o", "out"], *outputs], cwd=here)
    finally:
        (here / "locked").chmod(0o755)
    images, rest = runs[0], runs[1:]
    skipped = [ln for ln in images["err"].splitlines() if ln.startswith("camlens: skipped ")]
    per_file = sum(any(ln.split()[2].rstrip(":") == b for ln in skipped) for b in bad)
    went_on = images["rc"] == 1 and (here / "out" / "results.json").exists()
    said = sum(_one_line(r) for r in rest)
    tracebacks = sum("Traceback" in r["err"] for r in runs)
    return [
        ("bad image paths (unreadable folder, named pipe, link loop, dangling link)",
         f"{len(bad)} tried, {per_file} skipped with a line naming the file, the run went on: "
         f"{'yes' if went_on else 'no'}, {tracebacks} tracebacks"),
        ("output that cannot be written, a folder that cannot be read",
         f"{len(rest)} tried, {said} refused in one line before the model runs"),
    ]


def _signals(work: Path) -> tuple[str, str]:
    runs = []
    for k in range(SIGNAL_RUNS):
        for sig in (signal.SIGTERM, signal.SIGINT):
            runs.append((sig, fuzz_models.interrupt_explain(work / f"signal{len(runs)}", sig)))
    right_code = sum(r["rc"] == 128 + sig for sig, r in runs)
    tracebacks = sum("Traceback" in r["err"] for _, r in runs)
    one_line = sum("images done; out/results.json lists them" in r["err"].strip().splitlines()[-1]
                   for _, r in runs if r["err"].strip())
    partial = sum(len(set(r["present"]) - set(r["whole"]) - {"results.json", "results.csv"}) for _, r in runs)
    complete = sum(r["listed"] is not None and sorted(r["listed"]) == r["whole"]
                   and set(r["present"]) == set(r["listed"]) | {"results.json", "results.csv"} for _, r in runs)
    done = [len(r["listed"] or []) // 4 for _, r in runs]  # overlay, heatmap, map.npy, raw.npy
    return ("SIGTERM/SIGINT during `camlens explain` (6 images, signal after the first PNG)",
            f"{len(runs)} runs: exit 143/130 in {right_code}, the one-line message in {one_line}, "
            f"{tracebacks} tracebacks, {partial} partial or stray files, results.json listing "
            f"exactly the whole files in {complete} ({min(done)}-{max(done)} of 6 images done)")


def _pth(work: Path) -> list[tuple[str, str]]:
    from camlens._torchfile import TorchFileError, load

    cases = fuzz_models.pth_payloads(work / "pth")
    refused = loaded = other = 0
    peak = 0
    for _, path, expect in cases:
        tracemalloc.start()
        try:
            load(path)
            loaded += expect == "loads"
        except TorchFileError as exc:
            refused += expect != "loads" and str(path) in str(exc) and expect in str(exc)
        except Exception:
            other += 1
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    rows = [(".pth payloads (crafted: stride 0, shared storages, deflate bombs, deep nesting, ...)",
             f"{len(cases)} tried: {refused} refused with the reader's own error naming the file, "
             f"{loaded} loaded within the budget, {other} other exceptions; peak "
             f"{peak / 2**20:.0f} MiB (the largest claim: 2 GiB from 527 bytes)")]

    # random byte flips in the pickle of a small valid state dict
    t = fuzz_models._tensor(fuzz_models._storage("0", 12), 0, [3, 4], [4, 1])
    pickled = fuzz_models._state_dict(w=t, b=fuzz_models._tensor(fuzz_models._storage("1", 3), 0, [3], [1]))
    rng = random.Random(14)
    path = work / "flip.pth"
    counts = {"refused": 0, "loaded": 0, "other": 0}
    for _ in range(FLIPS):
        data = bytearray(pickled)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        fuzz_models._zip(path, bytes(data), {"0": bytes(48), "1": bytes(12)},
                         zipfile.ZIP_STORED)
        try:
            load(path)
            counts["loaded"] += 1
        except TorchFileError:
            counts["refused"] += 1
        except Exception:
            counts["other"] += 1
    rows.append((".pth byte flips (1-4 random bytes of a valid state dict's pickle)",
                 f"{FLIPS} tried: {counts['refused']} refused with the reader's own error, "
                 f"{counts['loaded']} still loaded, {counts['other']} other exceptions"))
    return rows


def figures() -> list[tuple[str, str]]:
    """The rows for docs: (what was tried, what happened)."""
    with tempfile.TemporaryDirectory(prefix="camlens-reliability-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the permission cases run as a user that must reach it
        rows = [_model_files(work)]
        rows += _bad_paths(work)
        rows.append(_signals(work))
        rows += _pth(work)
    return rows


if __name__ == "__main__":
    start = time.perf_counter()
    for what, figure in figures():
        print(f"{what}: {figure}")
    print(f"({time.perf_counter() - start:.0f} s)")
