"""The benchmarks run end to end on tiny models (``--smoke``), so they do not rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_scorecam_memory_smoke():
    pytest.importorskip("keras")
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scorecam_memory.py"), "--smoke"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("config"))
    assert lines[header].split()[:4] == ["config", "channels", "batch", "time"]
    rows = lines[header + 2 :]
    assert rows and rows[0].startswith("keras scorecam")
    assert rows[0].split()[2] == "24"  # the tiny model's channels at the chosen layer
