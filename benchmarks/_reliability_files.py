"""Reliability figures for reading images (issue 14): the fuzz corpus of ``tests/fuzz_images.py``
regenerated in a temporary folder and run through ``load_image`` and the app's
``decode_image``, the bundled model's preprocessing of extreme aspect ratios, and EXIF
orientation. Every measurement runs in a child process under an address-space limit, so a
regression shows as a failed row, not a machine out of memory. Runs in about ten seconds.

    python benchmarks/_reliability_files.py      # prints the rows

``figures()`` returns ``(what, figure)`` rows for the docs' reliability section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC, TESTS = ROOT / "src", ROOT / "tests"
MIB = 1024 * 1024


def _child(code: str, limit: int, timeout: float = 60) -> dict:
    prelude = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        f"sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
    proc = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


_PREPROCESS = r"""
import json, resource, time, numpy as np
from camlens.models.efficientnet_lite import preprocess
from fuzz_images import peak_rss as peak
base = peak()
start = time.perf_counter()
for shape in [(2, 20000, 3), (20000, 2, 3), (3, 100000, 3)]:
    for dtype in (np.uint8, np.float32):
        assert preprocess(np.full(shape, 9, dtype)).shape == (224, 224, 3)
print("RESULT " + json.dumps({"extra": peak() - base, "seconds": time.perf_counter() - start}))
"""

_EXIF = r"""
import io, json, numpy as np
from fuzz_images import exif_jpeg
from camlens.app._session import decode_image
from camlens.io import load_image
import tempfile, pathlib
yy, xx = np.mgrid[0:24, 0:40]
stored = np.stack([xx * 6, yy * 10, (xx + yy) * 3], axis=-1).astype(np.uint8)
ok = 0
tmp = pathlib.Path(tempfile.mkdtemp())
for orientation, turn in ((3, 2), (6, -1), (8, 1)):
    data = exif_jpeg(stored, orientation)
    (tmp / "p.jpg").write_bytes(data)
    want = np.rot90(stored, k=turn).astype(float)
    for arr in (load_image(tmp / "p.jpg"), decode_image(data, "p.jpg", 10**6)):
        ok += arr.shape == want.shape and float(np.abs(arr - want).mean()) < 3
print("RESULT " + json.dumps({"ok": ok, "of": 6}))
"""


def figures() -> list[tuple[str, str]]:
    """The rows: the fuzz corpus, the preprocessing of extreme aspect ratios, EXIF."""
    sys.path.insert(0, str(TESTS))
    from fuzz_images import check

    fuzz = _child("from fuzz_images import main\nmain(['0'])", limit=3 * 1024**3, timeout=120)
    rows = [r for r in fuzz["rows"] if r["outcome"] != "skipped"]
    skipped = [r["case"] for r in fuzz["rows"] if r["outcome"] == "skipped"]
    read = sum(r["outcome"] == "read" for r in rows)
    refused = sum(r["outcome"] == "refused" for r in rows)
    crashes = sum(r["outcome"] == "crash" for r in rows)
    hangs = sum(r["outcome"] == "hang" for r in rows)
    wrong = sum(check(r) is not None for r in rows)
    note = f"; skipped here: {', '.join(skipped)} (root reads any file)" if skipped else ""
    out = [(
        "image fuzz cases",
        f"{len(fuzz['cases'])} files, {len(rows)} reads through load_image and decode_image: "
        f"{len(rows) - wrong} handled as expected ({read} read, {refused} refused with a one-line "
        f"message), {crashes} tracebacks, {hangs} hangs; slowest {max(r['seconds'] for r in rows) * 1000:.0f} ms, "
        f"peak RSS {fuzz['peak_rss'] / MIB:.0f} MB under a 3 GiB limit{note}",
    )]
    budget = [r for r in rows if r["case"] in ("bomb-50000.png", "bomb-10000.png", "big-12000.png",
                                                 "over-budget.png", "bomb.gif") and r["outcome"] == "refused"]
    out.append((
        "images over the 40 MP budget",
        f"{len(budget)} of 10 reads (declared 42 MP to 4,295 MP, PNG and GIF) refused on the header, "
        f"slowest {max((r['seconds'] for r in budget), default=0) * 1000:.1f} ms; "
        f"{sum(bool(r.get('warnings')) for r in rows)} Pillow warnings shown",
    ))
    prep = _child(_PREPROCESS, limit=1024**3)
    out.append((
        "bundled preprocessing, 2x20000 to 3x100000 strips",
        f"6 of 6 made 224x224 in {prep['seconds'] * 1000:.0f} ms, {prep['extra'] / MIB:.0f} MB above the "
        "baseline (resizing the whole strip first: 2-8 GB)",
    ))
    exif = _child(_EXIF, limit=3 * 1024**3)
    out.append(("EXIF orientation 3, 6, 8",
                f"{exif['ok']} of {exif['of']} reads upright (load_image and decode_image)"))
    return out


if __name__ == "__main__":
    for what, figure in figures():
        print(f"{what}: {figure}")
