"""The Ray engine of ``camlens run``: a local Ray cluster started in this process (two CPUs, no
network) gives the same table as the local engine, bad images included, also when an actor is
killed in the middle of the run.

Ray takes about ten seconds to start and these tests about a minute in all, so they run once, in
the TensorFlow pass of the suite (the engine's code is the same whatever the Keras backend).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("keras")

if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("the Ray tests take about a minute; they run once, in the TensorFlow pass",
                allow_module_level=True)  # fmt: skip

import pyarrow.parquet as pq  # noqa: E402

from camlens.dataset.ray_engine import RAY_MISSING, run_ray  # noqa: E402
from camlens.dataset.source import Item  # noqa: E402
from camlens.dataset.spec import RunSpec  # noqa: E402
from camlens.dataset.worker import BatchExplainer  # noqa: E402

#: the columns that may differ between two runs of the same data (wall time)
TIMED = {"seconds"}
GOOD = 26


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # pragma: no cover - another module's
        ray.shutdown()
    # the workers inherit this process's environment (PYTHONPATH, KERAS_BACKEND set by conftest)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny classifier saved as a file, 26 photos of three sizes and four bad items."""
    import keras
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-data")
    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(x))
    model_path = root / "model.keras"
    model.save(model_path)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(GOOD):
        h, w = ((16, 16), (24, 20), (40, 31))[i % 3]
        path = images / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        boxes = ((2, 2, 10, 12),) if i % 2 else None
        items.append(Item(str(path), label=i % 4 if i % 5 else None, boxes=boxes))
    (images / "text.png").write_text("not an image")
    good = (images / "img00.png").read_bytes()
    (images / "cut.png").write_bytes(good[: len(good) // 2])
    (images / "empty.jpg").write_bytes(b"")
    bad = [Item(str(images / n)) for n in ("text.png", "cut.png", "empty.jpg", "missing.png")]
    return model_path, items[:13] + bad + items[13:]


def _spec(model_path: Path, out: Path) -> RunSpec:
    return RunSpec(model=str(model_path), out=str(out), methods=("gradcam", "layercam"),
                   metrics=("deletion",), preprocess="unit", batch_size=4, steps=4)  # fmt: skip


def _table(out: Path) -> dict:
    return pq.read_table(Path(out) / "results.parquet").to_pydict()


def _same(a: dict, b: dict, out_a: Path, out_b: Path) -> None:
    assert list(a) == list(b)
    assert list(zip(a["path"], a["method"])) == list(zip(b["path"], b["method"]))
    for column in a:
        if column in TIMED:
            continue
        for x, y in zip(a[column], b[column]):
            # the same batches in both engines: the same numbers, bit for bit
            assert x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y)), column
    for rel in a["map_file"]:
        if rel is not None:
            np.testing.assert_array_equal(np.load(out_b / rel), np.load(out_a / rel))


@pytest.fixture(scope="module")
def local_table(data, tmp_path_factory):
    from camlens.dataset.local import run_local

    model_path, items = data
    out = tmp_path_factory.mktemp("local")
    run_local(_spec(model_path, out), items)
    return out, _table(out)


def test_ray_and_local_engines_write_the_same_table(cluster, data, local_table, tmp_path):
    model_path, items = data
    out_local, expected = local_table
    seen = []
    path = run_ray(_spec(model_path, tmp_path), items, workers=2, progress=seen.append)
    assert Path(path) == tmp_path / "results.parquet"
    table = _table(tmp_path)
    _same(expected, table, out_local, tmp_path)
    assert len(table["path"]) == 2 * len(items)  # a row per image x method, the bad ones too
    errors = {p for p, e in zip(table["path"], table["error"]) if e is not None}
    assert {Path(p).name for p in errors} == {"text.png", "cut.png", "empty.jpg", "missing.png"}
    assert sum(seen) == len(items) and set(seen) <= {4, 2}  # images per batch of 4 (the last has 2)
    # every part is whole: no temporary file left, and the parts' rows are the table's
    parts = sorted((tmp_path / "parts").iterdir())
    assert parts and not [p for p in parts if p.name.startswith(".")]
    assert sum(pq.read_table(p).num_rows for p in parts) == 2 * len(items)
    # the summary page reads the Ray run's table and maps: every good row in a class, none failed
    from camlens.report.summary import summarize, write_summary

    summary = summarize(tmp_path, by="label")
    assert sum(g.count for g in summary.groups.values()) == 2 * GOOD and summary.failed == 2 * 4
    assert all(g.maps == g.count for g in summary.groups.values())
    assert "data:image/png" in write_summary(tmp_path).read_text(encoding="utf-8")
    # run again: nothing missing, nothing recomputed, the same table
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    run_ray(_spec(model_path, tmp_path), items, workers=2)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "parts").iterdir()} == before
    _same(expected, _table(tmp_path), out_local, tmp_path)


