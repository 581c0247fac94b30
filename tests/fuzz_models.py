"""Broken model files, made in code (nothing binary is committed): what ``camlens layers``,
``camlens explain`` and :func:`camlens.io.load_model` must refuse with a one-line message,
never a traceback.

``model_cases(folder)`` writes every case into ``folder`` and returns ``(name, spec, why)``:
``spec`` is what the user would type (a path, or ``FILE.py:NAME``), ``why`` a word the message
must contain. tests/test_cli_reliability.py runs each through the command line;
benchmarks/_reliability_cli.py counts them for docs. Cases that need Keras to be made (a real
``.keras`` to truncate, a Lambda layer) are made only when ``keras=True``.

``pth_payloads(folder)``: crafted torch weight files for camlens._torchfile, each a few hundred
bytes to a megabyte, written with the pickle opcodes spelled out below (nothing of torch is
needed): ones that used to expand to gigabytes or raise RecursionError / OverflowError /
ValueError, and ones that must still load.

``NET`` (a tiny torch model file, ``build`` and the slow ``slow``), ``run_cli`` and
``as_a_user``: how the tests and the benchmark run the command line in a child process, as a
user that file permissions apply to.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

__all__ = ["model_cases", "pth_payloads", "NET", "cli_env", "as_a_user", "run_cli", "interrupt_explain"]


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


# -- crafted torch weight files ----------------------------------------------------------------
# pickle protocol 2, opcode by opcode: what torch.save writes for a state dict, with the numbers
# a hostile file would choose


def _text(t: str) -> bytes:
    raw = t.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])  # BININT1
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _tuple(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"  # MARK ... TUPLE


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + _tuple(*args) + b"R"  # REDUCE


def _storage(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    return _tuple(_text("storage"), _global("torch", kind), _text(key), _text("cpu"), _int(numel)) + b"Q"


def _tensor(storage: bytes, offset: int, size: list[int], stride: list[int]) -> bytes:
    return _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(offset),
                 _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89",
                 _call(_global("collections", "OrderedDict")))


def _state_dict(**items: bytes) -> bytes:
    body = b"".join(_text(k) + v for k, v in items.items())
    return b"\x80\x02" + _call(_global("collections", "OrderedDict")) + b"(" + body + b"u."


def _zip(path: Path, pickled: bytes, storages: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr("archive/data/" + key, data)


def pth_payloads(folder: str | os.PathLike[str]) -> list[tuple[str, Path, str]]:
    """Write the crafted files; ``(name, path, expect)`` per file, ``expect`` a word of the
    refusal, or ``"loads"`` for a file that must load."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    one_double = {"0": bytes(8)}
    mib = 1 << 20
    many = _tensor(_storage("0", mib // 4), 0, [mib // 4], [1])
    cases: list[tuple[str, bytes, dict[str, bytes], int, str]] = [
        # 2**28 doubles (2 GiB) read from one stored double with stride 0
        ("stride-0 tensor of 2 GiB", _state_dict(w=_tensor(_storage("0", 1, "DoubleStorage"), 0, [1 << 28], [0])),
         one_double, zipfile.ZIP_STORED, "may expand to"),
        # 600 tensors over the same 1 MiB storage: 600 MiB of copies
        ("600 tensors on one 1 MiB storage", b"\x80\x02](" + many * 600 + b"e.", {"0": bytes(mib)},
         zipfile.ZIP_STORED, "may expand to"),
        # a deflated storage of 320 MiB of zeros in a file of about 300 KB
        ("deflated 320 MiB storage", _state_dict(w=_tensor(_storage("0", 80 * mib), 0, [80 * mib], [1])),
         {"0": bytes(320 * mib)}, zipfile.ZIP_DEFLATED, "may expand to"),
        # a storage that claims more elements than its entry holds
        ("storage larger than its bytes", _state_dict(w=_tensor(_storage("0", 1 << 30), 0, [4], [1])),
         {"0": bytes(16)}, zipfile.ZIP_STORED, "expected"),
        # 100,000 nested lists: RecursionError in the reader
        ("100,000 nested lists", b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", {},
         zipfile.ZIP_STORED, "nested too deeply"),
        # a stride of 2**62 on a dimension of size 1: OverflowError in numpy
        ("stride 2**62", _state_dict(w=_tensor(_storage("0", 4), 0, [1, 2], [1 << 62, 1])),
         {"0": bytes(16)}, zipfile.ZIP_STORED, "loads"),
        # a size of 2**70 beside a 0: ValueError in numpy
        ("size 0 x 2**70", _state_dict(w=_tensor(_storage("0", 4), 0, [0, 1 << 70], [1, 1])),
         {"0": bytes(16)}, zipfile.ZIP_STORED, "implausibly large"),
        # a list that contains itself: RecursionError in the reader
        ("a list that contains itself", b"\x80\x02]q\x00h\x00a.", {}, zipfile.ZIP_STORED, "loads"),
        # one tensor referenced 5,000 times: built once, not 5,000 copies of 1 MiB
        ("one tensor referenced 5,000 times", b"\x80\x02](" + many + b"q\x01" + b"h\x01" * 4999 + b"e.",
         {"0": bytes(mib)}, zipfile.ZIP_STORED, "loads"),
        # torch.save of a module: refused by name, nothing runs
        ("a pickled module", b"\x80\x02" + _call(_global("torch.nn.modules.linear", "Linear")) + b".", {},
         zipfile.ZIP_STORED, "refused to load"),
    ]
    out = []
    for k, (name, pickled, storages, compress, expect) in enumerate(cases):
        path = root / f"payload{k}.pth"
        _zip(path, pickled, storages, compress)
        out.append((name, path, expect))
    return out


# -- running the command line as a user would ---------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"

NET = textwrap.dedent(
    """
    import time

    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, pause=0.0):
            super().__init__()
            torch.manual_seed(0)
            self.pause = pause
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            time.sleep(self.pause)  # a slow model: a signal comes while it runs
            return self.fc(self.features(x).mean((2, 3)))


    def build():
        return Net().eval()


    def slow():
        return Net(pause=0.3).eval()
    """
)


def cli_env() -> dict[str, str]:
    """The environment of a child ``camlens``: this checkout's ``src`` first; Keras on torch
    (the fastest to import) unless the run says otherwise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.setdefault("KERAS_BACKEND", "torch")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def as_a_user() -> None:
    """``preexec_fn``: as root, drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the
    bounding set, so that the program exec'd next has them not (PR_CAPBSET_DROP is 24)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


#: runs camlens.cli.main on each argv of a JSON list in one process (one torch import), each
#: with its own stderr; an exception that escapes main is recorded as a traceback
RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback
    from camlens.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code
            except BaseException:
                traceback.print_exc()
                rc = "raised"
        results.append({"rc": rc, "err": err.getvalue()})
    print(json.dumps(results))
    """
)


def run_cli(commands: list[list[str]], cwd: Path, timeout: float = 180) -> list[dict]:
    """``{rc, err}`` per command line, run by :data:`RUNNER` in a child process as a user
    (:func:`as_a_user`)."""
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands)], cwd=cwd, env=cli_env(),
                         preexec_fn=as_a_user, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"the runner failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def interrupt_explain(folder: Path, sig: int, images: int = 6) -> dict:
    """Start ``python -m camlens explain`` on ``images`` photos with the slow model (one image
    per batch, about a second each), send ``sig`` once the first PNG exists, and say what was
    left: ``rc``, ``err``, ``listed`` (the files results.json lists, None without one),
    ``present`` (the names in the output folder), ``whole`` (the PNGs and .npy files that decode fully)."""
    import signal
    import time

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(NET)
    for k in range(images):
        (folder / "photos").mkdir(exist_ok=True)
        pixels = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "photos" / f"im{k}.png")
    out = folder / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "camlens", "explain", "net.py:slow", "photos", "--batch-size", "1",
         "-o", "out"], cwd=folder, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.png")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    listed = None
    try:
        results = json.loads((out / "results.json").read_text())
        listed = [f for r in results["images"] for f in r["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    whole = []
    for made in sorted([*out.glob("*.png"), *out.glob("*.npy")]):
        try:
            if made.suffix == ".npy":
                np.load(made, allow_pickle=False)  # a truncated array raises here
            else:
                with Image.open(made) as im:
                    im.load()  # a truncated PNG raises here
            whole.append(made.name)
        except Exception:
            pass
    return {"rc": proc.returncode, "err": err, "listed": listed, "images": images,
            "present": sorted(p.name for p in out.iterdir()) if out.exists() else [],
            "whole": whole}


