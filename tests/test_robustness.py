"""Regression tests of issue 7 (hardening), one or more per numbered item of its hostile-input report:
the unpickler hole and memory bomb, damaged and stale extractor caches, special files, images too small
for the network, download resume, flattened extraction, the revisited ground truth, late parameters."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError

from selconv import _atomic as atomic_module
from selconv import _safe_pickle as safe_pickle_module
from selconv._safe_pickle import MAX_BUILT_BYTES, UnsafePickleError, safe_load_pickle
from selconv.datasets import load_revisited
from selconv.datasets.base import GroundTruthError
from selconv.datasets.download import UnsafeArchiveError, download, extract
from selconv.extraction import (
    CacheRepairedWarning,
    ConvFeatureExtractor,
    ImageLoadError,
    ImageSkippedWarning,
    WeightsNotFoundError,
)
from selconv.extraction import _cache as cache_module
from selconv.extraction.weights import resolve_weights

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: a crash (segfault) there fails the test instead of killing pytest."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


# ---------------------------------------------------------------- item 1: object dtype from raw bytes


class _ObjectDtype:
    def __reduce__(self):  # numpy.dtype("O8") with a BUILD state whose flags (0) claim it holds no references
        return (np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))


class _PointerArray:
    def __reduce__(self):  # numpy's allow-listed _frombuffer filling that dtype with attacker bytes (pointers)
        return (np.zeros(1).__reduce_ex__(5)[0], (b"A" * 8, _ObjectDtype(), (1,), "C"))


EXPLOIT = pickle.dumps({"easy": _PointerArray()}, protocol=2)


class _ObjectState:
    def __reduce__(self):  # the protocol-2 path: _reconstruct + ndarray BUILD with the forged dtype
        return (np.zeros(1).__reduce__()[0], (np.ndarray, (0,), b"b"), (1, (1,), _ObjectDtype(), False, b"A" * 8))


class _SubarrayDtype:
    def __reduce__(self):  # a float32 dtype whose state claims a subarray
        return (np.dtype, ("f4", False, True), (3, "<", (np.dtype("f4"), (2,)), None, None, -1, -1, 0))


class _SubarrayState:
    def __reduce__(self):
        return (np.zeros(1).__reduce__()[0], (np.ndarray, (0,), b"b"), (1, (1,), _SubarrayDtype(), False, b"A" * 8))


@pytest.mark.parametrize(
    "payload",
    [
        EXPLOIT,
        pickle.dumps([_ObjectState()], protocol=2),
        pickle.dumps([_ObjectState()], protocol=0),
        pickle.dumps(_SubarrayState(), protocol=2),
    ],
    ids=["frombuffer", "build", "proto0", "subarray-state"],
)
def test_unpickler_refuses_object_dtype_built_from_raw_bytes(payload):
    with pytest.raises(UnsafePickleError, match="dtype"):
        safe_load_pickle(payload)


@pytest.mark.parametrize(
    "value",
    [
        np.array([1, None], dtype=object),
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),
        np.zeros(2, dtype=[("a", "f4", (2,))]),
        np.zeros(2, dtype="M8[s]"),
        np.zeros(2, dtype="V4"),
        np.array([b"a"]).astype("S1").view("V1"),
    ],
    ids=["object", "fields", "subarray-field", "datetime", "void", "void-view"],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_unpickler_refuses_every_non_plain_dtype(value, protocol):
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(pickle.dumps({"x": value}, protocol=protocol))


@pytest.mark.slow
def test_revisited_loader_refuses_the_exploit(tmp_path):
    """Run in a subprocess: the unpatched loader segfaults on it."""
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    (root / "gnd_roxford5k.pkl").write_bytes(
        pickle.dumps({"imlist": [], "qimlist": ["q"], "gnd": [{"easy": _PointerArray(), "bbx": None}]}, protocol=2)
    )
    (root / "jpg" / "q.jpg").write_bytes(b"x")
    result = run_isolated(f"""
        import numpy as np
        from selconv._safe_pickle import UnsafePickleError
        from selconv.datasets import load_revisited
        try:
            ds = load_revisited({str(root)!r}, "roxford5k")
            print("accepted", [np.asarray(g["positives"], dtype=np.int64) for g in ds.ground_truth])
        except UnsafePickleError as exc:
            print("refused")
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "refused"


def test_weights_checkpoint_with_the_exploit_is_refused(tmp_path):
    ckpt = tmp_path / "weights.ckpt"
    ckpt.write_bytes(
        pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _PointerArray(), "bias": _PointerArray()}}}, protocol=2)
    )
    # what ConvFeatureExtractor(weights=ckpt).fit() calls, without building VGG16 first
    with pytest.raises(WeightsNotFoundError, match="could not be loaded safely.*refusing dtype"):
        resolve_weights(str(ckpt), torchvision_name="vgg16", lpips_arch="vgg16")


