"""Data-set runs (issue 16): ``camlens.dataset.run`` and ``camlens run`` on a folder of small
images with broken files among them: a row per image x method, the numbers against the maps
by hand, boxes reaching the pointing game, a run killed with SIGKILL and resumed ending with
the same table as one that was not, another run's folder refused."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from camlens.cli import main  # noqa: E402
from camlens.dataset import run  # noqa: E402
from camlens.dataset.source import Item, read_source  # noqa: E402
from camlens.dataset.spec import RunSpec  # noqa: E402
from camlens.dataset.worker import BatchExplainer, map_summary  # noqa: E402

SIZE = 32
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from keras_models import saved_cli_classifier

    return saved_cli_classifier(tmp_path_factory.mktemp("model") / "model.keras", SIZE)


BROKEN = ("broken.png", "empty.jpg", "truncated.jpg")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 PNGs of several sizes and 3 files that are not images."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = (SIZE, SIZE) if i % 3 == 0 else (20 + i, 40 - i)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "empty.jpg").write_bytes(b"")
    noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "truncated.jpg", quality=90)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def _table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# ---------------------------------------------------------------- sources


def test_read_source_folders_lists_and_csv(photos, tmp_path):
    (tmp_path / "list.txt").write_text(f"# two photos\n{photos / 'p01.png'}\n\n{photos / 'p00.png'}\n")
    (tmp_path / "labels.csv").write_text(
        "path,label,x0,y0,x1,y1\n"
        f"{photos / 'p03.png'},2,1,2,10,12\n"
        f"{photos / 'p03.png'},2,20,20,30,30\n"  # a second box of the same image
        f"{photos / 'p04.png'},,,,,\n")
    items = read_source([str(tmp_path / "list.txt"), str(photos / "p0[0-2].png"),
                         str(tmp_path / "labels.csv")])
    # order kept, each image once (p00 and p01 came from the list first)
    assert [Path(i.path).name for i in items] == ["p01.png", "p00.png", "p02.png", "p03.png", "p04.png"]
    assert items[3] == Item(str(photos / "p03.png"), 2, ((1, 2, 10, 12), (20, 20, 30, 30)))
    assert items[4] == Item(str(photos / "p04.png"), None, None)
    assert items[0].row(7) == {"index": 7, "path": str(photos / "p01.png"), "label": -1, "boxes_json": ""}


@pytest.mark.parametrize("text, expected", [
    ("file,label\na.png,1\n", "needs a header row with a 'path' column"),
    ("path,label\na.png,cat\n", "row 2: label 'cat' is not a class index"),
    ("path,x0,y0\na.png,1,2\n", "give all of x0,y0,x1,y1"),
    ('path,boxes\na.png,"[5,5,2,9]"\n', "row 2: box (5, 5, 2, 9) is empty"),
    ("path,boxes\na.png,[5\n", "row 2: bad boxes '[5'; give JSON"),
])
def test_bad_csv_source_says_the_row_and_fix(tmp_path, text, expected):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_source([str(tmp_path / "s.csv")])


def test_spec_is_picklable_and_round_trips(tmp_path):
    spec = RunSpec(model="m.keras", out=str(tmp_path), methods=("gradcam", "cam"), size=(9, 9))
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert RunSpec.from_dict(json.loads(spec.to_json())) == spec
    worker = BatchExplainer(spec)
    assert pickle.loads(pickle.dumps(worker)).spec == spec  # before its model is loaded
    assert RunSpec(model="m", out="o", methods=("nope",), metrics=("bogus",)).problems()


def test_map_summary_by_hand():
    m = np.zeros((4, 5), np.float32)
    m[1, 3], m[2, 0], m[3, 4] = 5.0, 3.0, -2.0
    m[0, 0] = 1.0
    # 20 cells: the top 2 hold 5 + 3 of the positive mass 9
    assert map_summary(m) == (1, 3, pytest.approx(8 / 9))
    assert map_summary(np.zeros((3, 3))) == (0, 0, None)  # no mass: no share


# ---------------------------------------------------------------- rows


@pytest.fixture(scope="module")
def one_run(model_file, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    steps: list[int] = []
    done = run(str(model_file), [str(photos)], out, methods=["gradcam", "layercam"],
               metrics=["average_drop"], batch_size=5, progress=steps.append)
    assert done.images == 27 and done.rows == 54
    assert steps == [5, 5, 5, 5, 5, 2]  # images per batch, broken ones included
    assert sorted(Path(p).name for p, _ in done.failed) == sorted(BROKEN)
    return out


def test_one_row_per_image_and_method_errors_as_rows(one_run, photos):
    rows = _table(one_run / "results.parquet")
    names = sorted(f.name for f in photos.iterdir())
    assert [(Path(r["path"]).name, r["method"]) for r in rows] == \
        [(n, m) for n in names for m in ("gradcam", "layercam")]  # sorted by path, then method
    for r in rows:
        if Path(r["path"]).name in BROKEN:
            assert r["error"] and r["path"] in r["error"]
            assert all(r[k] is None for k in ("predicted", "layer", "peak_y", "map_file",
                                              "metric_average_drop", "seconds"))
        else:
            assert r["error"] is None and r["layer"] == "last_conv" and r["seconds"] > 0
            assert r["label"] is None and r["pointing_hit"] is None and r["overlay_file"] is None
            assert math.isfinite(r["metric_average_drop"])
    schema = pq.read_schema(one_run / "results.parquet")
    assert schema.field("peak_y").type == pa.int32() and schema.field("pointing_hit").type == pa.bool_()
    assert not list((one_run / "parts").glob(".*"))  # no temporary file left behind


def test_numbers_against_the_model_and_the_maps(one_run, model_file):
    import camlens

    rows = [r for r in _table(one_run / "results.parquet") if r["error"] is None]
    model = camlens.io.load_model(model_file)
    for r in rows[:6]:
        raw = np.load(one_run / r["map_file"])
        assert raw.shape == (SIZE, SIZE) and raw.dtype == np.float32  # last_conv's resolution
        # peak and top-10% mass by hand, from the saved map
        flat = raw.reshape(-1).astype(np.float64)
        k = int(np.argmax(flat))
        assert (r["peak_y"], r["peak_x"]) == (k // SIZE, k % SIZE)
        pos = np.clip(flat, 0, None)
        top = np.sort(pos)[-math.ceil(0.1 * flat.size):]
        assert r["top10_mass"] == pytest.approx(top.sum() / pos.sum(), rel=1e-9)
        # the prediction and the map are camlens.explain's on the image read at the model's size
        x = camlens.io.load_image(r["path"], (SIZE, SIZE))[None]
        y = np.asarray(model.predict(x, verbose=0))[0]
        assert r["predicted"] == int(np.argmax(y)) and r["predicted_score"] == pytest.approx(float(y.max()), rel=1e-5)
        exp = camlens.explain(model, x, r["method"])
        assert r["target"] == str(int(exp.class_indices[0]))
        np.testing.assert_allclose(raw, exp.raw_maps[0][0], rtol=1e-5, atol=1e-6)


def test_worker_is_deterministic(model_file, photos, tmp_path):
    spec = RunSpec(model=str(model_file), out=str(tmp_path), methods=("gradcam",), batch_size=4)
    batch = {"path": [str(photos / "p05.png"), str(photos / "broken.png")], "label": [1, -1],
             "boxes_json": ["", ""], "index": [10, 11]}
    a, b = BatchExplainer(spec)(batch), BatchExplainer(spec)(batch)
    assert list(a["index"]) == [10, 11] and list(a["label"]) == [1, None]
    for col in a:
        if col != "seconds":
            assert list(a[col]) == list(b[col]), col


def test_boxes_reach_the_pointing_game(model_file, photos, tmp_path):
    import camlens

    model = camlens.io.load_model(model_file)
    square = [photos / f"p{i:02d}.png" for i in (0, 3, 6)]  # model-sized: boxes need no scaling
    peaks = []
    for p in square:
        m = camlens.explain(model, camlens.io.load_image(p)[None], "gradcam").maps[0][0]
        peaks.append(divmod(int(np.argmax(m)), SIZE))
    # a box on the peak of the first; far boxes (over 15 pixels away) for the other two
    y, x = peaks[0]
    rows = [f"{square[0]},1,{x},{y},{x + 1},{y + 1}"]
    for p, (py, px) in zip(square[1:], peaks[1:]):
        bx = 0 if px >= SIZE // 2 else SIZE - 1
        by = 0 if py >= SIZE // 2 else SIZE - 1
        far = math.hypot(bx - px, by - py) > 15
        rows.append(f"{p},2,{bx},{by},{bx + 1},{by + 1}")
        assert far or pytest.skip("a peak in the middle of the image: no far box")
    (tmp_path / "boxes.csv").write_text("path,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    done = run(str(model_file), [str(p) for p in square] + [str(photos / "p01.png")],
               tmp_path / "out", boxes=tmp_path / "boxes.csv")
    got = {Path(r["path"]).name: r for r in _table(done.results)}
    assert [got[p.name]["pointing_hit"] for p in square] == [True, False, False]
    assert [got[p.name]["label"] for p in square] == [1, 2, 2]
    assert got["p01.png"]["pointing_hit"] is None and got["p01.png"]["energy_share"] is None
    m = camlens.explain(model, camlens.io.load_image(square[0])[None], "gradcam").maps[0][0]
    assert got["p00.png"]["energy_share"] == pytest.approx(float(m[y, x]) / float(m.sum(dtype=np.float64)), rel=1e-4)


def test_box_outside_its_image_is_an_error_row(model_file, photos, tmp_path):
    (tmp_path / "b.csv").write_text(f"path,x0,y0,x1,y1\n{photos / 'p00.png'},0,0,99,5\n")
    done = run(str(model_file), [str(tmp_path / "b.csv")], tmp_path / "out")
    (row,) = _table(done.results)
    assert "outside the 32x32 image" in row["error"] and row["predicted"] is None


# ---------------------------------------------------------------- resume and refusal


def _cli(model_file: Path, photos: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "camlens", "run", str(model_file), str(photos), "-o", str(out),
            "--method", "gradcam,layercam", "--metrics", "average_drop", "--batch-size", "3"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("KERAS_BACKEND", "tensorflow")  # the same backend as this process
    return env


def _run_and_kill(cmd: list[str], out: Path, parts_before_kill: int) -> bool:
    """Starts ``cmd``, SIGKILLs it as soon as ``parts_before_kill`` more part files exist;
    whether the kill came before the run ended."""
    start = len(list((out / "parts").glob("part-*"))) if (out / "parts").is_dir() else 0
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            parts = out / "parts"
            if parts.is_dir() and len(list(parts.glob("part-*"))) >= start + parts_before_kill:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def test_killed_and_resumed_gives_the_same_table(model_file, photos, one_run, tmp_path):
    # the uninterrupted run of the same settings, in this process
    reference = run(str(model_file), [str(photos)], tmp_path / "whole",
                    methods=["gradcam", "layercam"], metrics=["average_drop"], batch_size=3)
    out = tmp_path / "killed"
    killed = [_run_and_kill(_cli(model_file, photos, out), out, n) for n in (1, 2)]
    assert any(killed), "no kill landed before the run ended"
    assert not (out / "results.parquet").exists() or not killed[-1]
    result = subprocess.run(_cli(model_file, photos, out), env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr  # 1: the broken files, said once each
    assert sum("camlens: skipped" in line for line in result.stderr.splitlines()) == len(BROKEN)
    got = _table(out / "results.parquet")
    want = _table(reference.results)
    assert len(got) == len({(r["path"], r["method"]) for r in got}) == 54  # none twice, none lost
    assert _without_seconds(got) == _without_seconds(want)  # the same numbers, bit for bit
    for r in got:
        if r["map_file"]:
            np.testing.assert_array_equal(np.load(out / r["map_file"]),
                                          np.load(reference.out / r["map_file"]))


def test_another_runs_folder_is_refused(model_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    run(str(model_file), [str(photos / "p00.png")], out, methods=["gradcam"])
    with pytest.raises(ValueError, match=r"other settings \(methods differ"):
        run(str(model_file), [str(photos / "p00.png")], out, methods=["layercam"])
    assert main(["run", str(model_file), str(photos / "p01.png"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a run on other images" in err and "another output folder (-o)" in err
    # the same run again, in the folder moved elsewhere: nothing to do, the same table
    before = _table(out / "results.parquet")
    moved = out.rename(tmp_path / "moved")
    stamp = (moved / "parts" / "part-000000000-000000000.parquet").stat().st_mtime_ns
    run(str(model_file), [str(photos / "p00.png")], moved, methods=["gradcam"])
    assert _without_seconds(_table(moved / "results.parquet")) == _without_seconds(before)
    assert (moved / "parts" / "part-000000000-000000000.parquet").stat().st_mtime_ns == stamp
    assert [p.name for p in (moved / "parts").iterdir()] == ["part-000000000-000000000.parquet"]


@pytest.mark.parametrize("args, expected", [
    (["--workers", "2"], "--address and --workers are for --engine ray"),
    (["--boxes", "nope.csv"], "--boxes nope.csv: no such file"),
    (["--method", "nope"], "nope"),
    (["--metrics", "pointing_game"], "unknown metric(s) pointing_game"),
])
def test_cli_refuses_bad_options(model_file, photos, tmp_path, capsys, args, expected):
    code = main(["run", str(model_file), str(photos), "-o", str(tmp_path / "o"), *args])
    assert code == 2 and expected in capsys.readouterr().err


def test_cli_overlays_and_summary(model_file, photos, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", str(model_file), str(photos / "p0*.png"), "--overlays", "-o", str(out)]) == 0
    assert "10 rows (10 images x 1 method(s))" in capsys.readouterr().out
    for r in _table(out / "results.parquet"):
        png = Image.open(out / r["overlay_file"])
        assert png.size == Image.open(r["path"]).size  # drawn on the photo at its own size


def test_class_probabilities_row_by_row():
    from camlens.explanation import class_probabilities

    y = np.array([[0.2, 0.8], [2.0, 0.0]])
    p = class_probabilities(y)
    np.testing.assert_allclose(p[0], [0.2, 0.8])  # already probabilities
    np.testing.assert_allclose(p[1], np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum())
    # a row's probabilities do not depend on the rows beside it (a batch of Ray's or ours)
    np.testing.assert_array_equal(class_probabilities(y[1:]), p[1:])
