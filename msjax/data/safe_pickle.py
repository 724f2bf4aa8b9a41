"""Pickles read as data, never as code.

A pickle names the functions and classes that rebuild its objects, and ``pickle.load`` imports
and calls whatever it names: a data file could run ``os.system``. ``load`` resolves a name only
through the caller's table of allowed globals, each mapped to a function msjax wrote or checked
(so even an allowed name builds only plain data); any other name stops the load with one
``DataError`` line naming the file and the global, before anything runs.
"""

from __future__ import annotations

import builtins
import io
import pickle
from typing import Any, Callable, Mapping

import numpy as np

from msjax.errors import DataError


def _latin1_bytes(text, encoding="latin1"):
    """Python 3's protocol-2 pickles write a bytes object as ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is read only for latin1 bytes")
    return text.encode("latin1")


def _plain_dtype(spec, align=False, copy=False):
    """numpy.dtype for numeric types only: an object dtype would let the pickle's own objects
    into an array."""
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} holds Python objects")
    return dtype


class _NdarrayName:
    """What the name numpy.ndarray resolves to: an argument of ``_reconstruct`` only, not the
    class (whose constructor a pickle could call with an object dtype)."""


def _ndarray_reconstruct(cls, shape, dtype):
    """numpy's ``_reconstruct`` (how an ndarray is pickled) for a plain ndarray only."""
    if cls is not _NdarrayName:
        raise pickle.UnpicklingError("only plain numpy arrays are read")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


# Plain builtins that protocol-2 pickles reach by name; none of them runs anything.
BUILTINS = {("builtins", n): getattr(builtins, n)
            for n in ("set", "frozenset", "bytearray", "complex", "slice", "range")}
BUILTINS |= {("__builtin__", n): f for (_, n), f in BUILTINS.items()}  # Python 2's pickles
BUILTINS[("_codecs", "encode")] = _latin1_bytes

# What a pickled numpy array names (numpy 1 and numpy 2 module paths; Python 2's too).
NUMPY = {
    **{(m, "_reconstruct"): _ndarray_reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _plain_dtype,
}


class _Restricted(pickle.Unpickler):
    def __init__(self, file, allowed: Mapping, persistent: Callable | None, **kw):
        super().__init__(file, **kw)
        self._allowed, self._persistent = allowed, persistent

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError(f"persistent id {pid!r} in a plain pickle")
        return self._persistent(pid)


class _Refused(pickle.UnpicklingError):
    """A global outside the table (kept apart from damaged-file errors for the message)."""


def load(data: bytes | io.IOBase, what: str, allowed: Mapping, *, persistent: Callable | None
         = None, encoding: str = "ASCII", fix: str = "") -> Any:
    """The object pickled in ``data`` (bytes or a binary file), building only ``allowed``'s
    globals ((module, name) -> the function used in its place). ``what`` names the file in
    errors; ``fix`` ends a damaged file's error; ``persistent`` resolves persistent ids (torch's
    storages); ``encoding``: how Python 2 strings are read ('bytes' keeps them bytes)."""
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _Restricted(file, allowed, persistent, encoding=encoding).load()
    except _Refused as e:
        raise DataError(f"{what} names the Python global {e}, which msjax does not load: it "
                        "reads tensors, arrays and plain containers only, and never runs code "
                        "from a data file; re-save the file with plain data") from None
    except DataError:
        raise
    except Exception as e:  # pickle raises several types for damaged data
        raise DataError(f"{what} cannot be read as a pickle ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}){'; ' + fix if fix else ''}"
                        ) from None