# ---------------------------------------------------------------- item 2: memory bombs


class _BytesBomb:
    def __reduce__(self):
        return (bytes, (1 << 30,))


def _amplifier(n_refs: int) -> bytes:
    """A list of 60,000 distinct ints (180 kB) passed n_refs times to frozenset(): each call builds a 2 MB set."""
    items = b"".join(b"M" + i.to_bytes(2, "little") for i in range(60_000))
    body = b"\x80\x02c__builtin__\nfrozenset\nq\x00]q\x01(" + items + b"e"
    return body + b"(" + b"h\x00h\x01\x85R" * n_refs + b"l."


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(_BytesBomb(), protocol=2),
        b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little") + b".",  # BYTEARRAY8 declaring a terabyte
        _amplifier(300),  # 600 MB of sets from a 182 kB file
    ],
    ids=["bytes-call", "bytearray8", "amplified-references"],
)
def test_unpickler_bounds_what_it_builds(payload, monkeypatch):
    assert MAX_BUILT_BYTES >= 8 * 59_000_000  # generous for the 59 MB VGG16 checkpoint
    monkeypatch.setattr(safe_pickle_module, "MAX_BUILT_BYTES", 32 * 2**20)  # the same check, reached sooner
    start = time.perf_counter()
    with pytest.raises(UnsafePickleError, match="refusing|MAX_BUILT_BYTES"):
        safe_load_pickle(payload)
    assert len(payload) < 200_000 and time.perf_counter() - start < 5


def test_unpickler_refuses_nesting_that_would_overflow_the_c_stack():
    deep_tuple = b"\x80\x02)" + b"\x85" * 1_000_000 + b"."  # hashing it overflows the C stack
    with pytest.raises(UnsafePickleError, match="MAX_DEPTH"):
        safe_load_pickle(deep_tuple)


# ---------------------------------------------------------------- items 3 and 9: the extractor's cache


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))


def _image(path, seed, size=(48, 40), fmt=None):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return str(path)


@pytest.fixture
def cached(tmp_path):
    images = [_image(tmp_path / f"im{i}.png", i) for i in range(2)]
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=2, cache_dir=str(tmp_path / "cache")).fit()
    fresh = extractor.transform(images)
    entries = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(entries) == 2
    return extractor, images, fresh, entries


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", [_truncate, _flip, lambda p: p.write_bytes(b"")], ids=["truncated", "bit-flipped", "empty"]
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_damaged_cache_entry_is_recomputed_and_reported(cached, damage, on_error):
    extractor, images, fresh, entries = cached
    damage(entries[0])
    extractor.set_params(on_error=on_error)
    with pytest.warns(CacheRepairedWarning, match="1 cache entries"):
        extraction = extractor.extract(images)
    for a, b in zip(fresh, extraction.maps):  # recomputed alone instead of in a batch of two: equal to float rounding
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    repaired = extraction.cache_repaired
    assert len(repaired) == 1 and str(entries[0]) in repaired[0].reason and extraction.kept == [0, 1]
    assert extractor.extract(images).cache_repaired == []  # the entry was rewritten


