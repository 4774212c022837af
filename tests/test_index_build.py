"""Indexing a photo folder (selconv.index.build): walking, chunked encoding into shards, resume after kill -9,
incremental add, Dask; and `selconv fit / index / search` with their HTML page (rendered in headless Chromium)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin

from selconv import cli
from selconv.index import ImageIndex, load_index
from selconv.index.build import (
    CollectionError,
    encode_images,
    encoder_fingerprint,
    fit_encoder,
    index_folder,
    list_photos,
    load_encoder,
    sample_photos,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _tiny_extractor(**kwargs):
    """The real ConvFeatureExtractor with random AlexNet weights at 96 px: a 2 x 3 pool5 grid, fast."""
    from selconv.extraction.extractor import ConvFeatureExtractor  # not the name tests patch

    kwargs.update(backbone="alexnet", layers=None, weights=None, max_size=96, n_workers=0, device="cpu")
    return ConvFeatureExtractor(**kwargs)


def _write_photos(folder: Path, names, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = [(64, 48), (48, 64), (64, 64)][rng.integers(3)]
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return folder


def _fit_tiny(images, n_bits=None):
    from selconv.pipelines import make_paper_pipeline

    encoder = make_paper_pipeline(
        512, extractor=_tiny_extractor(), mask="none", n_bits=n_bits, undetermined="drop"
    ).set_params(
        pca__n_components=4, encode__embedding__n_clusters=5, encode__embedding__n_clamped=4, rotate__n_dropped=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the toy learning set is tiny on purpose
        return encoder.fit([str(p) for p in images])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 photos in nested folders, a text file and an unreadable .jpg."""
    root = tmp_path_factory.mktemp("photos")
    _write_photos(root, [f"a/img{i:02d}.png" for i in range(6)] + [f"b/c/img{i:02d}.jpg" for i in range(6, 12)])
    (root / "notes.txt").write_text("not a photo")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="module")
def encoder(photos):
    return _fit_tiny(sorted((photos / "a").glob("*.png")))


# ------------------------------------------------------------------------------------------------ photos


def test_list_photos_walks_recursively_in_sorted_order(photos, tmp_path):
    found = list_photos(photos)
    relative = [Path(p).relative_to(photos).as_posix() for p in found]
    assert relative == sorted(relative) and len(relative) == 13  # 12 photos + the broken .jpg; no .txt
    assert "b/broken.jpg" in relative and all(os.path.isabs(p) for p in found)
    with pytest.raises(CollectionError, match="does not exist"):
        list_photos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(CollectionError, match="no images under"):
        list_photos(tmp_path / "empty")


def test_sample_photos_is_a_seeded_subset_in_order():
    paths = [f"p{i:03d}" for i in range(100)]
    sample = sample_photos(paths, 10, random_state=3)
    assert len(sample) == 10 and sample == sorted(sample) and set(sample) <= set(paths)
    assert sample == sample_photos(paths, 10, random_state=3) != sample_photos(paths, 10, random_state=4)
    assert sample_photos(paths, 500) == paths


# ----------------------------------------------------------------------------------------------- encoding


def test_encode_images_skips_unreadable_files_and_matches_the_pipeline(photos, encoder):
    paths = list_photos(photos)
    chunk = encode_images(encoder, paths)
    readable = [p for p in paths if not p.endswith("broken.jpg")]
    assert chunk.paths == readable
    assert [path for path, _ in chunk.skipped] == [str(photos / "b" / "broken.jpg")]
    assert "broken.jpg" in chunk.skipped[0][1]
    np.testing.assert_array_equal(chunk.descriptors, encoder.transform(readable))
    # The caller's encoder is untouched: it still raises on an unreadable file.
    assert encoder.steps[0][1].on_error == "raise"


