"""The numpy side of the safe unpickler (:mod:`selconv._safe_pickle`): dtypes, shapes and raw data checked
before numpy sees them.

A dtype named in a pickle becomes a :class:`DtypeSpec` (a type string, then byte order and size from its
BUILD), resolved to a fresh plain dtype (kinds ``b i u f c S U``; no object, fields, subarrays, datetimes)
only when an array or scalar uses it; an array's shape and the length of its raw data are checked against
that dtype before numpy's own code builds it. :class:`NumpyStandIns` holds the unpickler's stand-ins for
numpy's ``dtype``, ``_reconstruct``, ``_frombuffer`` and ``scalar``.
"""

from __future__ import annotations

import math
import pickle
import re

import numpy as np

_PLAIN_KINDS = frozenset("biufcSU")
_DTYPE_SPEC = re.compile(r"([biufcSU])([0-9]{1,9})")
NDARRAY = object()  # what the name numpy.ndarray resolves to: a marker _reconstruct accepts, never the class
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


class UnsafePickleError(pickle.UnpicklingError):
    """The file is not a pickle of plain data: it asks for another object, breaks a size limit or is malformed."""


class DtypeSpec:
    """What a pickle says about a dtype (type string, then byte order and size from BUILD), resolved to a
    fresh plain dtype when an array or scalar uses it. Never returned to the caller."""

    __slots__ = ("kind", "count", "byteorder", "elsize")

    def __init__(self, kind, count):
        self.kind, self.count, self.byteorder, self.elsize = kind, count, "=", -1

    def build(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags).
        if not (type(state) is tuple and len(state) == 8 and type(state[0]) is int and state[0] == 3):
            raise UnsafePickleError(f"refusing dtype state {short_repr(state)}: only plain dtypes are allowed")
        _, byteorder, subarray, names, fields, elsize, _alignment, _flags = state
        if type(byteorder) is not str or len(byteorder) != 1 or byteorder not in "<>|=":
            raise UnsafePickleError(f"refusing dtype byte order {short_repr(byteorder)}")
        if any(part is not None for part in (subarray, names, fields)):
            raise UnsafePickleError("refusing a dtype with fields or subarrays: only plain dtypes are allowed")
        if not isinstance(elsize, int) or isinstance(elsize, bool):
            raise UnsafePickleError(f"refusing dtype element size {short_repr(elsize)}")
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
        check_plain_dtype(dtype)
        return dtype


def check_plain_dtype(dtype) -> None:
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


def short_repr(value) -> str:
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
        raise UnsafePickleError(f"refusing array shape {short_repr(value)}")
    return value


def raw_bytes(value):
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


def is_latin1(encoding) -> bool:
    return isinstance(encoding, str) and encoding.lower() in _LATIN1


def _is_flag(value) -> bool:
    return type(value) in (bool, int) and value in (0, 1)


class NumpyStandIns:
    """The unpickler's checking stand-ins for numpy's constructors, and the BUILD of the arrays they make.

    A mixin of :class:`selconv._safe_pickle._Unpickler`, which provides ``_charge(n_bytes)`` (the build budget)
    and ``_pending`` (arrays made by ``_reconstruct``, awaiting their BUILD).
    """

    def _make_dtype(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        match = _DTYPE_SPEC.fullmatch(spec) if isinstance(spec, str) else None
        if match is None or not (_is_flag(align) and _is_flag(copy)):
            raise UnsafePickleError(f"refusing dtype{short_repr((spec, align, copy))}: only plain dtypes are allowed")
        return DtypeSpec(match.group(1), int(match.group(2)))

    def _make_reconstruct(self, cls, shape, typecode):
        if cls is not NDARRAY or type(typecode) not in (bytes, str) or typecode not in (b"b", "b"):
            raise UnsafePickleError(f"refusing _reconstruct{short_repr((cls, shape, typecode))}")
        array = np.ndarray((0,), np.uint8)
        self._pending[id(array)] = array
        return array

    def _make_frombuffer(self, buffer, spec, shape, order):
        if (
            type(buffer) not in (bytes, bytearray)
            or type(spec) is not DtypeSpec
            or type(order) is not str
            or order not in ("C", "F")
        ):
            raise UnsafePickleError(
                f"refusing _frombuffer of {type(buffer).__name__}, {short_repr(spec)}, order {short_repr(order)}"
            )
        dtype, shape = spec.resolve(), _shape(shape)
        _check_data(buffer, dtype, shape)
        self._charge(len(buffer))
        return np.frombuffer(buffer, dtype).reshape(shape, order=order)

    def _make_scalar(self, spec, data=None):
        if not isinstance(spec, DtypeSpec):
            raise UnsafePickleError(f"refusing numpy scalar of {short_repr(spec)}")
        dtype = spec.resolve()
        raw = raw_bytes(data)
        _check_data(raw, dtype, ())
        return np.frombuffer(raw, dtype)[0].copy()

    def _build_array(self, target, state):
        """BUILD of an array made by :meth:`_make_reconstruct`: its state checked, then numpy's own code."""
        # ndarray state: (version, shape, dtype, is_fortran, data); version 0 pickles omit the version.
        if isinstance(state, tuple) and len(state) == 5 and _is_flag(state[0]) and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4 and type(state[1]) is DtypeSpec and _is_flag(state[2])):
            raise UnsafePickleError(f"refusing array state {short_repr(state)}")
        shape, dtype, fortran, raw = _shape(state[0]), state[1].resolve(), bool(state[2]), raw_bytes(state[3])
        _check_data(raw, dtype, shape)
        self._charge(len(raw))
        target.__setstate__((1, shape, dtype, fortran, raw))  # numpy's own code, on a checked plain state