def test_cache_writes_are_fsynced_before_the_rename(cached, monkeypatch):
    extractor, images, _, entries = cached
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(atomic_module.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    entries[0].unlink()
    extractor.set_params(n_workers=0).transform(images)
    assert events == ["fsync", "replace"]  # the data is on disk before the rename makes the entry visible


def test_cache_reads_do_not_parse_python_literals(cached, monkeypatch):
    """CPython < 3.11.8 shares ast's recursion counter between threads (gh-106905): concurrent np.load header
    parses in the worker threads failed with SystemError and valid entries were thrown away. Reads must not use
    ast at all: with ast.literal_eval broken, every entry is still a hit."""
    import ast

    extractor, images, fresh, _ = cached

    def broken(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=39, after=35)")

    monkeypatch.setattr(ast, "literal_eval", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairedWarning)
        extraction = extractor.extract(images)
    assert extraction.cache_repaired == []
    for a, b in zip(fresh, extraction.maps):
        np.testing.assert_array_equal(a.features, b.features)
        assert a.image_size == b.image_size


@pytest.mark.parametrize(
    "header, tail",
    [
        (b"not json", b""),
        (b'[["features", "|O", [1]]]', b"\x00" * 8),  # object dtype: pointers
        (b'[["features", "<f4", [1, 2]]]', b"\x00" * 7),  # runs past the end
        (b'[["features", "<f4", [1]]]', b"\x00" * 5),  # bytes left over
        (b'[["features", "<f4", [-1]]]', b""),
        (b'{"features": 1}', b""),
        (b'[["features", {"names": ["a"], "formats": ["<f4"]}, [1]]]', b"\x00" * 4),  # a structured dtype
    ],
)
def test_cache_payload_parser_refuses_anything_but_plain_arrays(header, tail):
    with pytest.raises(ValueError, match="cannot be read"):
        cache_module.unpack_arrays(len(header).to_bytes(4, "little") + header + tail)


def test_cache_payload_round_trips():
    arrays = {"features": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "image_size": np.array([5, 7])}
    back = cache_module.unpack_arrays(cache_module.pack_arrays(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype and back[name].flags.writeable


def test_cache_entry_bytes_follow_the_documented_layout(tmp_path):
    """Format 2, written by hand: magic, SHA-256 of (file stem + payload), payload = 4-byte little-endian header
    length, JSON header [name, dtype, shape], raw C-order arrays. Existing caches must keep loading."""
    import json

    from selconv.conv_map import ConvMap

    features = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    keypoints = np.array([[1.5, 2.5]], dtype=np.float32)
    header = json.dumps([["features", "<f4", [2, 3, 4]], ["image_size", "<i8", [2]], ["keypoints", "<f4", [1, 2]]])
    size = np.array([40, 30], dtype=np.int64)
    payload = len(header).to_bytes(4, "little") + header.encode() + features.tobytes() + size.tobytes()
    payload += keypoints.tobytes()
    path = tmp_path / "ab" / ("ab" + "0" * 62 + ".map")
    entry = b"selconv-map2\x00" + hashlib.sha256(path.stem.encode() + payload).digest() + payload
    cache = cache_module.MapCache(tmp_path, "signature", dtype="float32", keypoints="sift")
    assert cache.write(path, ConvMap(features, image_size=(40, 30), keypoints=keypoints, source="x.jpg")) is None
    assert path.read_bytes() == entry
    conv_map, problem = cache.read(path, "x.jpg")
    assert problem is None and conv_map.image_size == (40, 30) and conv_map.source == "x.jpg"
    np.testing.assert_array_equal(conv_map.features, features)
    np.testing.assert_array_equal(conv_map.keypoints, keypoints)


def test_cache_notices_a_same_size_same_mtime_replacement(tmp_path):
    path = tmp_path / "photo.ppm"  # PPM: equal dimensions give equal file sizes
    _image(path, 0, fmt="PPM")
    stat = path.stat()
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=0, cache_dir=str(tmp_path / "cache")).fit()
    first = extractor.transform([str(path)])[0]
    _image(path, 1, fmt="PPM")  # new bytes, same size, old mtime (as cp -p or rsync -a leave it)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = extractor.transform([str(path)])[0]
    uncached = clone_without_cache(extractor).transform([str(path)])[0]
    assert not np.array_equal(first.features, second.features)
    np.testing.assert_array_equal(second.features, uncached.features)


def clone_without_cache(extractor):
    from sklearn.base import clone

    return clone(extractor).set_params(cache_dir=None).fit()


# ---------------------------------------------------------------- item 5: special files never hang


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_fifo_device_and_folder_are_skipped_without_hanging(tmp_path, cached):
    good = _image(tmp_path / "good.png", 0)
    fifo = tmp_path / "a_fifo.jpg"
    os.mkfifo(fifo)
    inputs = [good, str(fifo), str(tmp_path), os.devnull, good]
    extractor = ConvFeatureExtractor(
        tiny_net, max_size=None, n_workers=2, on_error="skip", cache_dir=str(tmp_path / "c") if cached else None
    ).fit()
    outcome = {}

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome["maps"] = extractor.transform(inputs)
            outcome["extraction"] = extractor.extract(inputs)
        outcome["warnings"] = [w.category for w in caught]

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # unblock the reader so that the test process can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=10)
        pytest.fail("transform blocked on a FIFO")
    assert [m.source for m in outcome["maps"]] == [good, good] and ImageSkippedWarning in outcome["warnings"]
    assert outcome["extraction"].kept == [0, 4]
    reasons = {index: reason for index, _, reason in outcome["extraction"].skipped}
    assert sorted(reasons) == [1, 2, 3]
    assert "FIFO" in reasons[1] and "folder" in reasons[2] and "device" in reasons[3]


# ---------------------------------------------------------------- item 8: too small for the network


def test_images_too_small_for_the_network_are_skipped(tmp_path):
    def strided():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.MaxPool2d(32))

    line = tmp_path / "line.png"
    Image.fromarray(np.full((1, 4000, 3), 90, np.uint8)).save(line)
    small = _image(tmp_path / "small.png", 1, size=(20, 15))
    big = _image(tmp_path / "big.png", 2, size=(64, 64))
    inputs = [big, str(line), small, (big, (0, 0, 2, 2)), big]
    strict = ConvFeatureExtractor(strided, max_size=64, upscale=False, n_workers=0).fit()
    with pytest.raises(ImageLoadError, match="too small"):
        strict.transform(inputs)
    lenient = clone_without_cache(strict).set_params(on_error="skip", n_workers=2, batch_size=2)
    with pytest.warns(ImageSkippedWarning, match="3 of 5 images"):
        maps = lenient.transform(inputs)
    extraction = lenient.extract(inputs)
    assert len(maps) == 2 and extraction.kept == [0, 4] and [s.position for s in extraction.skipped] == [1, 2, 3]
    assert all("too small" in skip.reason for skip in extraction.skipped)


# ---------------------------------------------------------------- item 14: late parameters, skipped inputs


def test_parameters_set_after_fit_are_validated_at_transform(tmp_path):
    good = _image(tmp_path / "good.png", 0)
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=0).fit()
    extractor.set_params(on_error="rasie")
    with pytest.raises(InvalidParameterError, match="on_error"):
        extractor.transform([good])


