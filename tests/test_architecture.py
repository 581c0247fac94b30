"""The layering of ``src/camlens`` (docs/architecture.md), read from the source, not imported.

Every ``import`` in every module counts, also the ones inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency. Each module belongs to the layer of
its longest listed prefix; it may import only from its own layer or the ones below, the
module graph has no cycle, and the deep-learning frameworks are imported only by
``camlens.adapters`` and ``camlens.models``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: bottom first; a module may import from its own layer and the layers before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("camlens._image", "camlens._args", "camlens.tokens", "camlens.graph",
              "camlens.targets", "camlens.methods", "camlens._torchfile", "camlens.data",
              "camlens.samples", "camlens.registry", "camlens.rules", "camlens._restore")),
    ("adapters", ("camlens.adapters", "camlens.models")),
    ("viz", ("camlens.viz",)),
    ("library", ("camlens.io", "camlens.access", "camlens._explain", "camlens._visualize", "camlens.explanation",
                 "camlens.features", "camlens.metrics", "camlens.smooth", "camlens.files",
                 "camlens.dataset")),
    ("pages", ("camlens.report",)),
    ("facade", ("camlens",)),
    ("shells", ("camlens.cli", "camlens.app", "camlens.demo", "camlens.__main__")),
]

FRAMEWORKS = {"torch", "torchvision", "keras", "tensorflow", "jax", "jaxlib", "flax", "timm",
              "transformers", "keras_hub", "keras_cv"}
FRAMEWORK_HOMES = ("camlens.adapters", "camlens.models")
#: shells are entry points: nothing imports them but other shells' dispatch (cli runs app, demo)
SHELL_IMPORTERS = {"camlens.cli", "camlens.__main__"}


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((root / "camlens").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module (inside camlens: resolved to a known module; outside: the top-level name)
    that ``name`` imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for alias in node.names:  # `from . import viz` imports the module camlens.viz
                if f"{mod}.{alias.name}" in known:
                    out.add(f"{mod}.{alias.name}")
    resolved = set()
    for mod in out:
        if mod.split(".")[0] != "camlens":
            resolved.add(mod.split(".")[0])
            continue
        while mod not in known and "." in mod:  # `from .x import y`: y is a name in x
            mod = mod.rpartition(".")[0]
        if mod != name and not name.startswith(mod + "."):  # a parent package is implicit
            resolved.add(mod)
    return resolved


def _layer(mod: str) -> int:
    best, rank = -1, None
    for k, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (mod == prefix or mod.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), k
    assert rank is not None, f"{mod} is in no layer of tests/test_architecture.py: add it"
    return rank


def _graph(root: Path) -> dict[str, set[str]]:
    mods = _modules(root)
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def problems(root: Path = SRC) -> list[str]:
    graph = _graph(root)
    found = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep in FRAMEWORKS and not mod.startswith(FRAMEWORK_HOMES):
                found.append(f"{mod} imports the framework {dep}: only adapters/ and models/ may")
            if dep not in graph:
                continue
            if _layer(dep) > _layer(mod):
                found.append(
                    f"{mod} ({LAYERS[_layer(mod)][0]}) imports {dep} ({LAYERS[_layer(dep)][0]}), "
                    "a layer above it"
                )
            inside = dep.split(".")[:2] == mod.split(".")[:2]  # camlens.app._server -> ._session
            if LAYERS[_layer(dep)][0] == "shells" and mod not in SHELL_IMPORTERS and not inside:
                found.append(f"{mod} imports the shell {dep}: nothing but the CLI's dispatch may")
    found.extend(f"import cycle: {' -> '.join(c)}" for c in _cycles(graph))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~80 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c)) for c in comps]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    start = min(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first inside the component, back to the start
        v = todo.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return sorted(comp)


def test_layers_hold():
    assert problems() == []


def test_every_module_has_a_layer():
    for mod in _modules(SRC):
        _layer(mod)


@pytest.mark.parametrize(
    "where, line, expect",
    [
        ("camlens/methods/gradcam.py", "import torch", "imports the framework torch"),
        ("camlens/tokens.py", "from ._explain import explain", "a layer above it"),
        ("camlens/graph.py", "from . import tokens", None),  # same layer: fine
        ("camlens/tokens.py", "from .graph import LayerGraph", "import cycle"),
        ("camlens/report/_html.py", "from ..cli import main", "imports the shell"),
    ],
)
def test_planted_violations_are_caught(tmp_path, where, line, expect):
    root = tmp_path / "src"
    shutil.copytree(SRC / "camlens", root / "camlens")
    target = root / where
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {line}\n")
    found = problems(root)
    if expect is None:
        assert found == []
    else:
        assert any(expect in p for p in found), found


def test_import_camlens_stays_light():
    code = (
        "import sys, camlens, camlens.methods, camlens.metrics, camlens.viz, camlens.report;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FRAMEWORKS)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