def test_encode_images_with_the_extractor_on_cuda_runs_the_stages_as_its_head(photos, encoder, monkeypatch):
    """On a CUDA extractor the stages after it run as its head (TorchEncoder: the maps stay on the GPU); here the
    head is the torch path on the CPU, standing in for CUDA. On the CPU, and for stages TorchEncoder does not run,
    there is no head."""
    import copy

    from selconv.index import photos as photos_module
    from selconv.torch_encoder import TorchEncoder

    extractor, rest = encoder.steps[0][1], encoder[1:]
    assert photos_module.device_head(extractor, rest) is None  # on the CPU: the numpy stages, as before
    on_cuda = copy.copy(extractor)
    on_cuda.device_ = "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no CUDA here: TorchEncoder says it runs on the CPU
        assert photos_module.device_head(on_cuda, rest) is not None
    assert photos_module.device_head(on_cuda, encoder[1:3]) is None  # not a whole paper pipeline
    heads = []

    def cpu_head(extractor, rest):
        heads.append(TorchEncoder(rest, device="torch"))
        return heads[-1].transform

    monkeypatch.setattr(photos_module, "device_head", cpu_head)
    paths = list_photos(photos)
    chunk = encode_images(encoder, paths)
    readable = [p for p in paths if not p.endswith("broken.jpg")]
    assert len(heads) == 1 and chunk.paths == readable and len(chunk.skipped) == 1
    # The torch stages of the host's maps (this toy fit's whitening is too ill-conditioned for float32 torch and
    # numpy to agree closely; on real maps they do: tests/test_torch_encoder.py).
    host = heads[0].transform(extractor.transform(readable))
    np.testing.assert_allclose(chunk.descriptors, host, rtol=1e-5, atol=1e-6)


def test_encoder_fingerprint_follows_the_fitted_state_not_runtime_settings(photos, encoder):
    import pickle

    fingerprint = encoder_fingerprint(encoder)
    moved = pickle.loads(pickle.dumps(encoder)).set_params(extract__n_workers=3, extract__batch_size=2)
    assert encoder_fingerprint(moved) == fingerprint
    refitted = _fit_tiny(sorted((photos / "b" / "c").glob("*.jpg")))
    assert encoder_fingerprint(refitted) != fingerprint
    assert encoder_fingerprint(pickle.loads(pickle.dumps(encoder)).set_params(power__alpha=0.3)) != fingerprint
    with pytest.raises(CollectionError, match="ConvFeatureExtractor"):
        encoder_fingerprint(encoder[1:])


def test_image_index_add_gives_ids_and_paths_to_the_images_kept(photos, encoder, monkeypatch):
    """An encoder whose extractor skips: ImageIndex.add aligns the given ids and the paths with the images kept."""
    monkeypatch.setattr(encoder.steps[0][1], "on_error", "skip")  # the module's encoder, restored after the test
    images = [str(path) for path in sorted((photos / "a").glob("*.png"))[:3]]
    broken = str(photos / "b" / "broken.jpg")
    index = ImageIndex(encoder)
    ids = index.add([images[0], broken, images[1], images[2]], ids=[10, 11, 12, 13])
    assert ids.tolist() == [10, 12, 13] and index.paths == images
    assert index.search_descriptors(encoder.transform(images[1:]), k=1).ids[:, 0].tolist() == [12, 13]


# ----------------------------------------------------------------------------------------------- fitting


@pytest.fixture
def tiny_presets(monkeypatch):
    """Paper presets shrunk to toy sizes; fit_encoder (also as the command line calls it) on the tiny AlexNet."""
    from selconv import pipelines
    from selconv.index import build

    monkeypatch.setattr(pipelines, "PAPER_SETTINGS", {**pipelines.PAPER_SETTINGS, 512: (8, 6)})
    monkeypatch.setattr(pipelines, "_PAPER_N_DROPPED", 40)  # 8 * 6 - 40 = 8-D output
    real = build.fit_encoder

    def tiny_fit(images, **kwargs):
        model = {key: kwargs[key] for key in ("precision", "decode") if key in kwargs}
        kwargs.setdefault("extractor", _tiny_extractor(**model))
        return real(images, **kwargs)

    monkeypatch.setattr(build, "fit_encoder", tiny_fit)
    return tiny_fit


def test_fit_encoder_reports_images_against_dimension(photos, tiny_presets):
    fit_encoder = tiny_presets
    images = list_photos(photos)
    # Fewer images than rotated dimensions (12 for 8 x 6 = 48): the rotation is skipped, said plainly, first.
    report = fit_encoder(images, progress=False)
    assert (report.n_images, report.dimension, report.n_bits) == (12, 48, None)
    assert [p for p, _ in report.skipped] == [str(photos / "b" / "broken.jpg")]
    assert "12 learning images determine at most 11 of the 48 directions" in report.warnings[0]
    assert report.encoder.named_steps["rotate"].rotated_ is False
    assert report.encoder.transform(images[:2]).shape == (2, 48)
    assert report.encoder.steps[0][1].on_error == "raise"  # a saved encoder is loud about a bad query


