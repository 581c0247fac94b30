"""Broken model files, made in code (nothing binary is committed): what ``camlens layers``,
``camlens explain`` and :func:`camlens.io.load_model` must refuse with a one-line message,
never a traceback.

``model_cases(folder)`` writes every case into ``folder`` and returns ``(name, spec, why)``:
``spec`` is what the user would type (a path, or ``FILE.py:NAME``), ``why`` a word the message
must contain. tests/test_cli_reliability.py runs each through the command line;
benchmarks/_reliability_cli.py counts them for docs. Cases that need Keras to be made (a real
``.keras`` to truncate, a Lambda layer) are made only when ``keras=True``.
"""

from __future__ import annotations

import os
import random
import textwrap
import zipfile
from pathlib import Path

__all__ = ["model_cases"]


def _keras_files(folder: Path) -> list[tuple[str, str, str]]:
    """A real tiny ``.keras`` cut in half, and one with a Lambda layer (code in the file)."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    whole = folder / "whole.keras"
    plain.save(whole)
    data = whole.read_bytes()
    (folder / "truncated.keras").write_bytes(data[: len(data) // 2])
    whole.unlink()
    lam = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    risky = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(lam))
    risky.save(folder / "lambda.keras")
    return [
        ("truncated .keras", str(folder / "truncated.keras"), "truncated.keras"),
        (".keras with a Lambda layer", str(folder / "lambda.keras"), "safe_mode"),
    ]


def _h5_not_a_model(path: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.create_dataset("numbers", data=np.arange(10))


def model_cases(folder: str | os.PathLike[str], keras: bool = True) -> list[tuple[str, str, str]]:
    """Write the broken model files into ``folder``; ``(name, spec, why)`` per case."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(14)
    cases: list[tuple[str, str, str]] = []

    def file(name: str, data: bytes, label: str, why: str) -> None:
        (root / name).write_bytes(data)
        cases.append((label, str(root / name), why))

    file("empty.keras", b"", "empty .keras", "empty.keras")
    file("empty.h5", b"", "empty .h5", "empty.h5")
    file("noise.keras", b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(600)),
         "corrupt zip named .keras", "noise.keras")
    zipped = root / "other.keras"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "a zip, but no Keras model in it")
    cases.append(("zip without a model, named .keras", str(zipped), "other.keras"))
    file("text.h5", b"this is not HDF5\n" * 20, "text named .h5", "text.h5")
    try:
        _h5_not_a_model(root / "data.h5")
        cases.append((".h5 that holds no model", str(root / "data.h5"), "data.h5"))
    except ImportError:
        pass
    file("garbage.pth", bytes(rng.randrange(256) for _ in range(256)), "garbage .pth", "garbage.pth")
    file("empty", b"", "empty file without suffix", "empty")
    (root / "folder.keras").mkdir(exist_ok=True)
    cases.append(("a folder named .keras", str(root / "folder.keras"), "folder.keras"))
    cases.append(("missing .keras", str(root / "absent.keras"), "absent.keras"))
    fifo = root / "pipe.keras"
    if hasattr(os, "mkfifo") and not fifo.exists():
        os.mkfifo(fifo)
    if fifo.exists():
        cases.append(("named pipe named .keras", str(fifo), "pipe.keras"))

    code = textwrap.dedent(
        """
        raise_at_import = {raise_}
        if raise_at_import:
            raise RuntimeError("the weights are on another machine")

        not_a_model = [1, 2, 3]

        def returns_text():
            return "a model"

        def build():
            raise MemoryError("pretend")
        """
    )
    (root / "raises.py").write_text(code.format(raise_=True))
    (root / "fine.py").write_text(code.format(raise_=False))
    (root / "syntax.py").write_text("def build(:\n")
    (root / "exits.py").write_text("import sys\nsys.exit(3)\n")
    cases += [
        ("FILE.py raising at import", f"{root / 'raises.py'}:build", "raises.py"),
        ("FILE.py with a syntax error", f"{root / 'syntax.py'}:build", "syntax.py"),
        ("FILE.py calling sys.exit() at import", f"{root / 'exits.py'}:build", "SystemExit"),
        ("FILE.py:NAME, NAME missing", f"{root / 'fine.py'}:nope", "nope"),
        ("FILE.py:NAME, NAME not a model", f"{root / 'fine.py'}:not_a_model", "not_a_model"),
        ("FILE.py:NAME, NAME() not a model", f"{root / 'fine.py'}:returns_text", "returns_text"),
        ("FILE.py:NAME, NAME() raises", f"{root / 'fine.py'}:build", "build"),
        ("missing FILE.py", f"{root / 'absent.py'}:build", "absent.py"),
        ("module:NAME not importable", "no_such_package_r14.models:build", "no_such_package_r14"),
    ]
    if keras:
        cases += _keras_files(root)
    return cases
