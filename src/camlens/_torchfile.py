"""Read PyTorch weight files (``.pth`` / ``.pt`` state dicts) without PyTorch, safely.

A torch file is a pickle, and ``pickle.load`` on a file from the internet runs whatever code the
file names. This reader never does that: it unpickles with an ``Unpickler`` whose ``find_class``
knows only the handful of names a state dict is made of (``collections.OrderedDict``, torch's
tensor-rebuild functions and the ``torch.*Storage`` types), each mapped to a small function of
ours that builds numpy arrays. Any other name stops the load with :class:`UnsafeFileError`
before anything is called.

Both file layouts torch writes are read:

* **zip** (``torch.save`` since 1.6): ``<prefix>/data.pkl`` holds the object, with each storage as
  a persistent id ``('storage', <type>, <key>, <location>, <numel>)`` whose bytes are the entry
  ``<prefix>/data/<key>``; ``<prefix>/byteorder`` says the byte order (little if absent).
* **legacy** (before 1.6): consecutive pickles -- a magic number, the protocol version (1001), a
  dict of system info (byte order), the object itself (persistent ids
  ``('storage', <type>, <root key>, <location>, <numel>, <view metadata>)``), then the list of
  storage keys; after that, for each key in that order, an int64 element count and the raw
  bytes of the storage.

Tensors are rebuilt from (storage, offset, size, stride), so views, slices and transposes come
back as the values torch would show, as contiguous numpy arrays that own their memory.

Memory is bounded by the file, not by what the pickle claims: every storage must be present in
full (its zip entry or its bytes in a legacy file), and everything the reader allocates
(storages read, arrays built) must fit a budget of 4 times the file's size, at least 256 MiB
(``max_bytes=`` sets another). Why 4: a state dict's arrays are copies of its storages, so a
real file needs about twice its size (storages + arrays); tied weights and views of one storage
add a little; 4 leaves room for those and refuses a few hundred bytes that ask for gigabytes
(a stride-0 tensor, one storage referenced by hundreds of tensors, a highly compressed zip
entry: torch.save never compresses). The 256 MiB floor lets a small file hold an expanded
buffer. Anything unexpected while reading (an overflow, objects nested too deeply or referring
to themselves) is a :class:`TorchFileError` naming the file, never another exception.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["TorchFileError", "UnsafeFileError", "load", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_EXPANDED_ELEMENTS = 1 << 28
#: the least the reader may allocate for any file (see the module's docstring)
_MIN_BUDGET = 256 << 20
#: the reader may allocate this many times the file's size
_BUDGET_FACTOR = 4


class TorchFileError(ValueError):
    """The file is not a PyTorch weight file camlens can read (wrong format, truncated, ...)."""


class UnsafeFileError(TorchFileError):
    """The pickle names something other than the plain data a weight file is made of."""


class _Budget:
    """What the reader may still allocate for one file; :meth:`take` is asked before every
    allocation whose size the file decides."""

    __slots__ = ("file_size", "limit", "path", "used")

    def __init__(self, path: str, file_size: int, limit: int | None) -> None:
        self.path = path
        self.file_size = file_size
        self.limit = limit if limit is not None else max(_MIN_BUDGET, _BUDGET_FACTOR * file_size)
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise TorchFileError(
                f"{self.path}: {what} needs {nbytes} bytes, past the {self.limit} bytes this "
                f"{self.file_size}-byte file may expand to ({_BUDGET_FACTOR} times its size, at "
                f"least {_MIN_BUDGET >> 20} MiB): refused as implausible; if the file is yours, "
                "pass max_bytes= to camlens._torchfile.load"
            )
        self.used += nbytes


# -- storages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What a ``torch.<Name>Storage`` global stands for: the element type of its bytes."""

    name: str
    dtype: str  # numpy dtype of the stored elements, without byte order
    bfloat16: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeFileError(f"torch.{self.name} is a type marker here and cannot be called")


_STORAGE_TYPES = {
    name: _StorageType(name, dtype, name == "BFloat16Storage")
    for name, dtype in {
        "FloatStorage": "f4",
        "DoubleStorage": "f8",
        "HalfStorage": "f2",
        "BFloat16Storage": "u2",  # raw bits; widened to float32 when a tensor is built
        "LongStorage": "i8",
        "IntStorage": "i4",
        "ShortStorage": "i2",
        "CharStorage": "i1",
        "ByteStorage": "u1",
        "BoolStorage": "?",
    }.items()
}


