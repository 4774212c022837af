"""Generators of hostile pickles for the safe unpickler's tests (no pytest, no torch: also run in a subprocess).

Every generator takes a ``random.Random`` and returns bytes. ``check_loaded`` is the property: loading
returns plain data (checked here independently of the unpickler's own check, and every array and
hashable touched the way the issue's segfault did) or raises ``UnsafePickleError``.
"""

from __future__ import annotations

import pickle
import random
import warnings

import numpy as np

from selconv._safe_pickle import UnsafePickleError, safe_load_pickle

_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]


class Reduce:
    """An object that pickles as an arbitrary (callable, args[, state]) triple."""

    def __init__(self, *triple):
        self.triple = triple

    def __reduce__(self):
        return self.triple


# ---------------------------------------------------------------- 1. the issue's repros


def issue_repros() -> list[bytes]:
    dtype = Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
    return [
        pickle.dumps({"easy": Reduce(_FROMBUFFER, (b"A" * 8, dtype, (1,), "C"))}, protocol=2),
        pickle.dumps(Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), dtype, False, b"A" * 8)), protocol=2),
        pickle.dumps(Reduce(bytes, (1 << 30,)), protocol=2),
        b"\x80\x02)" + b"\x85" * 200_000 + b".",  # a tuple nested 200,000 deep
    ]


# ---------------------------------------------------------------- 2. random opcode streams