def test_skipped_inputs_are_recorded_and_warned(tmp_path):
    good = _image(tmp_path / "good.png", 0)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=0, on_error="skip").fit()
    with pytest.warns(ImageSkippedWarning, match=r"1 of 3 images.*bad\.jpg"):
        maps = extractor.transform([good, str(bad), good])
    assert len(maps) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageSkippedWarning)  # extract reports in its result, not in a warning
        extraction = extractor.extract([good, str(bad), good])
    assert extraction.kept == [0, 2] and extraction.skipped == [(1, str(bad), extraction.skipped[0].reason)]
    assert "not an image" in extraction.skipped[0].reason
    for a, b in zip(maps, extraction.maps):
        np.testing.assert_array_equal(a.features, b.features)


def test_extraction_calls_leave_the_estimator_unchanged(tmp_path):
    """transform, iter_transform, extract and iter_extract store nothing on the extractor, skips and cache repairs
    included: what a call skipped is in what it returns."""
    good = _image(tmp_path / "good.png", 0)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    inputs = [good, str(bad), good]
    extractor = ConvFeatureExtractor(
        tiny_net, max_size=None, n_workers=2, on_error="skip", cache_dir=str(tmp_path / "cache")
    ).fit()
    before = dict(vars(extractor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)
        extractor.transform(inputs)
        for entry in (tmp_path / "cache").rglob("*.map"):
            entry.write_bytes(b"damaged")
        with pytest.warns(CacheRepairedWarning):
            extraction = extractor.extract(inputs)
        list(extractor.iter_transform(inputs))
        stream = extractor.iter_extract(inputs)
        list(stream)
    assert extraction.skipped and extraction.cache_repaired and stream.skipped == extraction.skipped
    assert vars(extractor).keys() == before.keys()
    for name, value in before.items():
        assert vars(extractor)[name] is value, name


def test_extract_reports_the_positions_of_unequal_inputs(tmp_path):
    """Images of several shapes (batched apart), a box, an array, an unreadable and a missing file: every map
    is the map of the input at its kept position, and every other input is reported at its position."""
    sizes = [(48, 40), (40, 48), (48, 40), (64, 32), (40, 48)]
    files = [_image(tmp_path / f"im{i}.png", i, size=size) for i, size in enumerate(sizes)]
    bad, missing = tmp_path / "bad.jpg", str(tmp_path / "missing.png")
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    array = np.random.default_rng(9).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    inputs = [files[0], str(bad), files[1], (files[2], (4, 4, 40, 36)), array, missing, files[3], files[4]]
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=2, batch_size=2, on_error="skip").fit()
    extraction = extractor.extract(inputs)
    assert extraction.kept == [0, 2, 3, 4, 6, 7] and len(extraction.maps) == 6
    assert [(skip.position, skip.name) for skip in extraction.skipped] == [(1, str(bad)), (5, missing)]
    stream = extractor.iter_extract(iter(inputs))
    assert [position for position, _ in stream] == extraction.kept and stream.skipped == extraction.skipped
    extractor.set_params(batch_size=1, n_workers=0)
    for position, conv_map in zip(extraction.kept, extraction.maps):
        alone = extractor.transform([inputs[position]])[0]
        np.testing.assert_allclose(conv_map.features, alone.features, rtol=1e-5, atol=1e-6)
        assert conv_map.image_size == alone.image_size
    extractor.set_params(on_error="raise")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        extractor.extract(inputs)
    assert extractor.extract([files[0], files[3]]).kept == [0, 1]


