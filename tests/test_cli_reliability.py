"""The command line on hostile input (issue 14): unreadable folders, ``-o`` that cannot be
written, named pipes and link loops as images, broken model files, SIGTERM and Ctrl-C in the
middle of ``camlens explain``. Each gets one line naming the path and the fix and a non-zero
exit (a per-file line where the run goes on), never a traceback; only whole files are left.

Permission cases need a user that permissions apply to: a test run as root drops, in the child
process only, the two capabilities that let root read and write any file (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH), and skips where it cannot."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.cli import main
from camlens.files import Interrupted, explain_files

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_models import NET, as_a_user, cli_env, interrupt_explain, model_cases, run_cli  # noqa: E402

torch = pytest.importorskip("torch")

@pytest.fixture
def net(tmp_path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET)
    return path


def _png(path: Path, seed: int, side: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _locked(folder: Path) -> Path:
    """``folder`` with mode 000, after checking that a child process is kept out of it."""
    folder.chmod(0)
    probe = subprocess.run([sys.executable, "-c", f"import os; os.listdir({str(folder)!r})"],
                           preexec_fn=as_a_user, capture_output=True, timeout=60)
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("permissions do not apply to this user (root that cannot drop its powers)")
    return folder


def _one_line(result: dict, *words: str) -> str:
    lines = [ln for ln in result["err"].splitlines() if ln.strip()]
    assert "Traceback" not in result["err"], result["err"]
    assert len(lines) == 1 and lines[0].startswith("camlens: "), result["err"]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_bad_image_paths_are_skipped_with_a_line_each_and_the_run_goes_on(net, tmp_path):
    good = _png(tmp_path / "good.png", 0)
    _png(tmp_path / "locked" / "inside.png", 1)
    _locked(tmp_path / "locked")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    os.symlink("loop_b.png", tmp_path / "loop_a.png")
    os.symlink("loop_a.png", tmp_path / "loop_b.png")
    os.symlink("gone.png", tmp_path / "dangling.png")
    _png(tmp_path / "private.png", 2).chmod(0)
    bad = ["locked/inside.png", "pipe.png", "loop_a.png", "dangling.png", "private.png"]
    try:
        [run] = run_cli([["explain", f"{net}:build", "locked/inside.png", "good.png", "pipe.png",
                          "loop_a.png", "dangling.png", "private.png", "-o", "out"]], cwd=tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert run["rc"] == 1 and "Traceback" not in run["err"], run["err"]
    skipped = [ln for ln in run["err"].splitlines() if ln.startswith("camlens: skipped ")]
    assert [ln.split()[2].rstrip(":") for ln in skipped] == bad, run["err"]
    whys = ("permission denied", "named pipe", "loop", "does not exist", "permission denied")
    for line, why in zip(skipped, whys):
        assert why in line, line
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["image"] for r in results["images"]] == [good.name]
    assert [f["image"] for f in results["failed"]] == bad


def test_an_unreadable_folder_and_output_that_cannot_be_written_are_one_line_each(net, tmp_path):
    _png(tmp_path / "photos" / "a.png", 0)
    _png(tmp_path / "photos" / "private" / "b.png", 1)
    _png(tmp_path / "c.png", 2)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    _locked(tmp_path / "photos" / "private")
    model = f"{net}:build"
    try:
        runs = run_cli([
            ["explain", model, "photos", "-o", "out"],
            ["explain", model, "c.png", "-o", "ro"],
            ["explain", model, "c.png", "-o", "ro/new"],
            ["features", model, "c.png", "--size", "16", "-o", "ro"],
            ["report", model, "c.png", "--size", "16", "-o", "ro/page.html"],
            ["evaluate", model, "c.png", "--size", "16", "--json", "ro/numbers.json"],
        ], cwd=tmp_path)
    finally:
        (tmp_path / "photos" / "private").chmod(0o755)
    assert [r["rc"] for r in runs] == [2] * 6, runs
    _one_line(runs[0], "photos/private", "cannot read the folder", "chmod")
    _one_line(runs[1], "-o ro:", "read-only", "give a folder you can write to")
    _one_line(runs[2], "-o ro/new:", "cannot write in ro (where it would be made)")
    _one_line(runs[3], "-o ro:", "read-only")
    _one_line(runs[4], "-o ro:", "read-only")
    _one_line(runs[5], "--json ro:", "read-only")
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_or_a_folder_is_said_before_the_model_loads(net, tmp_path, capsys):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "taken").write_text("not a folder")
    never = f"{tmp_path / 'absent.py'}:build"  # the model is never loaded: the -o check comes first
    for argv, words in [
        (["explain", never, str(tmp_path / "a.png"), "-o", str(tmp_path / "taken")], ("is a file, not a folder",)),
        (["explain", never, str(tmp_path / "a.png"), "-o", str(tmp_path / "taken" / "sub")], ("is a file",)),
        (["features", never, str(tmp_path / "a.png"), "-o", str(tmp_path / "taken")], ("is a file",)),
        (["report", never, str(tmp_path / "a.png"), "-o", str(tmp_path)], ("is a folder; give a file name",)),
        (["evaluate", never, str(tmp_path / "a.png"), "--json", str(tmp_path)], ("is a folder",)),
    ]:
        assert main(argv) == 2
        _one_line({"err": capsys.readouterr().err}, str(tmp_path), *words)
    assert (tmp_path / "taken").read_text() == "not a folder"


# ------------------------------------------------------------------------- model files


def _layers(spec: str, capsys) -> dict:
    try:
        rc = main(["layers", spec])
    except SystemExit as exc:
        rc = exc.code
    return {"rc": rc, "err": capsys.readouterr().err}


def test_every_broken_model_file_is_one_line_and_exit_2(tmp_path, capsys):
    cases = [c for c in model_cases(tmp_path) if "pipe" not in c[0]]  # the pipe: next test
    assert len(cases) >= 20
    for name, spec, why in cases:
        result = _layers(spec, capsys)
        assert result["rc"] == 2, (name, result)
        line = _one_line(result, why)
        if "missing" not in name:  # Keras says "File not found" for an empty or damaged file
            assert "File not found" not in line, (name, line)
    lam = _one_line(_layers(str(tmp_path / "lambda.keras"), capsys))
    assert "safe_mode=False" in lam and "FILE.py:NAME" in lam  # how to load it anyway


def test_a_named_pipe_as_model_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "model.keras")
    done = subprocess.run([sys.executable, "-m", "camlens", "layers", str(tmp_path / "model.keras")],
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    _one_line({"err": done.stderr}, "model.keras", "not a regular file")


# ------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_explain_leaves_whole_files_and_results_of_the_images_done(tmp_path, sig, code):
    run = interrupt_explain(tmp_path, sig)
    err = run["err"]
    assert run["rc"] == code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    name = "" if sig == signal.SIGINT else " by SIGTERM"
    m = re.fullmatch(rf"camlens: interrupted{name}: (\d) of 6 images done; out/results.json lists them", last)
    assert m, err
    listed = run["listed"]
    # an overlay, a heatmap and two .npy maps each
    assert 1 <= len(listed) // 4 == int(m.group(1)) < 6
    assert run["present"] == sorted(listed + ["results.csv", "results.json"])  # no partial or hidden file
    assert run["whole"] == sorted(listed)


def test_explain_files_interrupted_lists_exactly_the_images_written(tmp_path):
    from camlens.io import load_model

    (tmp_path / "net.py").write_text(NET)
    model = load_model(f"{tmp_path / 'net.py'}:build")
    paths = [_png(tmp_path / f"im{k}.png", k) for k in range(5)]
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        explain_files(model, paths, tmp_path / "out", batch_size=1, progress=progress)
    done = info.value.done
    assert isinstance(info.value, KeyboardInterrupt) and info.value.total == 5
    assert 2 <= len(done.images) < 5
    assert json.loads(done.results.read_text())["images"] == done.images
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        f for r in done.images for f in r["files"]} | {"results.json", "results.csv"}


def test_a_failed_write_is_one_line_and_results_list_what_was_written(net, tmp_path, capsys, monkeypatch):
    import errno

    from camlens import files

    real, calls = files._save_group, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.png"))
        return real(*args, **kwargs)

    monkeypatch.setattr(files, "_save_group", full_disk)
    paths = [str(_png(tmp_path / f"im{k}.png", k)) for k in range(3)]
    assert main(["explain", f"{net}:build", *paths, "--batch-size", "1", "-o", str(tmp_path / "out")]) == 2
    _one_line({"err": capsys.readouterr().err}, "x.png", "No space left on device", "free some space")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["image"] for r in results["images"]] == paths[:1]


# ------------------------------------------------------------------------- atomic files


def test_write_atomic_leaves_the_old_file_or_the_new_one_never_a_part(tmp_path, monkeypatch):
    from camlens import viz

    target = tmp_path / "a.json"
    viz.write_atomic(target, "old")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not tempfile's 0600

    def stopped(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        viz.write_atomic(target, "new")
    with pytest.raises(KeyboardInterrupt):
        viz.save_png(np.zeros((4, 4), np.uint8), tmp_path / "b.png")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no hidden half-file