_GLOBALS = [
    f"c{module}\n{name}\n".encode()
    for module, name in [
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
        ("__builtin__", "bytes"),
        ("__builtin__", "bytearray"),
        ("__builtin__", "complex"),
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("os", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("numpy", "frombuffer"),
        ("builtins", "list"),
    ]
]
_SIMPLE = [bytes([c]) for c in b"()]}tlldaesuRb012N\x88\x89\x8f\x90\x91\x94\x93o\x81\x92\x82iPQ\x97\x98\x85\x86\x87"]
_SPECS = ["O8", "O", "f8", "<f4", "U5", "S3", "V8", "M8", "b1", "i4", "c16", "u1", "S0", "f8x", "|O8", "?"]


def _fragments() -> list[bytes]:
    """Bodies of real pickles (arrays, dtypes, containers) to recombine: most random streams then reach
    the interesting constructors instead of failing at the first opcode."""
    values = [
        np.arange(3, dtype=np.int32),
        np.zeros((2, 2)),
        np.array(["ab"]),
        np.array([True]),
        np.float32(1.5),
        np.dtype("f8"),
        {"a": [1, 2]},
        (1, "x"),
        {1, 2},
        frozenset([3]),
        b"",
        bytearray(b"xy"),
        complex(1, 2),
    ]
    fragments = []
    for value in values:
        for protocol in (2, 5):
            data = pickle.dumps(value, protocol=protocol)
            fragments.append(data[2:-1] if data[:1] == b"\x80" else data[:-1])
    return fragments


_FRAGMENTS = _fragments()


def _token(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.choice(_GLOBALS)
    if kind == 1:
        return rng.choice(_FRAGMENTS)
    if kind == 2:
        spec = rng.choice(_SPECS).encode()
        return b"\x8c" + bytes([len(spec)]) + spec
    if kind == 3:
        return rng.choice([b"K", b"h", b"q"]) + bytes([rng.randrange(256)])
    if kind == 4:
        return rng.choice([b"J", b"j", b"r"]) + rng.randrange(-(2**31), 2**31).to_bytes(4, "little", signed=True)
    if kind == 5:
        data = rng.randbytes(rng.choice([0, 1, 8, 16, 24]))
        return b"C" + bytes([len(data)]) + data
    if kind == 6:
        return b"\x96" + rng.choice([0, 8, 2**20, 2**40, 2**63]).to_bytes(8, "little") + rng.randbytes(8)
    if kind == 7:
        return rng.choice([b"I1\n", b"I-1\n", b"F1.5\n", b"L123\n", b"S'abc'\n", b"Vx\n", b"p0\n", b"g0\n", b"I00\n"])
    if kind == 8:
        return b"\x8a\x01" + bytes([rng.randrange(256)])
    return rng.choice(_SIMPLE)


def opcode_stream(rng: random.Random) -> bytes:
    head = rng.choice([b"\x80\x02", b"\x80\x05", b"\x80\x03", b""])
    return head + b"".join(_token(rng) for _ in range(rng.randrange(1, 24))) + b"."


# ---------------------------------------------------------------- 3. calls on the allow-list with forged arguments


def _forged_dtype(rng):
    spec = rng.choice(_SPECS + ["f8", "i8", "U3"])
    args = (spec, rng.choice([False, True, 0, 1, 2, None]), rng.choice([True, False, 1, "x"]))
    if rng.random() < 0.2:
        return Reduce(np.dtype, args)
    state = (
        rng.choice([3, 3, 3, 4, 2, None, "3"]),
        rng.choice(["<", ">", "|", "=", "|", "x", "", None, 5]),
        rng.choice([None, None, None, (np.dtype("f4"), (2,)), ("f4", 2)]),
        rng.choice([None, None, None, ("a",), ()]),
        rng.choice([None, None, None, {"a": (np.dtype("f4"), 0)}, {}]),
        rng.choice([-1, -1, 0, 1, 4, 8, 20, 2**40, -5, 1.5]),
        rng.choice([-1, 1, 4, 8, 0]),
        rng.choice([0, 0, 1, 8, 16, 63, 127, rng.randrange(2**16)]),
    )
    return Reduce(np.dtype, args, state)


def _dtype_arg(rng):
    return (
        _forged_dtype(rng)
        if rng.random() < 0.7
        else rng.choice([np.dtype("f8"), np.dtype("U2"), np.dtype("O"), np.dtype([("a", "f4")]), "f8", None, 3])
    )


def _shape(rng):
    return rng.choice([(1,), (2,), (0,), (), (2, 3), (-1,), (2**62, 2**62), 3, (1.5,), ("a",), (True,)])


def _raw(rng):
    n = rng.choice([0, 1, 2, 4, 6, 8, 16, 24, 48])
    return rng.choice([rng.randbytes(n), bytearray(rng.randbytes(n)), "A" * n, "\u20ac" * n, [1, 2], None])


def forged_call(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        obj = Reduce(_FROMBUFFER, (_raw(rng), _dtype_arg(rng), _shape(rng), rng.choice(["C", "F", "A", None])))
    elif kind in (1, 2):
        cls = rng.choice([np.ndarray, np.ndarray, np.matrix, list])
        code = rng.choice([b"b", b"b", "b", b"O", 1])
        state = (
            rng.choice([1, 1, 0, 2, None]),
            _shape(rng),
            _dtype_arg(rng),
            rng.choice([False, True, 2, None]),
            _raw(rng),
        )
        if rng.random() < 0.2:
            state = state[1:]
        obj = Reduce(_RECONSTRUCT, (cls, _shape(rng), code), state)
    elif kind == 3:
        obj = Reduce(_SCALAR, (_dtype_arg(rng), _raw(rng)))
    elif kind == 4:
        obj = _forged_dtype(rng)
    elif kind == 5:
        func = rng.choice([set, frozenset, bytes, bytearray, complex])
        arg = rng.choice(
            [
                (),
                ([1, 2],),
                ((1, [2]),),
                (b"ab",),
                ("ab", "latin1"),
                (10**6,),
                ("x", "utf-16"),
                (1.0, 2.0),
                ([[1]],),
                ("1+2j",),
            ]
        )
        obj = Reduce(func, arg)
    elif kind == 6:
        import codecs

        obj = Reduce(
            codecs.encode,
            rng.choice(
                [("ab", "latin1"), ("ab", "zlib"), (b"ab", "latin1"), ("ab", "rot13"), ("\u20ac", "latin1"), ("ab",)]
            ),
        )
    else:
        obj = Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), np.dtype("f8"), False, b"\x00" * 8))
        obj = [obj, Reduce(rng.choice([set, frozenset]), ([obj],))]  # an array as a set member: unhashable
    return pickle.dumps({"x": obj, "y": [1, (2.5, "s")]}, protocol=rng.choice([0, 1, 2, 3, 4, 5]))


