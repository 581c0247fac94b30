"""The benchmarks run end to end on tiny models (``--smoke``), so they do not rot."""

from __future__ import annotations

import importlib.util
import os
import re
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


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
    proc = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _table(stdout: str, first_column: str) -> tuple[list[str], list[list[str]]]:
    """The header's columns and the rows' cells of a benchmark's table."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(first_column))
    rows = []
    for line in lines[at + 2 :]:
        if not line.strip() or line.startswith(("target:", "===")):
            break
        rows.append(line.split())
    return lines[at].split(), rows


def test_speed_limit_smoke_through_the_one_command():
    """``benchmarks/run.py --smoke`` runs Grad-CAM against the forward pass on the caller's
    Keras backend and on native PyTorch; every row has its times and ratios (never checked:
    timings are the machine's)."""
    pytest.importorskip("keras")
    proc = _run(str(BENCHMARKS / "run.py"), "--smoke", "--only", "speed_limit")
    assert "=== speed_limit: exit status 0" in proc.stdout
    header, rows = _table(proc.stdout, "backend")
    assert header[:6] == ["backend", "model", "batch", "forward", "predict", "gradcam"]
    backends = {r[0] for r in rows}
    assert backends & {"Keras/TensorFlow", "Keras/JAX", "Keras/PyTorch"}
    for r in rows:
        assert r[1] == "tiny" and r[2] in ("1", "2")
        float(r[3]), float(r[5]), float(r[6])  # forward, gradcam, gradcam / forward
        if r[0] in ("PyTorch", "Keras/TensorFlow"):  # the hand-written Grad-CAM, and the ratio
            float(r[8]), float(r[9])
        if r[0] in ("PyTorch", "Keras/PyTorch"):
            assert r[10] == "0"  # parameter gradients computed during explain
    if importlib.util.find_spec("torch") is not None:
        assert "PyTorch" in backends


def test_relevance_speed_smoke():
    """LRP (every composite) and DeepLIFT against the forward pass on the tiny torch net and the
    tiny Keras net of the caller's backend: one row per net and batch, every ratio a number."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    proc = _run(str(BENCHMARKS / "relevance_speed.py"), "--smoke", timeout=300)
    header, rows = _table(proc.stdout, "backend")
    assert header == ["backend", "model", "batch", "forward", "autograd", "saliency", "eps", "eps+flat", "eps+",
                      "gammabox", "a2b1", "a1b0", "deeplift"]
    assert [(r[0], r[2]) for r in rows] == [("PyTorch", "1"), ("PyTorch", "2"),
                                            (f"Keras/{os.environ.get('KERAS_BACKEND', 'tensorflow')}", "1"),
                                            (f"Keras/{os.environ.get('KERAS_BACKEND', 'tensorflow')}", "2")]
    for r in rows:
        assert r[1] == "tiny" and len(r) == 13
        assert all(float(c) > 0 for c in r[3:] if c != "-")
    assert [r[4] for r in rows if r[0] != "PyTorch"] == ["-", "-"]  # autograd by hand: torch only


def test_peers_smoke():
    """Every method against grad-cam and torchcam where they are installed (grad-cam through
    the torchvision stand-in in tests/stubs when torchvision cannot be imported)."""
    pytest.importorskip("torch")
    proc = _run(str(BENCHMARKS / "peers.py"), "--smoke")
    header, rows = _table(proc.stdout, "method")
    assert header[:5] == ["method", "library", "batch", "rounds", "best"]
    ours = [r for r in rows if r[1] == "camlens"]
    assert [r[0] for r in ours] == ["gradcam", "gradcam++", "scorecam", "scorecam@_bn1", "ablationcam"]
    for lib, module in (("grad-cam", "pytorch_grad_cam"), ("torchcam", "torchcam")):
        if importlib.util.find_spec(module) is not None:
            assert any(r[1] == lib and r[0] == "gradcam" for r in rows)
    assert any(r[:2] == ["ablationcam", "torchcam"] and "no such method" in " ".join(r) for r in rows) or (
        importlib.util.find_spec("torchcam") is None
    )
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        # issue 18's target at a layer with no constant channel is the row's own, not the method's
        notes = {r[0]: " ".join(r) for r in rows if r[1] == "grad-cam"}
        assert ">= 2.5x" in notes["scorecam@_bn1"] and "memory <=" not in notes["scorecam@_bn1"]
        assert ">= 2x, memory <= 0.25" in notes["scorecam"]


def test_run_names_the_benchmarks():
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--only", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "speed_limit, peers, scorecam_memory" in proc.stderr and "relevance_speed" in proc.stderr


def test_faithfulness_smoke():
    """Every registered method on two bundled photos shrunk for a tiny random model: one row per
    method with four metrics and two times (never checked), then the random-map reference."""
    pytest.importorskip("keras")
    from camlens.methods import available_methods, get_method

    proc = _run(str(BENCHMARKS / "faithfulness.py"), "--smoke")
    header, rows = _table(proc.stdout, "method")
    assert header == ["method", "deletion", "insertion", "avg_drop_%", "incr_conf_%", "explain_s/img", "metrics_s/img"]
    cnn = [m for m in available_methods() if not getattr(get_method(m), "needs_attention", False)]
    assert [r[0] for r in rows] == [*cnn, "random_map"]  # rollout and LeGrad need a ViT
    for r in rows[:-1]:
        assert len(r) == 7
        deletion, insertion = (float(c.rstrip("*")) for c in r[1:3])
        assert 0 <= deletion <= 1 and 0 <= insertion <= 1
    assert not any(c.endswith("*") for c in rows[-1])  # the reference is never marked best
    for column in range(1, 7):
        assert any(r[column].endswith("*") for r in rows[:-1])
    assert "sscam: SSCAM(" in proc.stdout  # the lighter settings are stated


def test_faithfulness_names_a_bad_method():
    pytest.importorskip("keras")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "faithfulness.py"), "--smoke", "--methods", "gradcam,gradkam"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no method 'gradkam'" in proc.stderr and "gradcam" in proc.stderr


def test_metrics_speed_smoke():
    """Deletion and insertion curves of the tiny model: every row's model calls (counted at the
    adapter and by the result) are within the issue's bound steps / batch size + 1."""
    pytest.importorskip("keras")
    proc = _run(str(BENCHMARKS / "metrics_speed.py"), "--smoke")
    header, rows = _table(proc.stdout, "metric")
    assert header[:8] == ["metric", "S", "B", "calls", ".batches", "ceil", "bound", "holds"]
    assert {r[0] for r in rows} == {"deletion", "insertion"} and len(rows) == 8
    for r in rows:
        steps, batch, calls, batches, ceil = (int(c) for c in r[1:6])
        assert calls == batches == ceil and calls <= steps / batch + 1
        assert r[7] == "yes"