def test_fit_encoder_runs_with_settings_once(photos, tiny_presets, monkeypatch):
    """``settings`` are the fit's extraction's only: the encoder that is saved keeps its own."""
    from selconv.extraction.extractor import ConvFeatureExtractor

    runs, real_run_with = [], ConvFeatureExtractor.run_with

    def run_with(self, **settings):
        runs.append(settings)
        return real_run_with(self, **settings)

    monkeypatch.setattr(ConvFeatureExtractor, "run_with", run_with)
    report = tiny_presets(list_photos(photos), settings={"pad_to_multiple": 32, "batch_size": 4}, progress=False)
    assert runs == [{"pad_to_multiple": 32, "batch_size": 4, "on_error": "skip", "progress": False}]
    saved = report.encoder.steps[0][1]
    assert (saved.pad_to_multiple, saved.batch_size, saved.on_error) == (None, 8, "raise")


@pytest.mark.slow
def test_fit_encoder_builds_its_extractor_in_precision_and_decode(photos, tiny_presets):
    """The extractor fit_encoder builds (VGG16, ImageNet weights) takes ``precision`` and ``decode``: it is saved
    with them, so the index and the queries run in them too."""
    report = fit_encoder(
        list_photos(photos), max_size=64, device="cpu", precision="bfloat16", decode="device", progress=False
    )
    extractor = report.encoder.steps[0][1]
    assert (extractor.backbone, extractor.precision, extractor.decode) == ("vgg16", "bfloat16", "device")
    assert report.encoder.transform(list_photos(photos)[:2]).shape == (2, report.dimension)


def test_fit_encoder_checks_bits_before_extracting(photos, tiny_presets):
    fit_encoder = tiny_presets
    images = list_photos(photos)
    with pytest.raises(CollectionError, match="multiple of 8"):
        fit_encoder(images, n_bits=12)
    with pytest.raises(CollectionError, match="needs more than 8 training images"):
        fit_encoder(images[:8], n_bits=8)
    report = fit_encoder(images, n_bits=8, progress=False)
    assert report.encoder.transform(images[:3]).dtype == np.uint8


# ---------------------------------------------------------------------------------------------- indexing


@pytest.fixture
def one_torch_thread():
    """Run the CNN on one thread here, as Dask workers and the killed subprocess do: oneDNN's float sums
    depend on the thread count (pool5 maps differ by ~1e-7 between 1 and 2 threads), so bit-identical indexes
    need equal thread counts."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _saved_files(folder: Path) -> dict:
    """The bytes of an index's data files (faiss index, ids, paths): equal bytes, identical index."""
    from selconv.index._persistence import IDS_FILE, INDEX_FILE, PATHS_FILE

    return {name: (folder / name).read_bytes() for name in (INDEX_FILE, IDS_FILE, PATHS_FILE)}


@pytest.mark.slow
def test_index_folder_indexes_readable_photos_in_path_order(photos, encoder, tmp_path):
    report = index_folder(photos, encoder, tmp_path / "index", chunk_size=5, progress=False)
    readable = [p for p in list_photos(photos) if not p.endswith("broken.jpg")]
    assert (report.n_found, report.n_already, report.n_added, report.n_chunks) == (13, 0, 12, 3)
    assert [p for p, _ in report.skipped] == [str(photos / "b" / "broken.jpg")]
    index = load_index(tmp_path / "index")
    assert index.paths == readable and index.ids.tolist() == list(range(12))
    assert not (tmp_path / "index.shards").exists()  # the work folder goes once the index is saved
    # Each photo is its own nearest neighbour.
    result = index.search_descriptors(encoder.transform(readable), k=1)
    assert result.ids[:, 0].tolist() == list(range(12))


