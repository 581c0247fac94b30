"""JAX's persistent compilation cache: off unless asked for, set by ``enable_compile_cache`` or
``CAMLENS_JAX_CACHE``, and really reused by a second process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import camlens
from camlens.adapters import compile_cache

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def jax_config(monkeypatch):
    """jax's cache setting and camlens' choice, restored afterwards."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setattr(compile_cache, "_chosen", compile_cache._UNSET)
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    yield jax.config
    jax.config.update("jax_compilation_cache_dir", before)
    from jax._src import compilation_cache as cc

    cc.reset_cache()


def test_enable_sets_the_folder_and_none_turns_it_off(jax_config, tmp_path):
    got = camlens.enable_compile_cache(tmp_path / "a" / "b")
    assert got == (tmp_path / "a" / "b").resolve() and got.is_dir()
    assert jax_config.jax_compilation_cache_dir == str(got)
    other = camlens.enable_compile_cache(str(tmp_path / "c"))
    assert jax_config.jax_compilation_cache_dir == str(other)
    assert camlens.enable_compile_cache(None) is None
    assert jax_config.jax_compilation_cache_dir is None


def test_nothing_asked_leaves_jax_alone(jax_config, tmp_path, monkeypatch):
    jax_config.update("jax_compilation_cache_dir", str(tmp_path))  # the user's own JAX setting
    compile_cache.apply_jax_cache()
    assert jax_config.jax_compilation_cache_dir == str(tmp_path)
    monkeypatch.setenv(compile_cache.ENV, "")  # empty: unset
    compile_cache.apply_jax_cache()
    assert jax_config.jax_compilation_cache_dir == str(tmp_path)
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
    compile_cache.apply_jax_cache()
    assert jax_config.jax_compilation_cache_dir == str((tmp_path / "env").resolve())
    camlens.enable_compile_cache(tmp_path / "call")  # the call wins over the variable
    assert jax_config.jax_compilation_cache_dir == str((tmp_path / "call").resolve())


def test_bad_folders_are_named(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        camlens.enable_compile_cache(f)
    with pytest.raises(TypeError, match="must be a folder"):
        camlens.enable_compile_cache(3)
    with pytest.raises(TypeError, match="must be a folder"):
        camlens.enable_compile_cache("")


_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, keras, jax
    import camlens
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    x = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    exp = camlens.explain(model, x, method="cam")
    print("RESULT", json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                                "map": exp.raw_maps[0].ravel().tolist()}))
""")


def _child(env: dict[str, str]) -> dict:
    import json

    full = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": SRC, **env}
    full.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_the_variable_fills_the_folder_and_a_second_process_reads_it(tmp_path):
    """Once, in the JAX run (two fresh processes): the environment variable alone turns the
    cache on, the programs land in the folder, a second process finds them (no new file) and
    gives the same map; without the variable JAX's setting stays unset."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "jax":
        pytest.skip("runs once, in the JAX run")
    pytest.importorskip("jax")
    folder = tmp_path / "cache"
    env = {compile_cache.ENV: str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = _child(env)
    assert first["dir"] == str(folder.resolve())
    files = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert files, "nothing was written to the cache"
    second = _child(env)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == files
    assert second["map"] == first["map"]
    assert _child({compile_cache.ENV: ""})["dir"] is None
