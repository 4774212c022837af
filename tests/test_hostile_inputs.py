"""Hostile-input suite (issue 7): fuzzed and truncated images, hostile pickles, hostile archives and cache faults.

Every case must end in a result or the documented error: no crash, no hang, no other exception, no silent
wrong result. Deterministic (seeded) and bounded: a few seconds in all. The counts per class are listed by
``python tests/test_hostile_inputs.py``.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from selconv.datasets.download import CorruptArchiveError, UnsafeArchiveError, extract
from selconv.extraction import CacheRepairedWarning, ConvFeatureExtractor
from selconv.extraction._cache import MapCache

sys.path.insert(0, str(Path(__file__).parent))
import hostile_pickles  # noqa: E402

SAMPLES = sorted(
    (Path(__file__).resolve().parents[1] / "src" / "selconv" / "datasets" / "sample" / "images").glob("*.jpg")
)
N_IMAGE_SOURCES, N_MUTATIONS_PER_IMAGE = 4, 75


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))


# ---------------------------------------------------------------- images


def image_sources() -> list[tuple[str, bytes]]:
    """Four bundled photos re-encoded small (fast to decode): two JPEGs (the OpenCV path), two PNGs (Pillow)."""
    sources = []
    for i, path in enumerate(SAMPLES[:: max(1, len(SAMPLES) // N_IMAGE_SOURCES)][:N_IMAGE_SOURCES]):
        buffer = io.BytesIO()
        fmt = ("JPEG", "PNG")[i % 2]
        Image.open(path).convert("RGB").resize((128, 96)).save(buffer, format=fmt)
        sources.append((f"{path.stem}.{fmt.lower()}", buffer.getvalue()))
    return sources


def mutate(data: bytes, rng: random.Random, kind: int) -> bytes:
    """One of seven mutation kinds: cut, bit flip, random overwrite, zero fill, insertion, deletion, duplication."""
    data = bytearray(data)
    where = rng.randrange(len(data))
    span = rng.randrange(1, 64)
    if kind == 0:
        del data[where:]
    elif kind == 1:
        data[where] ^= 1 << rng.randrange(8)
    elif kind == 2:
        data[where : where + span] = rng.randbytes(len(data[where : where + span]))
    elif kind == 3:
        data[where : where + span] = bytes(len(data[where : where + span]))
    elif kind == 4:
        data[where:where] = rng.randbytes(span)
    elif kind == 5:
        del data[where : where + span]
    else:
        data[where:where] = data[rng.randrange(len(data)) :][:span]
    return bytes(data)


def fuzzed_images(folder: Path) -> list[str]:
    rng = random.Random(7)
    paths = []
    for name, data in image_sources():
        stem, suffix = os.path.splitext(name)
        for i in range(N_MUTATIONS_PER_IMAGE):
            path = folder / f"{stem}_{i:03d}{suffix}"
            path.write_bytes(mutate(data, rng, i % 7))
            paths.append(str(path))
    return paths


def test_fuzzed_and_truncated_images_give_a_map_or_a_reported_skip(tmp_path):
    paths = fuzzed_images(tmp_path)
    assert len(paths) == N_IMAGE_SOURCES * N_MUTATIONS_PER_IMAGE == 300
    extractor = ConvFeatureExtractor(tiny_net, max_size=64, on_error="skip", n_workers=2, progress=False).fit()
    extraction = extractor.extract(paths)
    maps, skipped = extraction.maps, {index for index, _, _ in extraction.skipped}
    assert len(maps) + len(skipped) == len(paths)
    assert [m.source for m in maps] == [p for i, p in enumerate(paths) if i not in skipped]
    for conv_map in maps:
        assert conv_map.features.shape[0] == 4 and np.isfinite(conv_map.features).all()
        assert max(conv_map.image_size) == 64
    for index, name, reason in extraction.skipped:
        assert name == paths[index] and reason.startswith(paths[index] + ":")
    assert 0 < len(skipped) < len(paths)  # both outcomes occur: the mutations are neither all fatal nor all benign


# ---------------------------------------------------------------- pickles

_PICKLE_SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("name", sorted(hostile_pickles.GENERATORS))
def test_hostile_pickles_load_plain_data_or_are_refused(name):
    generate = hostile_pickles.GENERATORS[name]

    @_PICKLE_SETTINGS
    @given(st.randoms(use_true_random=False))
    def check(rng):
        assert hostile_pickles.check_loaded(generate(rng)) in ("plain", "refused")

    check()


@pytest.mark.slow
def test_hostile_pickle_corpus_cannot_crash_the_interpreter():
    """The same generators and the issue's repros in a fresh interpreter, where a segfault would show as a
    non-zero exit instead of killing the test run."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hostile_pickles as h; "
        "print(sorted(h.run_corpus(11, 500).items()))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(eval(result.stdout))  # noqa: S307 (our own subprocess's repr of a list of tuples)
    assert sum(counts.values()) == 4 + 3 * 500 and counts["issue repros", "refused"] == 4


