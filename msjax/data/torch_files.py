"""PyTorch ``.pt`` / ``.pth`` files read without torch, as numpy arrays.

``load(path)`` returns what ``torch.save`` saved, with every tensor as a numpy array and plain
containers as they were (lists, tuples, dicts, ``collections.OrderedDict`` state dicts): the
official MGE code's Urban100 tensors, and state dicts of trained weights.

The format (torch >= 1.6's default, a zip archive): ``<name>/data.pkl`` pickles the object; a
tensor in it is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose
storage is the persistent id ``('storage', torch.<Type>Storage, key, location, numel)``, the raw
bytes of ``<name>/data/<key>`` (in the byte order ``<name>/byteorder`` names, little endian when
absent). The pickle is read with a table of allowed globals (``safe_pickle``): tensors,
parameters, storage types and plain containers; any other global is refused in one
``DataError`` line, and nothing from the file runs.

The legacy format (before torch 1.6, or ``_use_new_zipfile_serialization=False``; published
weights such as EDSR's are often in it): pickles back to back, no zip. A magic number, the
protocol version (1001) and a dict of the writer's byte order and sizes; then the object, whose
storages are persistent ids ``('storage', torch.<Type>Storage, key, location, numel, None)``;
then the sorted list of storage keys; then each storage in that order as an int64 element count
and its raw bytes. The object is read twice: once to find where it ends (tensors not built),
then with the storages read from behind it. The same table of globals applies.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from msjax.data import safe_pickle
from msjax.errors import DataError


@functools.cache
def _bfloat16():
    import ml_dtypes  # installed with jax

    return np.dtype(ml_dtypes.bfloat16)


# torch's storage classes by the numpy dtype of their elements (None: bfloat16, from ml_dtypes).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": None, "ByteStorage": np.uint8, "CharStorage": np.int8,
    "ShortStorage": np.int16, "IntStorage": np.int32, "LongStorage": np.int64,
    "BoolStorage": np.bool_,
}


NATIVE = "<" if sys.byteorder == "little" else ">"


class _StorageType:
    """What a ``torch.<Type>Storage`` name resolves to: the dtype of its elements."""

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self) -> np.dtype:
        kind = STORAGE_DTYPES[self.name]
        return _bfloat16() if kind is None else np.dtype(kind)


class _TensorClass:
    """What torch.Tensor / torch.nn.Parameter resolve to: a marker ``_rebuild_from_type_v2``
    accepts, never a class that could be called."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    """A tensor as an array of its own: ``size`` elements ``stride`` apart from ``offset`` in
    ``storage`` (every index checked against the storage first)."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("a tensor without a storage")
    size, stride, offset = tuple(int(n) for n in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise pickle.UnpicklingError(f"a tensor of size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"a tensor of size {size}, stride {stride} at offset "
                                     f"{offset} reaches past its storage of {storage.size}")
    item = storage.itemsize
    view = as_strided(storage[offset:], size, tuple(s * item for s in stride), writeable=False)
    return np.array(view)  # a copy: tensors that share a storage do not share memory here


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type(func, new_type, args, state=None):
    if new_type is not _TensorClass:
        raise pickle.UnpicklingError("a tensor of an unknown subclass")
    return func(*args)


ALLOWED = {
    **safe_pickle.BUILTINS,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TensorClass,
    ("torch.nn.parameter", "Parameter"): _TensorClass,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise DataError(f"{path} is a zip archive but not a PyTorch file (it has "
                        f"{len(pickles)} '<name>/data.pkl' records, expected 1)")
    return pickles[0][:-len("data.pkl")]


def _storages(archive: zipfile.ZipFile, prefix: str, path: Path):
    """persistent_load for ``archive``: each storage's bytes as a flat array, read once."""
    names = set(archive.namelist())
    order = "<"  # no record: little endian, the order of nearly every machine that wrote one
    if f"{prefix}byteorder" in names:
        order = {"little": "<", "big": ">"}.get(
            archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip(), "<")
    loaded = {}

    def load(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in loaded:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise DataError(f"{path} lacks the storage record {record}: the file is "
                                "incomplete; save it again")
            dtype = kind.dtype if order == NATIVE else kind.dtype.newbyteorder(order)
            raw = np.frombuffer(archive.read(record), np.uint8)
            count = raw.size // dtype.itemsize
            if count < int(numel):
                raise DataError(f"{path}: storage {record} holds {raw.size} bytes, fewer than "
                                f"its {int(numel)} {kind.name} elements; the file is truncated")
            # In native byte order, and writable (frombuffer's view of the bytes is not).
            loaded[key] = raw[:count * dtype.itemsize].view(dtype).astype(kind.dtype)
        return loaded[key]

    return load


LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
# The first pass over a legacy file's object builds no tensor.
_SKIM = {**ALLOWED, ("torch._utils", "_rebuild_tensor_v2"): lambda *a: None,
         ("torch._utils", "_rebuild_tensor"): lambda *a: None}


def _legacy_header(file, path: Path) -> str:
    """Reads the three header pickles; returns the writer's byte order ('<' or '>')."""
    header = [safe_pickle.load(file, str(path), safe_pickle.BUILTINS) for _ in range(3)]
    magic, protocol, info = header
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(info, dict):
        raise DataError(f"{path} is neither a PyTorch zip file nor a legacy PyTorch file (its "
                        "header is not torch.save's); check that it is a .pt / .pth file")
    return "<" if info.get("little_endian", True) else ">"


def _legacy_pid(pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")
            and isinstance(pid[1], _StorageType) and pid[5] is None):
        raise pickle.UnpicklingError(f"an unknown persistent id {str(pid)[:80]}")
    _, kind, key, _location, numel, _ = pid
    return kind, key.decode() if isinstance(key, bytes) else str(key), int(numel)


def _load_legacy(path: Path) -> object:
    data = path.read_bytes()
    file = io.BytesIO(data)
    order = _legacy_header(file, path)
    start = file.tell()
    kinds = {}

    def note(pid):
        kind, key, numel = _legacy_pid(pid)
        kinds[key] = (kind, numel)

    fix = "save it again with torch.save"
    safe_pickle.load(file, str(path), _SKIM, persistent=note, fix=fix)
    keys = safe_pickle.load(file, str(path), safe_pickle.BUILTINS, fix=fix)
    if not isinstance(keys, list) or set(map(str, keys)) != set(kinds):
        raise DataError(f"{path}: its storage list does not match its tensors; the file is "
                        f"damaged; {fix}")
    storages, offset = {}, file.tell()
    for key in map(str, keys):
        kind, numel = kinds[key]
        dtype = kind.dtype if order == NATIVE else kind.dtype.newbyteorder(order)
        count = int(np.frombuffer(data, np.dtype(order + "i8"), 1, offset)[0]) \
            if offset + 8 <= len(data) else -1
        end = offset + 8 + max(count, 0) * dtype.itemsize
        if count < numel or end > len(data):
            raise DataError(f"{path}: storage {key} of {numel} {kind.name} elements reaches past "
                            f"the end of the file; the file is truncated; {fix}")
        storages[key] = np.frombuffer(data, dtype, count, offset + 8).astype(kind.dtype)
        offset = end

    def load_storage(pid):
        return storages[_legacy_pid(pid)[1]]

    return safe_pickle.load(io.BytesIO(data[start:]), str(path), ALLOWED,
                            persistent=load_storage, fix=fix)


def load(path) -> object:
    """The object saved in the PyTorch file ``path``: nested Python containers with every
    tensor as a numpy array (bfloat16 as ml_dtypes.bfloat16)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if not zipfile.is_zipfile(path):
        return _load_legacy(path)
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive, path)
        return safe_pickle.load(archive.read(f"{prefix}data.pkl"), str(path), ALLOWED,
                                persistent=_storages(archive, prefix, path),
                                fix="save it again with torch.save")
