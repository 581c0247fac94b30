"""The summary page of a data-set run, from a small hand-made table and maps (no model)."""

from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from camlens.report.summary import render_summary, summarize, write_summary  # noqa: E402


def _run_folder(tmp_path):
    maps = tmp_path / "maps" / "gradcam"
    maps.mkdir(parents=True)
    # a: the left column hot; b: the right column hot, at another resolution and scale
    np.save(maps / "a.npy", np.array([[1.0, 0.0], [1.0, 0.0]]))
    np.save(maps / "b.npy", np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]))
    np.save(maps / "c.npy", np.array([[0.0, 2.0], [0.0, 2.0]]))
    rows = {
        "path": ["a.jpg", "b.jpg", "c.jpg", "bad.jpg"],
        "label": [1, 1, 2, None],
        "predicted": [7, 7, 3, None],
        "method": ["gradcam"] * 4,
        "top10_mass": [0.5, 0.25, 0.75, None],
        "metric_deletion": [0.2, 0.6, 0.4, None],
        "pointing_hit": [True, False, True, None],
        "map_file": ["maps/gradcam/a.npy", "maps/gradcam/b.npy", "maps/gradcam/c.npy", None],
        "overlay_file": [None, None, None, None],
        "error": [None, None, None, "cannot identify image file"],
    }
    schema = pa.schema([("path", pa.string()), ("label", pa.int64()), ("predicted", pa.int64()),
                        ("method", pa.string()), ("top10_mass", pa.float64()),
                        ("metric_deletion", pa.float64()), ("pointing_hit", pa.bool_()),
                        ("map_file", pa.string()), ("overlay_file", pa.string()), ("error", pa.string())])  # fmt: skip
    pq.write_table(pa.table(rows, schema=schema), tmp_path / "results.parquet")
    return tmp_path


def test_summary_means_per_class_and_worst_rows(tmp_path):
    out = _run_folder(tmp_path)
    s = summarize(out, by="predicted", worst=2, side=4)
    assert s.failed == 1 and s.rows == 4
    g7 = s.groups[("gradcam", 7)]
    assert g7.count == 2 and g7.maps == 2
    assert g7.sums["metric_deletion"] / g7.counts["metric_deletion"] == pytest.approx(0.4)
    assert g7.sums["top10_mass"] / g7.counts["top10_mass"] == pytest.approx(0.375)
    assert g7.sums["pointing_hit"] / g7.counts["pointing_hit"] == pytest.approx(0.5)
    mean = g7.map_sum / g7.maps
    # a scaled to [0,1] is 1 on the left half; b (5 -> 1) is 1 on its right third: left 0.5, right 0.5
    assert mean[:, 0] == pytest.approx([0.5] * 4) and mean[:, -1] == pytest.approx([0.5] * 4)
    assert ("gradcam", None) not in s.groups  # the failed row is counted, never averaged
    # deletion: lower is better, so the worst are the highest
    assert [r["path"] for r in s.worst] == ["b.jpg", "c.jpg"]
    by_label = summarize(out, by="label")
    assert sorted(k[1] for k in by_label.groups) == [1, 2]
    assert [r["path"] for r in summarize(out, worst_by="top10_mass").worst] == ["b.jpg", "a.jpg", "c.jpg"]


def test_summary_page_is_self_contained(tmp_path):
    out = _run_folder(tmp_path)
    path = write_summary(out, worst=2)
    assert path == out / "summary.html"
    page = path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2 + 2  # two mean maps (classes 7, 3), two worst maps
    assert "1 failed" in page and "The 2 worst by metric_deletion" in page
    assert "http://" not in page and "https://" not in page and "default-src 'none'" in page


def test_summary_refuses_bad_options(tmp_path):
    out = _run_folder(tmp_path)
    with pytest.raises(ValueError, match="by must be one of predicted, label"):
        summarize(out, by="target")
    with pytest.raises(ValueError, match="worst_by 'path' is not a numeric column"):
        summarize(out, worst_by="path")
    with pytest.raises(FileNotFoundError, match="camlens run"):
        summarize(tmp_path / "nowhere")
    assert "<table>" in render_summary(summarize(out))