def test_index_settings_are_for_the_run_only(photos, encoder, tmp_path):
    """index_folder's ``settings`` (padded batches of 4 in two threads here) give the same descriptors; the
    encoder saved in the index keeps its own settings."""
    index_folder(photos, encoder, tmp_path / "index", progress=False, settings={"pad_to_multiple": 32, "batch_size": 4})
    index = load_index(tmp_path / "index")
    extractor = index.encoder.steps[0][1]
    assert (extractor.pad_to_multiple, extractor.batch_size) == (None, 8)
    expected = encoder.transform(index.paths)
    result = index.search_descriptors(expected, k=1)
    assert result.ids[:, 0].tolist() == list(range(len(index.paths)))
    # Inner products of the stored descriptors with the unpadded ones: their squared norms, to float rounding.
    np.testing.assert_allclose(result.scores[:, 0], (expected * expected).sum(1), rtol=1e-4)


def test_rerun_adds_only_new_photos(photos, encoder, tmp_path, monkeypatch):
    from selconv.index import build

    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    index_folder(folder, encoder, tmp_path / "index", chunk_size=4, progress=False)
    before = _saved_files(tmp_path / "index")
    first = load_index(tmp_path / "index")
    _write_photos(folder, ["a/new1.png", "z/new2.png", "b/c/new0.jpg"], seed=7)
    encoded = []
    real = build.encode_images
    monkeypatch.setattr(
        build, "encode_images", lambda enc, paths, **kw: encoded.extend(paths) or real(enc, paths, **kw)
    )
    report = index_folder(folder, encoder, tmp_path / "index", chunk_size=4, progress=False)
    new = sorted(str(folder / name) for name in ("a/new1.png", "z/new2.png", "b/c/new0.jpg"))
    assert sorted(encoded) == sorted(new + [str(folder / "b" / "broken.jpg")])  # unreadable files are retried
    assert (report.n_found, report.n_already, report.n_added) == (16, 12, 3)
    index = load_index(tmp_path / "index")
    assert index.paths[:12] == first.paths and sorted(index.paths[12:]) == new
    assert index.ids.tolist() == list(range(15))
    np.testing.assert_array_equal(
        index.search_descriptors(encoder.transform(new), k=1).ids[:, 0], [12 + index.paths[12:].index(p) for p in new]
    )
    # Nothing new: nothing encoded, the index files untouched.
    encoded.clear()
    again = index_folder(folder, encoder, tmp_path / "index", chunk_size=4, progress=False)
    assert again.n_added == 0 and encoded == [str(folder / "b" / "broken.jpg")]
    assert _saved_files(tmp_path / "index") != before  # (the 3 new photos are in)
    assert _saved_files(tmp_path / "index") == _saved_files(tmp_path / "index")


@pytest.mark.slow
def test_an_existing_index_refuses_another_encoder(photos, encoder, tmp_path):
    index_folder(photos / "a", encoder, tmp_path / "index", progress=False)
    other = _fit_tiny(sorted((photos / "b" / "c").glob("*.jpg")))
    with pytest.raises(CollectionError, match="another encoder"):
        index_folder(photos, other, tmp_path / "index", progress=False)
    descriptors_only = ImageIndex()
    descriptors_only.add_descriptors(np.eye(3, dtype=np.float32))
    descriptors_only.save(tmp_path / "plain")
    with pytest.raises(CollectionError, match="without an encoder"):
        index_folder(photos, encoder, tmp_path / "plain", progress=False)


