"""The images of a data-set run: :func:`read_source` turns folders, glob patterns, a text
file of paths or a CSV file of paths (with labels and boxes) into :class:`Item` s."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Item", "read_source", "read_boxes"]


@dataclass(frozen=True)
class Item:
    """One image: ``path`` as given (its ``key``: rows and maps are named by it), the class
    ``label`` (None: none given) and the object ``boxes`` ``(x0, y0, x1, y1)`` in the image
    file's pixels, ``x1``/``y1`` exclusive (None: none given)."""

    path: str
    label: int | None = None
    boxes: tuple[tuple[int, int, int, int], ...] | None = None

    @property
    def key(self) -> str:
        return self.path

    def row(self, index: int) -> dict[str, Any]:
        """The item as a worker's input row: ``index``, ``path``, ``label`` (-1: none, so that
        the column stays integer) and ``boxes_json`` (``""``: none)."""
        return {"index": index, "path": self.path, "label": -1 if self.label is None else self.label,
                "boxes_json": "" if self.boxes is None else json.dumps([list(b) for b in self.boxes])}


_BOX_COLUMNS = ("x0", "y0", "x1", "y1")


def _box(values: Sequence[Any], where: str) -> tuple[int, int, int, int]:
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        nums = []
    if len(nums) != 4 or any(not math.isfinite(v) or v != int(v) for v in nums):
        raise ValueError(f"{where}: bad box {list(values)!r}; give whole pixel coordinates x0,y0,x1,y1")
    x0, y0, x1, y1 = (int(v) for v in nums)
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"{where}: box {(x0, y0, x1, y1)} is empty; need 0 <= x0 < x1 and 0 <= y0 < y1 "
                         "(x1, y1 exclusive, in the image file's pixels)")
    return x0, y0, x1, y1


def _parse_boxes(text: str, where: str) -> tuple[tuple[int, int, int, int], ...] | None:
    """A ``boxes`` cell: JSON ``[x0, y0, x1, y1]`` or ``[[x0, y0, x1, y1], ...]``; blank: None."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: bad boxes {text!r}; give JSON [x0, y0, x1, y1] or a list of them")
    if not isinstance(data[0], list):
        data = [data]
    return tuple(_box(b, where) for b in data)


def _label(text: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{where}: label {text!r} is not a class index (a whole number of 0 or more)")
    return value


def _read_csv(path: Path) -> list[Item]:
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [(h or "").strip() for h in reader.fieldnames or []]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    if "path" not in header:
        raise ValueError(f"{path}: a CSV source needs a header row with a 'path' column (optional: "
                         "label, x0,y0,x1,y1 or boxes); its header is "
                         f"{','.join(header) if header else 'empty'}")
    some_box = [c for c in _BOX_COLUMNS if c in header]
    if some_box and len(some_box) != 4:
        raise ValueError(f"{path}: box columns {','.join(some_box)} given; give all of x0,y0,x1,y1")
    base = path.parent
    items: dict[str, Item] = {}
    for n, raw in enumerate(rows, 2):
        row = {(k or "").strip(): (v or "") for k, v in raw.items()}
        where = f"{path} row {n}"
        cell = row["path"].strip()
        if not cell:
            continue
        p = Path(cell).expanduser()
        key = str(p if p.is_absolute() else base / p)  # relative to the CSV, as --pairs
        boxes = None
        if some_box and any(row[c].strip() for c in _BOX_COLUMNS):
            boxes = (_box([row[c] for c in _BOX_COLUMNS], where),)
        if "boxes" in row:
            more = _parse_boxes(row["boxes"], where)
            if more is not None:
                boxes = (boxes or ()) + more
        label = _label(row.get("label", ""), where)
        if key in items:  # several rows of one image: several boxes of its object
            old = items[key]
            if old.label != label:
                raise ValueError(f"{where}: {cell} has label {label} here and {old.label} above")
            if boxes is not None:
                boxes = (old.boxes or ()) + boxes
            items[key] = Item(key, label, boxes if boxes is not None else old.boxes)
        else:
            items[key] = Item(key, label, boxes)
    if not items:
        raise ValueError(f"{path}: no image paths in its 'path' column")
    return list(items.values())


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file of image paths (one per line)") from None
    base = path.parent
    out = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            p = Path(text).expanduser()
            out.append(str(p if p.is_absolute() else base / p))
    if not out:
        raise ValueError(f"{path}: no image paths (one per line)")
    return out


def read_source(sources: Sequence[str | os.PathLike[str]]) -> list[Item]:
    """The images of ``sources``, in order, each once (the first one given is kept): image
    files, folders (their images, sorted: :func:`camlens.io.image_files`), glob patterns, a
    ``.txt`` file of paths (one per line, ``#`` comments, relative to the file's folder) or a
    ``.csv`` file with a header: ``path`` (relative to the CSV's folder), optionally ``label``
    (a class index) and a box per row as ``x0,y0,x1,y1`` or JSON in a ``boxes`` column (several
    rows of one path: several boxes). Raises ValueError naming the file and the fix."""
    from ..io import image_files

    found: dict[str, Item] = {}
    plain: list[str] = []

    def flush() -> None:
        for f in image_files(plain) if plain else []:
            found.setdefault(f, Item(f))
        plain.clear()

    for source in sources:
        p = Path(source)
        suffix = p.suffix.lower()
        if suffix in (".csv", ".txt") and p.is_file():
            flush()
            if suffix == ".csv":
                for it in _read_csv(p):
                    found.setdefault(it.key, it)
            else:
                for f in _read_list(p):
                    found.setdefault(f, Item(f))
        else:
            plain.append(str(source))
    flush()
    if not found:
        raise ValueError("no images given; give image files, folders, patterns, or a .txt/.csv list")
    return list(found.values())


def read_boxes(path: str | os.PathLike[str], items: Sequence[Item]) -> list[Item]:
    """``items`` with the labels and boxes of the CSV file ``path`` (``--boxes``: columns as
    for a CSV source) for the images it names (a relative path is read from the CSV's folder;
    the same file given another way, relative or absolute, is the same image). An image the
    file does not name keeps what it had."""
    def same(key: str) -> str:
        return os.path.normpath(os.path.abspath(key))

    extra = {same(it.key): it for it in _read_csv(Path(path))}
    out = []
    for it in items:
        more = extra.get(same(it.key))
        if more is None:
            out.append(it)
            continue
        out.append(Item(it.path, more.label if more.label is not None else it.label,
                        more.boxes if more.boxes is not None else it.boxes))
    return out