# ---------------------------------------------------------------- item 10: download resume


class _Server:
    """A fake HTTP server honouring Range requests, answering 416 past the end, like a real one."""

    def __init__(self, data):
        self.data, self.ranges = data, []

    def __call__(self, request, timeout=None):
        header = request.headers.get("Range")
        self.ranges.append(header)
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        if start >= len(self.data) and header:
            raise urllib.error.HTTPError(request.full_url, 416, "Range Not Satisfiable", {}, None)
        body = io.BytesIO(self.data[start:])
        body.status, body.headers = (206 if header else 200), {"Content-Length": str(len(self.data) - start)}
        body.getcode = lambda: body.status
        return body


def test_download_does_not_resume_a_part_it_cannot_verify(tmp_path, monkeypatch):
    data = bytes(range(256)) * 40
    server = _Server(data)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes of another version")
    assert download("https://example.invalid/f.bin", tmp_path / "f.bin").read_bytes() == data
    assert server.ranges == [None]


@pytest.mark.parametrize("stale", [b"x" * 20_000, b"y" * 5_000], ids=["oversized-416", "wrong-prefix"])
def test_download_with_checksum_restarts_a_wrong_part(tmp_path, monkeypatch, stale):
    data = bytes(range(256)) * 40  # 10,240 bytes
    server = _Server(data)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    (tmp_path / "f.bin.part").write_bytes(stale)
    dest = download("https://example.invalid/f.bin", tmp_path / "f.bin", sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data and server.ranges == [f"bytes={len(stale)}-", None]


def test_download_without_checksum_never_takes_416_as_complete(tmp_path, monkeypatch):
    data = b"fresh content"
    monkeypatch.setattr(urllib.request, "urlopen", _Server(data))
    (tmp_path / "f.bin.part").write_bytes(b"z" * 100)
    assert download("https://example.invalid/f.bin", tmp_path / "f.bin").read_bytes() == data


# ---------------------------------------------------------------- item 11: flattened extraction


def test_flattened_extraction_refuses_same_named_files(tmp_path):
    tgz = tmp_path / "a.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name, content in [("paris/defense/p.jpg", b"1"), ("paris/eiffel/p.jpg", b"2")]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("a/p.jpg", b"1")
        zf.writestr("b/p.jpg", b"2")
    for archive in (tgz, zipped):
        with pytest.raises(UnsafeArchiveError, match="would both be extracted"):
            extract(archive, tmp_path / "flat", flatten=True)
        assert not (tmp_path / "flat" / "p.jpg").exists()
        assert len(extract(archive, tmp_path / archive.suffix[1:])) == 2  # kept folders: no collision


# ---------------------------------------------------------------- item 13: revisited ground truth


def _revisited(tmp_path, imlist=("a", "b", "c"), gnd=None):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    for name in ("a", "b", "c", "q"):
        (root / "jpg" / f"{name}.jpg").write_bytes(b"x")
    gnd = [{"easy": [0], "hard": [1], "junk": [2], "bbx": [0, 0, 5, 5]}] if gnd is None else gnd
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": list(imlist), "qimlist": ["q"], "gnd": gnd}))
    return root


@pytest.mark.parametrize("name", ["../../outside", "/etc/passwd", "jpg/../../x", "..\\..\\x"])
def test_revisited_names_must_stay_inside_the_root(tmp_path, name):
    (tmp_path / "outside.jpg").write_bytes(b"x")
    with pytest.raises(GroundTruthError, match="relative path inside"):
        load_revisited(_revisited(tmp_path, imlist=("a", name)), "roxford5k")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"easy": np.array([0.9, 1.7])}, "integer"),
        ({"easy": [0], "junk": [3]}, "outside the 3 database images"),
        ({"hard": [-1]}, "outside"),
        ("not a dict", "expected a dict"),
        ({"easy": [0], "bbx": [1, 2, 3]}, "4 finite numbers"),
    ],
)
def test_revisited_entries_are_validated(tmp_path, entry, message):
    with pytest.raises(GroundTruthError, match=message) as info:
        load_revisited(_revisited(tmp_path, gnd=[entry]), "roxford5k")
    assert "gnd[0]" in str(info.value)