@pytest.mark.slow
def test_resume_reuses_shards_and_ignores_stale_ones(photos, encoder, tmp_path, monkeypatch):
    from selconv.index import build

    reference = index_folder(photos, encoder, tmp_path / "reference", chunk_size=3, progress=False)
    # An interrupted run: the third chunk dies after two shards were written.
    real = build.encode_images
    calls = []

    def dies_on_third_chunk(enc, paths, **kwargs):
        calls.append(paths)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(enc, paths, **kwargs)

    monkeypatch.setattr(build, "encode_images", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        index_folder(photos, encoder, tmp_path / "index", chunk_size=3, progress=False)
    shards = sorted((tmp_path / "index.shards").glob("*.npz"))
    assert len(shards) == 2 and not (tmp_path / "index").exists()
    (tmp_path / "index.shards" / "0123.npz").write_bytes(b"a stale or damaged shard")  # never read as a chunk
    calls.clear()
    monkeypatch.setattr(build, "encode_images", lambda enc, paths, **kw: calls.append(paths) or real(enc, paths, **kw))
    report = index_folder(photos, encoder, tmp_path / "index", chunk_size=3, progress=False)
    assert report.n_resumed == 2 and len(calls) == report.n_chunks - 2
    assert _saved_files(tmp_path / "index") == _saved_files(reference.path)


@pytest.mark.slow
def test_index_killed_with_sigkill_resumes_to_an_identical_index(photos, encoder, tmp_path, one_torch_thread):
    """`selconv index` in a subprocess, SIGKILLed once shards exist; the rerun ends byte-identical."""
    from selconv.index.build import save_encoder

    save_encoder(encoder, tmp_path / "tiny.encoder")
    reference = index_folder(photos, encoder, tmp_path / "reference", chunk_size=1, progress=False)
    argv = [
        "index",
        str(photos),
        "--encoder",
        str(tmp_path / "tiny.encoder"),
        "--out",
        str(tmp_path / "index"),
        "--chunk-size",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "selconv", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    shards = tmp_path / "index.shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    n_written = len(list(shards.glob("*.npz")))
    assert process.returncode == -signal.SIGKILL and 2 <= n_written < 13, "not killed mid-run"
    assert not (tmp_path / "index").exists()
    assert cli.main(argv) == 0
    assert _saved_files(tmp_path / "index") == _saved_files(reference.path)
    assert not shards.exists()


# ------------------------------------------------------------------------------------------------- Dask


class _DiesOnce(TransformerMixin, BaseEstimator):
    """A last pipeline step that kills its worker process the first time any worker runs it."""

    def __init__(self, marker):
        self.marker = marker

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def transform(self, X):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return X
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def dask_client():
    from dask import distributed  # a test dependency: a broken install fails, it does not skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster:
            with distributed.Client(cluster) as client:
                yield client


@pytest.mark.slow
def test_dask_index_equals_one_process(photos, encoder, dask_client, tmp_path, one_torch_thread):
    local = index_folder(photos, encoder, tmp_path / "local", chunk_size=3, progress=False)
    remote = index_folder(photos, encoder, tmp_path / "dask", chunk_size=3, client=dask_client, progress=False)
    assert _saved_files(remote.path) == _saved_files(local.path)
    assert remote.skipped == local.skipped and remote.n_added == 12


@pytest.mark.slow
def test_dask_worker_killed_mid_run_is_retried(photos, encoder, dask_client, tmp_path, one_torch_thread, monkeypatch):
    from sklearn.pipeline import Pipeline

    from selconv.index import _persistence

    # The saved encoder may hold the test's own step (the index's data files are what is compared).
    monkeypatch.setattr(
        _persistence, "TRUSTED_SELCONV_TYPES", (*_persistence.TRUSTED_SELCONV_TYPES, f"{__name__}._DiesOnce")
    )

    marker = tmp_path / "a worker was killed"
    dying = Pipeline([*encoder.steps, ("die", _DiesOnce(str(marker)))])
    local = index_folder(photos, encoder, tmp_path / "local", chunk_size=3, progress=False)
    remote = index_folder(photos, dying, tmp_path / "dask", chunk_size=3, client=dask_client, progress=False)
    assert marker.exists()
    assert _saved_files(remote.path) == _saved_files(local.path)


def _cancelling_submit(client, monkeypatch, how_many):
    """Make ``client.submit`` cancel its first ``how_many`` tasks, as Dask does with a task it forgot."""
    real_submit, cancelled = client.submit, []

    def submit(*args, **kwargs):
        future = real_submit(*args, **kwargs)
        if len(cancelled) < how_many:
            cancelled.append(future.key)
            client.cancel([future])
        return future

    monkeypatch.setattr(client, "submit", submit)
    return cancelled


@pytest.mark.slow
def test_a_chunk_dask_cancels_is_submitted_again(photos, encoder, dask_client, tmp_path, one_torch_thread, monkeypatch):
    local = index_folder(photos, encoder, tmp_path / "local", chunk_size=3, progress=False)
    cancelled = _cancelling_submit(dask_client, monkeypatch, how_many=2)
    remote = index_folder(photos, encoder, tmp_path / "dask", chunk_size=3, client=dask_client, progress=False)
    assert len(cancelled) == 2
    assert _saved_files(remote.path) == _saved_files(local.path)


@pytest.mark.slow
def test_a_chunk_cancelled_every_time_fails_the_run(
    photos, encoder, dask_client, tmp_path, one_torch_thread, monkeypatch
):
    from distributed.client import FutureCancelledError

    from selconv.index import _cluster

    monkeypatch.setattr(_cluster, "CLUSTER_RETRIES", 1)
    _cancelling_submit(dask_client, monkeypatch, how_many=10**6)
    with pytest.raises(FutureCancelledError):
        index_folder(photos, encoder, tmp_path / "dask", chunk_size=3, client=dask_client, progress=False)


# ---------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def indexed(photos, encoder, tmp_path_factory):
    """An encoder file and an index of ``photos`` made with it."""
    from selconv.index.build import save_encoder

    root = tmp_path_factory.mktemp("indexed")
    save_encoder(encoder, root / "tiny.encoder")
    index_folder(photos, encoder, root / "index", progress=False)
    return root


@pytest.mark.parametrize("command", ["fit", "index", "search"])
def test_every_command_has_help_with_examples(command, capsys):
    assert cli.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"selconv {command} " in text.split("examples:")[1]


@pytest.mark.slow
def test_fit_then_index_then_search_on_the_command_line(photos, tiny_presets, tmp_path, capsys):
    fit = ["fit", str(photos), "--out", str(tmp_path / "enc"), "--sample", "10", "--bits", "8"]
    assert cli.main([*fit, "--precision", "bfloat16", "--batch-size", "4", "--pad-to-multiple", "32"]) == 0
    out = capsys.readouterr().out
    assert "Learning on 10 of the 13 photos" in out and "seeded random sample" in out
    assert "Learned on 10 images for 48-D descriptors, hashed to 8-bit ITQ codes" in out
    assert f"Encoder saved to {tmp_path / 'enc'}" in out
    extractor = load_encoder(tmp_path / "enc").steps[0][1]  # the speed settings were the fit's only
    assert (extractor.precision, extractor.batch_size, extractor.pad_to_multiple) == ("bfloat16", 8, None)
    index = ["index", str(photos), "--encoder", str(tmp_path / "enc"), "--out", str(tmp_path / "idx")]
    assert cli.main([*index, "--batch-size", "4", "--pad-to-multiple", "32", "--cuda-graphs"]) == 0
    out = capsys.readouterr().out
    assert "13 photos under" in out and "12 added" in out and "Skipped 1 unreadable file(s)" in out
    assert "broken.jpg" in out and "12 images, 8 bits per code, Hamming distance" in out
    query = str(photos / "a" / "img03.png")
    assert cli.main(["search", str(tmp_path / "idx"), query, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "path"] and len(lines) == 4
    rows = [line.split() for line in lines[1:]]
    scores = [float(row[1]) for row in rows]
    assert [row[0] for row in rows] == ["1", "2", "3"] and scores == sorted(scores, reverse=True)
    assert all(score <= 0 and score == int(score) for score in scores)  # minus the Hamming distance, in bits


def test_search_prints_ranked_paths_and_scores(photos, indexed, capsys):
    query = str(photos / "b" / "c" / "img07.jpg")
    assert cli.main(["search", str(indexed / "index"), query, "-k", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 12  # fewer photos than k: all of them, no empty rows
    assert rows[0][0] == "1" and rows[0][2] == query and abs(float(rows[0][1]) - 1.0) < 1e-4
    scores = [float(row[1]) for row in rows]
    assert scores == sorted(scores, reverse=True)


def test_search_with_query_expansion(photos, indexed, capsys):
    from selconv.index import load_index
    from selconv.reranking import AlphaQueryExpansion

    query = str(photos / "b" / "c" / "img07.jpg")
    assert cli.main(["search", str(indexed / "index"), query, "-k", "5", "--query-expansion", "3", "--alpha", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    expected = load_index(indexed / "index").search([query], k=5, query_expansion=AlphaQueryExpansion(3, alpha=1.0))
    assert [row[2] for row in rows] == expected.paths[0]
    np.testing.assert_allclose([float(row[1]) for row in rows], expected.scores[0], atol=1e-4)
    plain = load_index(indexed / "index").search([query], k=5)
    assert not np.allclose(expected.scores[0], plain.scores[0])
    assert cli.main(["search", str(indexed / "index"), query, "--query-expansion", "3", "--alpha", "-1"]) == 2
    assert "--alpha" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["index", "{missing}", "--encoder", "{encoder}", "--out", "{tmp}/x"], "does not exist"),
        (["index", "{empty}", "--encoder", "{encoder}", "--out", "{tmp}/x"], "no images under"),
        (["index", "{photos}", "--encoder", "{missing}", "--out", "{tmp}/x"], "encoder file"),
        (["index", "{photos}", "--encoder", "{text}", "--out", "{tmp}/x"], "cannot load the encoder"),
        (["index", "{photos}", "--encoder", "{other}", "--out", "{index}"], "another encoder"),
        (["fit", "{missing}", "--out", "{tmp}/e"], "does not exist"),
        (["fit", "{empty}", "--out", "{tmp}/e"], "no images under"),
        (["fit", "{photos}", "--out", "{tmp}/e", "--train-dir", "{empty}"], "no images under"),
        (["search", "{index}", "{missing}"], "is not a file"),
        (["search", "{index}", "{text}"], "cannot read the query"),
        (["search", "{missing}", "{query}"], "does not exist"),
        (["search", "{tmp}", "{query}"], "manifest"),
        (["search", "{index}", "{query}", "--box", "10", "10", "5", "5"], "x1 < x2"),
        (["search", "{index}", "{query}", "--box", "0", "0", "8", "8"], "too small"),
    ],
)
def test_bad_input_is_a_one_line_error_with_status_2(argv, message, photos, indexed, encoder, tmp_path, capsys):
    from selconv.index.build import save_encoder

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    if "{other}" in argv:
        save_encoder(_fit_tiny(sorted((photos / "b" / "c").glob("*.jpg"))), tmp_path / "other.encoder")
    names = dict(
        missing=tmp_path / "missing",
        empty=tmp_path / "empty",
        encoder=indexed / "tiny.encoder",
        photos=photos,
        tmp=tmp_path,
        text=tmp_path / "notes.txt",
        other=tmp_path / "other.encoder",
        index=indexed / "index",
        query=photos / "a" / "img00.png",
    )
    status = cli.main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("selconv: error:") and message in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_positive(k, indexed, photos, capsys):
    assert cli.main(["search", str(indexed / "index"), str(photos / "a" / "img00.png"), "-k", k]) == 2
    assert "positive integer" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- the HTML page

_MARK_LOADED = """<script>window.addEventListener("load", () => {
  for (const image of document.images) image.dataset.loaded = String(image.complete && image.naturalWidth > 0);
});</script></body>"""


def _loaded_flags(page: Path, tmp_path: Path) -> list[str]:
    """Render ``page`` in headless Chromium and return, per <img>, whether it decoded ("true"/"false")."""
    import re

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs headless Chromium (Debian: apt-get install chromium)")
    probe = tmp_path / f"probe-{page.name}"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _MARK_LOADED), encoding="utf-8")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return re.findall(r'data-loaded="(\w+)"', dom)


@pytest.mark.slow
def test_search_page_renders_every_image_in_chromium(photos, indexed, tmp_path, capsys):
    query = photos / "a" / "img02.png"
    page = tmp_path / "results.html"
    assert (
        cli.main(
            [
                "search",
                str(indexed / "index"),
                str(query),
                "--box",
                "2",
                "2",
                "62",
                "46",
                "-k",
                "5",
                "--html",
                str(page),
            ]
        )
        == 0
    )
    assert f"Page: {page}" in capsys.readouterr().out
    html = page.read_text()
    assert "box 2 2 62 46" in html and html.count("data:image/jpeg;base64,") == 6 and "src='http" not in html
    assert _loaded_flags(page, tmp_path) == ["true"] * 6
    # The check can fail: a damaged thumbnail is reported as not loaded.
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("data:image/jpeg;base64,", "data:image/jpeg;base64,AAAA", 1))
    assert _loaded_flags(broken, tmp_path).count("false") == 1
