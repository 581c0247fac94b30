"""``benchmarks/zoo.py --smoke`` runs per family and prints its table; every smoke row is ok
(auto takes the recommended layer or the same tensor, Grad-CAM equals pytorch-grad-cam's there,
every method runs). A family whose library is missing is skipped. The full table, with the rows
where camlens deliberately picks another layer and why, is docs/zoo.md."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo.py"

FAMILIES = {  # family -> modules it needs
    "torchvision": ("torch", "torchvision"),
    "timm": ("torch", "timm"),
    "huggingface": ("torch", "transformers"),
    "keras.applications": ("keras",),
    "keras-hub": ("keras", "keras_hub"),
    "keras subclassed": ("keras",),
}


def _zoo():
    """benchmarks/zoo.py as a module (registered first: its dataclasses look it up)."""
    if "camlens_zoo" in sys.modules:
        return sys.modules["camlens_zoo"]
    spec = importlib.util.spec_from_file_location("camlens_zoo", ZOO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["camlens_zoo"] = module
    spec.loader.exec_module(module)
    return module


def test_every_family_has_smoke_models_and_the_full_zoo_is_large():
    zoo = _zoo()
    assert set(FAMILIES) == set(zoo.FAMILIES)
    for family in FAMILIES:
        assert zoo.selected(True, family=family), family
    assert len(zoo.selected(False)) >= 40


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zoo_smoke_family(family, tmp_path):
    if "keras" not in FAMILIES[family] and os.environ.get("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("native torch models do not depend on the Keras backend: run in the torch run")
    for module in FAMILIES[family]:
        pytest.importorskip(module)
    out = tmp_path / "rows.json"
    page = tmp_path / "zoo.md"
    proc = subprocess.run(
        [sys.executable, str(ZOO), "--smoke", "--family", family, "--json", str(out),
         "--markdown", str(page), "--timeout", "300"],
        env=dict(os.environ), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    expected = [s.name for s in _zoo().selected(True, family=family)]
    assert [r["model"] for r in rows] == expected
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [(r["model"], r["status"]) for r in rows]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("family"))
    assert lines[header].split()[:3] == ["family", "model", "auto"]
    for name in expected:
        assert any(name in line for line in lines[header + 2 :]), name
    text = page.read_text()
    assert "| family | model |" in text and "**Summary:**" in text