# ---------------------------------------------------------------- archives

_ARCHIVE_ERRORS = (UnsafeArchiveError, CorruptArchiveError)  # nothing else may escape
TRAVERSALS = [
    "../x",
    "../../x",
    "/tmp/abs_x",
    "a/../../x",
    "a/b/../../../x",
    "./../x",
    "C:/x",
    "C:\\x",
    "a\\..\\..\\x",
    "..",
]


def _tar(members, mode="w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            info.size = len(content) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def _zip(members) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content, _ in members:
            zf.writestr(name, content)
    return buffer.getvalue()


def hostile_archives() -> list[tuple[str, bytes, bool, bool]]:
    """(name, bytes, flatten, must_fail) cases."""
    good = [("jpg/a/p1.jpg", b"1" * 300, tarfile.REGTYPE), ("jpg/b/p2.jpg", b"2" * 300, tarfile.REGTYPE)]
    cases = []
    for i, evil in enumerate(TRAVERSALS):
        for flatten in (False, True):
            members = good + [(evil, b"evil", tarfile.REGTYPE)]
            cases.append((f"traversal{i}.tgz", _tar(members), flatten, True))
            cases.append((f"traversal{i}.zip", _zip(members), flatten, True))
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE):
        for flatten in (False, True):
            cases.append((f"special{kind!r}.tar", _tar(good + [("jpg/x", b"", kind)], "w"), flatten, True))
    collide = good + [("jpg/c/p1.jpg", b"3", tarfile.REGTYPE)]
    cases += [
        ("collide.tgz", _tar(collide), True, True),
        ("collide.zip", _zip(collide), True, True),
        ("kept.tgz", _tar(collide), False, False),
        ("kept.zip", _zip(collide), False, False),
    ]
    rng = random.Random(3)
    for suffix, data in (
        (".tgz", _tar(good)),
        (".zip", _zip(good)),
        (".tar", _tar(good, "w")),
        (".tbz", _tar(good, "w:bz2")),
        (".txz", _tar(good, "w:xz")),
    ):
        for i in range(10):
            cases.append((f"cut{i}{suffix}", data[: len(data) * i // 10], False, False))
        for i in range(15):
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            cases.append((f"flip{i}{suffix}", bytes(flipped), False, False))
    return cases


def test_hostile_archives_never_write_outside_the_target(tmp_path):
    cases = hostile_archives()
    outcomes = {"extracted": 0, "refused": 0}
    for i, (name, data, flatten, must_fail) in enumerate(cases):
        sandbox = tmp_path / f"case{i}"
        dest = sandbox / "inner" / "dest"
        dest.mkdir(parents=True)
        archive = sandbox / name
        archive.write_bytes(data)
        try:
            written = extract(archive, dest, flatten=flatten)
        except _ARCHIVE_ERRORS:
            outcomes["refused"] += 1
            assert not any(dest.rglob("*")) or not must_fail, name  # refused before anything was written
        else:
            outcomes["extracted"] += 1
            assert not must_fail, f"{name} was extracted"
            assert all(Path(p).resolve().is_relative_to(dest.resolve()) for p in written)
        stray = [p for p in sandbox.rglob("*") if p != archive and not p.resolve().is_relative_to(sandbox / "inner")]
        assert not stray, (name, stray)
        assert sorted(p.name for p in (sandbox / "inner").iterdir()) == ["dest"], name
    assert outcomes["refused"] >= 52 and outcomes["extracted"] >= 2 and sum(outcomes.values()) == len(cases)


# ---------------------------------------------------------------- cache faults


def _flip_at(fraction):
    def damage(path):
        data = bytearray(path.read_bytes())
        data[min(len(data) - 1, int(len(data) * fraction))] ^= 0x01
        path.write_bytes(bytes(data))

    return damage


def _cut_at(fraction):
    return lambda path: path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _into_folder(path):
    path.unlink()
    (path / "x").mkdir(parents=True)


CACHE_FAULTS = {
    **{f"cut at {f:.2f}": _cut_at(f) for f in (0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)},
    **{f"bit flip at {f:.3f}": _flip_at(f) for f in (0.0, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999)},
    "zero-filled": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "random bytes": lambda p: p.write_bytes(random.Random(0).randbytes(p.stat().st_size)),
    "plain npz": lambda p: p.write_bytes(_npz(features=np.zeros((4, 6, 8), np.float32), image_size=np.array([32, 24]))),
    "appended bytes": lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 10),
    "a folder in its place": _into_folder,
}


@pytest.fixture(scope="module")
def cache_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache-images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    fresh = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=0).fit().transform(paths)
    return paths, fresh


@pytest.mark.parametrize("fault", sorted(CACHE_FAULTS) + ["entries swapped", "stale temporary file", "shard is a file"])
def test_cache_faults_are_recomputed_and_reported(cache_images, tmp_path, fault):
    paths, fresh = cache_images
    cache = tmp_path / "cache"
    extractor = ConvFeatureExtractor(tiny_net, max_size=None, n_workers=0, cache_dir=str(cache)).fit()
    extractor.transform(paths)
    cache_of = MapCache(cache, extractor._output_signature(), dtype=extractor.dtype, keypoints=extractor.keypoints)
    entries = [cache_of.path_of(p, None) for p in paths]
    assert all(entry.is_file() for entry in entries)
    if fault == "entries swapped":  # valid entries under the wrong keys: the key is part of the checksum
        first, second = entries[0].read_bytes(), entries[1].read_bytes()
        entries[0].write_bytes(second)
        entries[1].write_bytes(first)
        expected = 2
    elif fault == "stale temporary file":  # what a crash between write and rename leaves: ignored
        (entries[0].parent / "leftover.tmp").write_bytes(b"partial")
        expected = 0
    elif fault == "shard is a file":  # the entry cannot be written: reported, the run goes on
        for entry in entries:
            entry.unlink()
        shard = entries[0].parent
        for leftover in shard.iterdir():
            leftover.unlink()
        shard.rmdir()
        shard.write_bytes(b"not a folder")
        expected = 1 if entries[1].parent != shard else 2
    else:
        CACHE_FAULTS[fault](entries[0])
        expected = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extraction = extractor.extract(paths)
    for a, b in zip(fresh, extraction.maps):
        np.testing.assert_allclose(b.features, a.features, rtol=1e-5, atol=1e-6)
        assert a.image_size == b.image_size
    repaired = extraction.cache_repaired
    assert len({index for index, _, _ in repaired}) == expected, repaired
    assert (CacheRepairedWarning in [w.category for w in caught]) == (expected > 0)


if __name__ == "__main__":  # the case counts of this suite
    counts = hostile_pickles.run_corpus(11, 500)
    print(f"images: {N_IMAGE_SOURCES * N_MUTATIONS_PER_IMAGE} fuzzed/truncated files")
    print(
        f"pickles: {sum(counts.values())} in the subprocess corpus {sorted(counts.items())}, "
        f"+ {len(hostile_pickles.GENERATORS)} x {_PICKLE_SETTINGS.max_examples} hypothesis examples"
    )
    print(f"archives: {len(hostile_archives())}")
    print(f"cache faults: {len(CACHE_FAULTS) + 3}")