def test_road_speed_smoke():
    """ROAD with its defaults on the tiny model, before and after the faster imputation: both
    rows timed, the ratios printed, and the two agree to the solver's tolerance."""
    pytest.importorskip("keras")
    proc = _run(str(BENCHMARKS / "road_speed.py"), "--smoke", timeout=300)
    header, rows = _table(proc.stdout, "version")
    assert header == ["version", "road_s/img", "imputation_s", "rest_s", "road_cpu_s", "imputation_cpu_s"]
    assert [r[0] for r in rows] == ["before", "after"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert "before / after: road " in proc.stdout
    line = next(line for line in proc.stdout.splitlines() if line.startswith("largest difference"))
    curves = float(line.split("ROAD curves ")[1].split(",")[0])
    pixels = float(line.split("imputed pixels ")[1])
    assert curves < 1e-6 and pixels < 1e-5, line


def test_folder_smoke():
    """``camlens explain`` on a folder in a fresh process, twice, and the in-process breakdown."""
    pytest.importorskip("keras")
    proc = _run(str(BENCHMARKS / "folder.py"), "--smoke")
    header, rows = _table(proc.stdout, "run")
    assert header == ["run", "images", "wall", "s", "ms", "/", "image"]
    assert [r[-3] for r in rows[:2]] == ["4", "8"]  # the two folder sizes
    assert any(r[:2] == ["in-process:", "camlens.explain"] for r in rows)


def test_reliability_and_app_load_smoke():
    """``benchmarks/reliability.py --smoke`` (its image part) and ``app_load.py --smoke`` print
    their rows; once, in the torch run (neither depends on the Keras backend)."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        pytest.skip("runs once, in the torch run")
    proc = _run(str(BENCHMARKS / "reliability.py"), "--smoke", "--only", "files", timeout=300)
    assert "image fuzz cases" in proc.stdout and "0 tracebacks" in proc.stdout, proc.stdout
    proc = _run(str(BENCHMARKS / "app_load.py"), "--smoke", timeout=300)  # exit 0: no error, serving
    assert proc.stdout.splitlines()[1].split() == ["run", "requests", "clients", "errors", "p50", "ms", "p95",
                                                   "ms", "wall", "s", "peak", "RSS", "MB", "serving",
                                                   "after", "answers"], proc.stdout


def test_cli_memory_smoke():
    pytest.importorskip("keras")
    proc = _run(str(BENCHMARKS / "cli_memory.py"), "--smoke")
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("command"))
    assert lines[header].split() == ["command", "photos", "peak", "MiB", "wall", "s"]
    rows = lines[header + 2:]
    assert rows[0].startswith("import only") and len(rows) == 7
    assert all(float(r.split()[-2]) > 0 for r in rows)


def test_dataset_smoke():
    """``benchmarks/dataset.py --smoke``: forward-only, the local engine and Ray with 1 and 2
    workers on one folder; every engine's table complete. Once, in the TensorFlow run (Ray
    starts twice: about a minute)."""
    pytest.importorskip("keras")
    pytest.importorskip("pyarrow")
    pytest.importorskip("ray.data")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("runs once, in the TensorFlow run (Ray takes about a minute to start twice)")
    proc = _run(str(BENCHMARKS / "dataset.py"), "--smoke", timeout=600)
    header, rows = _table(proc.stdout, "config")
    assert header == ["config", "images", "img/s", "vs_fwd", "start_s", "wall_s", "RSS@first_MiB", "RSS@end_MiB",
                      "peak_MiB"]
    assert [r[0] for r in rows] == ["forward", "local", "ray-1", "ray-2"]
    assert all(r[1] == "24" and float(r[2]) > 0 and float(r[8]) > 0 for r in rows)
    assert "table rows (errors): local 24 (0), ray 1 24 (0), ray 2 24 (0)" in proc.stdout


def test_first_call_smoke():
    """``benchmarks/first_call.py --smoke``: the first predict and the first CAM, Saliency and
    Score-CAM, each in a fresh process on the caller's backend (and native torch in the torch
    run), on the tiny models; on JAX CAM alone, with the second process reading the persistent
    compilation cache. The runs column is counted at camlens's adapter: one first pass (a
    gradient one for Saliency: every adapter fuses it), Score-CAM's reruns 8 images at a time (24
    channels, the constant ones scored once; in the TensorFlow run); ``ref_s`` is built from those runs (never a timing checked)."""
    pytest.importorskip("keras")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    # JAX: CAM alone, each in two processes; the runs are counted in the same Keras adapter
    # class on every backend, so the TensorFlow and torch runs check them
    # torch: two backends (Keras on torch, native torch), so Score-CAM's reruns are checked in
    # the TensorFlow run only (each cell is a fresh process: time)
    methods = {"jax": ("cam",), "torch": ("cam", "saliency")}.get(backend, ("cam", "saliency", "scorecam"))
    proc = _run(str(BENCHMARKS / "first_call.py"), "--smoke", "--methods", ",".join(methods),
                *(["--second-process"] if backend == "jax" else []), timeout=600)
    header, rows = _table(proc.stdout, "backend")
    assert header == ["backend", "model", "method", "predict_s", "explain_s", "ratio", "2nd_s", "2nd/pred",
                      "runs", "ref_s", "expl/ref"]
    backends = [backend, "torch-native"] if backend == "torch" else [backend]
    assert [(r[0], r[1], r[2]) for r in rows] == [(b, "tiny", m) for b in backends for m in methods]
    runs = {(r[0], r[2]): r[8] for r in rows}
    assert all(runs[(b, "cam")] == "1" for b in backends)
    for b in (b for b in backends if b != "jax"):
        # every adapter takes the input gradient in the first pass (Keras on torch eagerly)
        assert runs[(b, "saliency")] == "1g"
        if "scorecam" in methods:
            assert re.fullmatch(r"1\+[1-3]x8", runs[(b, "scorecam")]), runs
    for r in rows:
        assert float(r[3]) > 0 and float(r[4]) > 0 and float(r[5]) > 0 and float(r[9]) > 0
        assert float(r[10]) == pytest.approx(float(r[4]) / float(r[9]), rel=0.02, abs=0.01)
        assert (r[6] != "-") == (r[0] == "jax")
    # CAM's reference is the first predict alone; Saliency's is the model's own first input
    # gradient (a process of its own), so the two differ
    ref = {(r[0], r[2]): r[9] for r in rows}
    assert ref[(backend, "cam")] == rows[0][3]
    if backend != "jax":
        assert ref[(backend, "saliency")] != rows[0][3]


def test_startup_smoke():
    """``benchmarks/startup.py --smoke``: ``--help``, a torch module's explain and layers and a
    Keras file's explain, each in a fresh process, with the frameworks each imported (checked:
    torch alone for the torch module, no TensorFlow on the torch backend; times never are).
    Once, in the torch run (the torch rows do not depend on the Keras backend)."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "torch":
        pytest.skip("runs once, in the torch run")
    proc = _run(str(BENCHMARKS / "run.py"), "--smoke", "--only", "startup", timeout=600)
    header, rows = _table(proc.stdout, "command")
    assert header[:3] == ["command", "model", "wall"]
    assert [r[1] for r in rows if r[0] == "(baseline)"] == ["python", "import", "import"]
    ours = {(r[0], r[1]): r[-1] for r in rows if r[0] != "(baseline)"}
    assert ours == {("help", "-"): "(none)", ("explain", "torch"): "torch", ("layers", "torch"): "torch",
                    ("explain", "keras/torch"): ours[("explain", "keras/torch")]}
    assert "tensorflow" not in ours[("explain", "keras/torch")] and "torch" in ours[("explain", "keras/torch")]
    assert "target: explain on a torch module within 2.0x of import torch:" in proc.stdout