class _Storage:
    """One storage: its type, element count, and (once read) its elements as a 1-D array."""

    __slots__ = ("data", "key", "numel", "stype")

    def __init__(self, stype: _StorageType, key: str, numel: int) -> None:
        self.stype = stype
        self.key = key
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A legacy-format view into a root storage (``view_metadata`` of old files)."""

    __slots__ = ("numel", "offset", "root")

    def __init__(self, root: _Storage, offset: int, numel: int) -> None:
        self.root = root
        self.offset = offset
        self.numel = numel

    @property
    def stype(self) -> _StorageType:
        return self.root.stype

    @property
    def data(self) -> np.ndarray | None:
        if self.root.data is None:
            return None
        return self.root.data[self.offset : self.offset + self.numel]


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TorchFileError(f"corrupt torch file: {what} should be an integer, got {value!r}")
    return value


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):  # torch.Size of a 1-D tensor, old files
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TorchFileError(f"corrupt torch file: {what} should be a tuple of ints, got {value!r}")
    out = tuple(_as_int(v, what) for v in value)
    if any(v < 0 for v in out):
        raise TorchFileError(f"corrupt torch file: negative {what} {out}")
    return out


# -- tensors ----------------------------------------------------------------------------------


class _TensorRef:
    """A tensor waiting for its storage's bytes (legacy files store them after the pickle)."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, (_Storage, _StorageView)):
            raise TorchFileError("corrupt torch file: a tensor is built on something not a storage")
        self.storage = storage
        self.offset = _as_int(offset, "storage offset")
        self.size = _as_int_tuple(size, "tensor size")
        self.stride = _as_int_tuple(stride, "tensor stride")
        if len(self.size) != len(self.stride):
            raise TorchFileError(
                f"corrupt torch file: tensor size {self.size} and stride {self.stride} differ in length"
            )
        if self.offset < 0:
            raise TorchFileError(f"corrupt torch file: negative storage offset {self.offset}")

    def materialize(self, budget: _Budget) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise TorchFileError(f"corrupt torch file: storage {self.storage_key()!r} has no data")
        stype = self.storage.stype
        count = int(np.prod(self.size, dtype=object)) if self.size else 1
        if count > max(flat.size, _MAX_EXPANDED_ELEMENTS) or max(self.size, default=0) >= 1 << 62:
            # Only stride-0 (expanded) tensors hold more elements than their storage; a huge
            # one would exhaust memory when copied out.
            raise TorchFileError(
                f"corrupt torch file: a tensor of size {self.size} ({count} elements) built on "
                f"{flat.size} stored elements is implausibly large"
            )
        budget.take(count * (4 if stype.bfloat16 else flat.itemsize), f"a tensor of size {self.size}")
        if any(n == 0 for n in self.size):
            out = np.empty(self.size, dtype=flat.dtype)
        else:
            # Bounds are checked before as_strided, which would otherwise read outside the buffer.
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= flat.size:
                raise TorchFileError(
                    f"corrupt torch file: a tensor of size {self.size}, stride {self.stride}, "
                    f"offset {self.offset} reaches past its storage of {flat.size} elements"
                )
            base = flat[self.offset :]
            view = np.lib.stride_tricks.as_strided(
                base,
                shape=self.size,
                # a dimension of size 1 is never stepped along: its stride may be anything
                strides=tuple(s * flat.itemsize if n > 1 else 0 for n, s in zip(self.size, self.stride)),
                writeable=False,
            )
            out = np.array(view, copy=True, order="C")
        out = out.astype(out.dtype.newbyteorder("="), copy=False)
        if stype.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def storage_key(self) -> str:
        s = self.storage
        return s.root.key if isinstance(s, _StorageView) else s.key


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``.

    The extra arguments of v2 (``requires_grad``, backward hooks, metadata) mean nothing to an
    array and are ignored.
    """
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stands in for ``torch._utils._rebuild_parameter``: a Parameter is its data."""
    if not isinstance(data, _TensorRef):
        raise TorchFileError("corrupt torch file: a parameter wraps something not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED.update({("torch", name): stype for name, stype in _STORAGE_TYPES.items()})


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles only what a weight file is made of; storages come from ``storage_for``."""

    def __init__(self, file: BinaryIO, storage_for: Any = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._storage_for = storage_for

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeFileError(
                f"refused to load {module}.{name}: the file asks to run or build something other "
                "than tensors, and camlens reads only weight files (state dicts of tensors)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_for is None:
            raise TorchFileError("corrupt torch file: a storage reference where none may be")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchFileError(f"corrupt torch file: unknown persistent id {pid!r}")
        stype = pid[1]
        if not isinstance(stype, _StorageType):
            raise TorchFileError(f"corrupt torch file: unknown storage type {stype!r}")
        key = pid[2]
        if not isinstance(key, str):
            raise TorchFileError(f"corrupt torch file: storage key {key!r} is not a string")
        numel = _as_int(pid[4], "storage size")
        if numel < 0:
            raise TorchFileError(f"corrupt torch file: negative storage size {numel}")
        view = pid[5] if len(pid) > 5 else None
        return self._storage_for(stype, key, numel, view)


def _unpickle(file: BinaryIO, storage_for: Any = None) -> Any:
    try:
        return _WeightsUnpickler(file, storage_for).load()
    except TorchFileError:
        raise
    except EOFError as exc:
        raise TorchFileError("the torch file is truncated (it ends in the middle of a pickle)") from exc
    except Exception as exc:  # UnpicklingError, bad opcodes, wrong argument types, ...
        if "truncated" in str(exc):
            raise TorchFileError(f"the torch file is truncated ({exc})") from exc
        raise TorchFileError(f"not a readable torch file: {type(exc).__name__}: {exc}") from exc


def _materialize(obj: Any, budget: _Budget, memo: dict[int, Any] | None = None) -> Any:
    """Replace every tensor reference in a loaded object by its numpy array.

    ``memo``: what each tensor, dict and list became, by identity: a tensor the pickle
    references many times is built once (and is one array, as it is one tensor in torch), and
    a list that contains itself becomes one, instead of recursing forever."""
    memo = {} if memo is None else memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _TensorRef):
        memo[key] = out = obj.materialize(budget)
        return out
    if isinstance(obj, dict):
        built: Any = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
        memo[key] = built
        for k, v in obj.items():
            built[k] = _materialize(v, budget, memo)
        return built
    if isinstance(obj, list):
        memo[key] = items = []
        items.extend(_materialize(v, budget, memo) for v in obj)
        return items
    if isinstance(obj, tuple):
        return tuple(_materialize(v, budget, memo) for v in obj)
    return obj


# -- the zip layout ---------------------------------------------------------------------------


def _load_zip(path: str, budget: _Budget) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise TorchFileError(
            f"{path}: a zip file that cannot be opened (truncated or corrupt): {exc}"
        ) from exc
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: a zip file, but not one torch.save wrote (no <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        order = "<"
        if prefix + "byteorder" in names:
            text = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if text not in ("little", "big"):
                raise TorchFileError(f"{path}: unknown byte order {text!r}")
            order = "<" if text == "little" else ">"

        storages: dict[str, _Storage] = {}

        def storage_for(stype: _StorageType, key: str, numel: int, view: Any) -> _Storage:
            found = storages.get(key)
            if found is not None:
                return found
            entry = prefix + "data/" + key
            try:
                info = archive.getinfo(entry)
            except KeyError:
                raise TorchFileError(f"{path}: storage {key!r} is missing from the archive") from None
            dtype = np.dtype(order + stype.dtype)
            expected = numel * dtype.itemsize
            if info.file_size < expected:
                raise TorchFileError(
                    f"{path}: storage {key!r} holds {info.file_size} bytes, {expected} expected"
                )
            stored = info.compress_size if info.compress_type != zipfile.ZIP_STORED else info.file_size
            if info.header_offset + stored > budget.file_size or (
                    info.compress_type == zipfile.ZIP_STORED and info.compress_size < info.file_size):
                raise TorchFileError(
                    f"{path}: storage {key!r} claims {info.file_size} bytes, which the file does "
                    f"not hold (it has {budget.file_size}): truncated or corrupt"
                )
            budget.take(info.file_size, f"storage {key!r}")  # what archive.read allocates
            try:
                raw = archive.read(entry)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise TorchFileError(f"{path}: storage {key!r} cannot be read (truncated?): {exc}") from exc
            storage = _Storage(stype, key, numel)
            storage.data = np.frombuffer(raw, dtype=dtype, count=numel)
            storages[key] = storage
            return storage

        try:
            with archive.open(pickles[0]) as fh:
                obj = _unpickle(io.BytesIO(fh.read()), storage_for)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise TorchFileError(f"{path}: data.pkl cannot be read (truncated?): {exc}") from exc
        return _materialize(obj, budget)


# -- the legacy layout ------------------------------------------------------------------------


def _read_exact(fh: BinaryIO, n: int, path: str, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TorchFileError(
            f"{path}: the file is truncated: {what} needs {n} bytes, only {len(data)} are left"
        )
    return data


def _load_legacy(path: str, budget: _Budget) -> Any:
    file_size = budget.file_size
    with open(path, "rb") as fh:
        try:
            magic = _unpickle(fh)
        except TorchFileError as exc:
            if isinstance(exc, UnsafeFileError):
                raise
            raise TorchFileError(f"{path}: not a PyTorch weight file ({exc})") from exc
        if magic != _LEGACY_MAGIC:
            raise TorchFileError(f"{path}: not a PyTorch weight file (no torch magic number)")
        protocol = _unpickle(fh)
        if protocol != _LEGACY_PROTOCOL:
            raise TorchFileError(f"{path}: unsupported torch file protocol version {protocol!r}")
        sys_info = _unpickle(fh)
        little = True
        if isinstance(sys_info, dict):
            little = bool(sys_info.get("little_endian", True))
        order = "<" if little else ">"

        roots: dict[str, _Storage] = {}
        views: dict[str, _StorageView] = {}

        def storage_for(stype: _StorageType, key: str, numel: int, view: Any) -> Any:
            root = roots.get(key)
            if root is None:
                # Every storage's bytes are somewhere in the file: a count larger than the file
                # is corrupt, and refusing it avoids allocating for it.
                nbytes = numel * np.dtype(stype.dtype).itemsize
                if nbytes > file_size:
                    raise TorchFileError(
                        f"{path}: the file is truncated or corrupt: storage {key!r} needs {nbytes} "
                        f"bytes, more than the whole file ({file_size} bytes)"
                    )
                root = roots[key] = _Storage(stype, key, numel)
            elif root.stype != stype:
                raise TorchFileError(f"{path}: storage {key!r} is used with two element types")
            if view is None:
                return root
            if not isinstance(view, tuple) or len(view) != 3:
                raise TorchFileError(f"{path}: unknown storage view {view!r}")
            view_key, offset, view_numel = view
            found = views.get(view_key)
            if found is None:
                offset = _as_int(offset, "view offset")
                view_numel = _as_int(view_numel, "view size")
                if offset < 0 or view_numel < 0 or offset + view_numel > numel:
                    raise TorchFileError(f"{path}: storage view {view!r} lies outside its storage")
                found = views[view_key] = _StorageView(root, offset, view_numel)
            return found

        obj = _unpickle(fh, storage_for)
        keys = _unpickle(fh)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TorchFileError(
                f"{path}: corrupt torch file: the list of storage keys is not a list of names"
            )

        for key in keys:
            storage = roots.get(key)
            if storage is None:
                raise TorchFileError(f"{path}: corrupt torch file: data for unknown storage {key!r}")
            (count,) = struct.unpack("<q", _read_exact(fh, 8, path, f"the size of storage {key!r}"))
            if count != storage.numel:
                raise TorchFileError(
                    f"{path}: corrupt torch file: storage {key!r} holds {count} elements, "
                    f"{storage.numel} expected"
                )
            dtype = np.dtype(order + storage.stype.dtype)
            budget.take(count * dtype.itemsize, f"storage {key!r}")
            raw = _read_exact(fh, count * dtype.itemsize, path, f"storage {key!r}")
            storage.data = np.frombuffer(raw, dtype=dtype, count=count)

    missing = [k for k, s in roots.items() if s.data is None]
    if missing:
        raise TorchFileError(f"{path}: corrupt torch file: no data for storages {missing[:5]}")
    return _materialize(obj, budget)


# -- entry points -----------------------------------------------------------------------------


def load(path: str | os.PathLike[str], max_bytes: int | None = None) -> Any:
    """The object saved in a torch file, with every tensor as a numpy array.

    Raises :class:`UnsafeFileError` when the file names anything a weight file has no use for
    (nothing it names is called first), and :class:`TorchFileError` (every message names the
    file) for files that are not torch files, are truncated or corrupt, or would expand past
    ``max_bytes`` (default: 4 times the file's size, at least 256 MiB; see the module's
    docstring). ``OSError`` only where the file itself cannot be opened.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
        size = os.fstat(fh.fileno()).st_size
    if not head:
        raise TorchFileError(f"{path}: the file is empty")
    budget = _Budget(path, size, max_bytes)
    try:
        if head.startswith(b"PK"):
            return _load_zip(path, budget)
        if head[:1] == b"\x80":  # a pickle's PROTO opcode: the legacy layout
            return _load_legacy(path, budget)
        if zipfile.is_zipfile(path):  # a zip with something prepended
            return _load_zip(path, budget)
    except TorchFileError as exc:
        if path in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
    except RecursionError as exc:
        raise TorchFileError(f"{path}: not a readable torch file: its objects are nested too "
                             "deeply for a state dict") from exc
    except Exception as exc:  # an overflow, an odd shape: anything not foreseen is still ours
        raise TorchFileError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from exc
    raise TorchFileError(f"{path}: not a PyTorch weight file (neither a zip archive nor a pickle)")


def load_state_dict(path: str | os.PathLike[str], max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """A state dict saved with ``torch.save`` as ``{name: numpy array}``, without torch.

    Checkpoints that wrap the state dict (``{"state_dict": {...}}`` or ``{"model": {...}}``) are
    unwrapped. Non-tensor entries are left out. ``max_bytes``: as for :func:`load`.
    """
    obj = load(path, max_bytes)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and any(isinstance(v, np.ndarray) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise TorchFileError(f"{os.fspath(path)}: holds a {type(obj).__name__}, not a state dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not out and obj:
        raise TorchFileError(f"{os.fspath(path)}: holds a dict without tensors, not a state dict")
    return out