class DiesOnce(BatchExplainer):
    """The worker, but its process exits (as a killed or crashed worker would) the first time
    a batch comes while ``marker`` exists; the marker is removed first, so the retry lives."""

    marker = ""

    def __call__(self, batch):
        if os.path.exists(self.marker):
            os.remove(self.marker)
            os._exit(1)
        return super().__call__(batch)


def test_a_killed_actor_changes_nothing(cluster, data, local_table, tmp_path):
    model_path, items = data
    out_local, expected = local_table
    marker = tmp_path / "die-once"
    marker.write_text("")
    # ship the subclass by value: the actors cannot import this test module
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    killer = type("DiesOnceHere", (DiesOnce,), {"marker": str(marker)})
    out = tmp_path / "out"
    run_ray(_spec(model_path, out), items, workers=1, _explainer=killer)
    assert not marker.exists()  # an actor did die
    _same(expected, _table(out), out_local, out)
    table = _table(out)
    assert len(set(zip(table["path"], table["method"]))) == len(table["path"]) == 2 * len(items)


def test_resume_after_local_parts(cluster, data, local_table, tmp_path):
    """A run begun by the local engine and finished by Ray: only the missing items are done."""
    from camlens.dataset.local import run_local

    model_path, items = data
    out_local, expected = local_table
    out = tmp_path / "out"
    run_local(_spec(model_path, out), items)
    parts = sorted((out / "parts").iterdir())
    for p in parts[1::2]:
        p.unlink()
    (out / "results.parquet").unlink()
    kept = {p.name for p in parts[0::2]}
    run_ray(_spec(model_path, out), items, workers=1)
    assert kept <= {p.name for p in (out / "parts").iterdir()}
    _same(expected, _table(out), out_local, out)


def test_without_ray_the_message_says_how_to_install(monkeypatch, data, tmp_path):
    model_path, items = data
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError) as info:
        run_ray(_spec(model_path, tmp_path), items)
    assert str(info.value) == RAY_MISSING and 'pip install "camlens[ray]"' in RAY_MISSING


def test_a_model_the_workers_cannot_load_is_the_callers_error(cluster, data, tmp_path):
    """The worker's error comes back as itself, as with the local engine, not wrapped in Ray's
    exceptions, and no part is written."""
    _, items = data
    spec = RunSpec(model=str(tmp_path / "nope.keras"), out=str(tmp_path / "out"), preprocess="unit", batch_size=4)
    with pytest.raises(FileNotFoundError, match="nope.keras: no such model file") as info:
        run_ray(spec, items[:4], workers=1)
    assert type(info.value) is FileNotFoundError
    assert not (tmp_path / "out" / "parts").exists()


def test_the_command_with_engine_ray(cluster, data, local_table, tmp_path, capsys):
    """``camlens run ... --engine ray --workers 2`` (Ray already started here is used as it
    is): the local engine's table; exit status 1 for the bad images."""
    from camlens.cli import main

    model_path, items = data
    out_local, expected = local_table
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{it.path}\n" for it in items))
    argv = [str(model_path), str(listing), "-o", str(tmp_path / "out"), "--method", "gradcam,layercam",
            "--metrics", "deletion", "--steps", "4", "--preprocess", "unit", "--batch-size", "4"]
    with_boxes = tmp_path / "boxes.csv"
    with_boxes.write_text("path,label,boxes\n" + "".join(
        f"{it.path},{'' if it.label is None else it.label},\"{[list(b) for b in it.boxes] if it.boxes else ''}\"\n"
        for it in items))
    assert main(["run", *argv[:1], str(with_boxes), *argv[2:], "--engine", "ray", "--workers", "2"]) == 1
    assert "wrote" in capsys.readouterr().out
    _same(expected, _table(tmp_path / "out"), out_local, tmp_path / "out")


def test_the_command_without_ray_says_how_to_install(monkeypatch, data, tmp_path, capsys):
    from camlens.cli import main

    model_path, items = data
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["run", str(model_path), items[0].path, "-o", str(tmp_path / "out"), "--preprocess", "unit",
                 "--engine", "ray"])
    assert code == 2
    assert 'pip install "camlens[ray]"' in capsys.readouterr().err