# ---------------------------------------------------------------- 4. real pickles, mutated


def _realistic():
    rng = np.random.default_rng(0)
    return {
        "imlist": [f"all_souls_{i:06d}" for i in range(20)],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"bbx": [1.0, 2.0, 30.5, 40.0], "easy": np.array([0, 3]), "hard": [4], "junk": np.array([], np.int64)},
            {"bbx": np.array([5.0, 6.0, 7.0, 8.0]), "easy": [], "hard": np.arange(5), "junk": [6]},
        ],
        "VGG16_0": {
            "Conv_0": {"kernel": rng.standard_normal((3, 3, 3, 2)).astype(np.float32), "bias": np.zeros(2, np.float32)}
        },
    }


_REALISTIC = [pickle.dumps(_realistic(), protocol=p) for p in (0, 2, 4, 5)]


def mutated(rng: random.Random) -> bytes:
    data = bytearray(rng.choice(_REALISTIC))
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        where = rng.randrange(len(data))
        kind = rng.randrange(5)
        if kind == 0:
            data[where] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[where] = rng.randrange(256)
        elif kind == 2:
            del data[where : where + rng.randrange(1, 16)]
        elif kind == 3:
            data[where:where] = data[rng.randrange(len(data)) :][: rng.randrange(1, 32)]
        else:
            del data[where:]
            data += b"."
    return bytes(data)


GENERATORS = {"opcode streams": opcode_stream, "forged calls": forged_call, "mutated real pickles": mutated}


# ---------------------------------------------------------------- the property


def assert_plain(value) -> None:
    """Independent check that `value` is plain data, touching it like a caller would (the issue's segfault
    came from np.asarray(..., dtype=np.int64) on a loaded array)."""
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        kind = type(item)
        if item is None or kind in (bool, int, float, complex, str, bytes, bytearray):
            continue
        if kind is np.ndarray or isinstance(item, np.generic):
            dtype = item.dtype
            assert dtype.kind in "biufcSU" and not dtype.hasobject and dtype.fields is None and dtype.subdtype is None
            assert dtype == np.dtype(dtype.str), dtype
            array = np.asarray(item)
            array.tolist()
            repr(array)
            if dtype.kind in "biufc":
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # casting NaN or a complex number to int64 warns
                    np.asarray(array.real, dtype=np.int64)
                    array.sum()
            continue
        assert kind in (dict, list, tuple, set, frozenset), kind
        if id(item) in seen:
            continue
        seen.add(id(item))
        if kind in (tuple, frozenset):
            try:
                hash(item)
            except TypeError:
                pass  # holds a list or an array: unhashable, as in Python
        pending.extend([*item.keys(), *item.values()] if kind is dict else item)


def check_loaded(data: bytes) -> str:
    """Load `data`; return "plain" or "refused"; any other outcome raises (or crashes the process)."""
    try:
        value = safe_load_pickle(data)
    except UnsafePickleError:
        return "refused"
    assert_plain(value)
    return "plain"


def run_corpus(seed: int, per_generator: int) -> dict:
    """Deterministic corpus: the issue's repros and `per_generator` pickles from each generator."""
    counts = {}
    for data in issue_repros():
        outcome = check_loaded(data)
        assert outcome == "refused"
        counts["issue repros", outcome] = counts.get(("issue repros", outcome), 0) + 1
    for name, generate in GENERATORS.items():
        rng = random.Random(f"{seed}-{name}")
        for _ in range(per_generator):
            outcome = check_loaded(generate(rng))
            counts[name, outcome] = counts.get((name, outcome), 0) + 1
    return counts
