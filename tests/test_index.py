"""ImageIndex: add / search / remove semantics, approximate kinds, bad input, and the on-disk format."""

from __future__ import annotations

import functools
import importlib
import json
import pickle
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_conv_maps, make_local_sets

import selconv
from selconv.index import ImageIndex, IndexFormatError, SearchResult, load_index, trusted_types
from selconv.pipelines import make_paper_pipeline
from selconv.search import rank
from selconv.utils.estimator_checks import assert_same_output


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n_clusters=20, per_cluster=60, d=32, seed=0, noise=0.05):
    """Easy data for approximate search: tight clusters of unit vectors, queries are noisy database points."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(n_clusters, d, seed + 1)
    x = np.repeat(centres, per_cluster, axis=0) + noise * rng.standard_normal((n_clusters * per_cluster, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    queries = x[::37] + np.float32(noise / 4) * rng.standard_normal((len(x[::37]), d)).astype(np.float32)
    return x, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def codes(n, n_bytes=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, n_bytes), dtype=np.uint8)


@functools.cache
def fitted_pipeline(n_bits=None):
    """The 512 preset shrunk to conftest's toy conv maps (K = 32); shared, never modified."""
    maps = make_conv_maps(n_images=30, random_state=1)
    pipeline = make_paper_pipeline(512, n_bits=n_bits, undetermined="drop")
    pipeline.set_params(
        pca__n_components=8, encode__embedding__n_clusters=5, encode__embedding__n_clamped=8, rotate__n_dropped=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # toy training set: far fewer images than dimensions
        return pipeline.fit(maps)


# ---------------------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("metric", ["ip", "hamming"])
def test_add_search_remove_len(metric):
    data = unit_rows(50, 16) if metric == "ip" else codes(50)
    index = ImageIndex()
    assert len(index) == 0 and index.metric == "auto" and index.dimension is None
    first = index.add_descriptors(data[:30], paths=[f"img{i}.jpg" for i in range(30)])
    second = index.add_descriptors(data[30:])
    assert first.tolist() == list(range(30)) and second.tolist() == list(range(30, 50))
    assert len(index) == 50 and index.metric == metric
    assert index.dimension == (16 if metric == "ip" else 64)
    result = index.search_descriptors(data[[3, 40]], k=5)
    assert isinstance(result, SearchResult)
    assert result.ids.shape == result.scores.shape == (2, 5)
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    assert result.ids[:, 0].tolist() == [3, 40]  # each query finds itself first
    assert result.paths[0][0] == "img3.jpg" and result.paths[1][0] is None
    assert np.all(np.diff(result.scores, axis=1) <= 0)
    assert index.remove([3, 3, 999]) == 1 and len(index) == 49
    assert 3 not in index.search_descriptors(data[3], k=49).ids
    assert index.add_descriptors(data[:1]).tolist() == [50]  # new ids continue after the largest ever given


@pytest.mark.parametrize("metric", ["ip", "hamming"])
def test_flat_top_k_is_the_exact_ranking(metric):
    data = unit_rows(300, 24, seed=3) if metric == "ip" else codes(300, 4, seed=3)
    queries = unit_rows(7, 24, seed=4) if metric == "ip" else codes(7, 4, seed=4)
    index = ImageIndex(metric=metric)
    index.add_descriptors(data)
    result = index.search_descriptors(queries, k=20)
    ranking, scores = rank(queries, data, metric=metric, return_scores=True)
    np.testing.assert_array_equal(result.scores, scores[:, :20])
    # the same items at each score (which of the items tied at the k-th place come back is faiss' choice)
    for row in range(7):
        last = scores[row, 19]
        np.testing.assert_array_equal(result.ids[row][result.scores[row] > last], ranking[row][scores[row] > last][:20])
        ties = result.ids[row][result.scores[row] == last]
        assert np.all(np.diff(ties) > 0)  # equal scores by increasing id


def test_hamming_scores_are_negated_distances():
    database = np.array([[0b0000], [0b0111], [0b0001]], dtype=np.uint8)
    index = ImageIndex()
    index.add_descriptors(database, ids=[10, 20, 30])
    result = index.search_descriptors(np.array([0b0001], dtype=np.uint8), k=3)
    assert result.ids.tolist() == [[30, 10, 20]] and result.scores.tolist() == [[0.0, -1.0, -2.0]]
    assert not np.signbit(result.scores[0, 0])


def test_fewer_than_k_results_are_marked_missing():
    index = ImageIndex()
    index.add_descriptors(unit_rows(3, 4), paths=["a", "b", "c"])
    result = index.search_descriptors(unit_rows(2, 4, seed=1), k=5)
    assert (result.ids[:, 3:] == -1).all() and np.isneginf(result.scores[:, 3:]).all()
    assert result.paths[0][3:] == [None, None] and None not in result.paths[0][:3]


def test_caller_ids_and_their_paths():
    index = ImageIndex()
    index.add_descriptors(unit_rows(4, 8), ids=[40, 7, 1000, 3], paths=["p40", "p7", "p1000", "p3"])
    result = index.search_descriptors(unit_rows(4, 8), k=1)
    assert result.ids[:, 0].tolist() == [40, 7, 1000, 3]
    assert [row[0] for row in result.paths] == ["p40", "p7", "p1000", "p3"]
    assert index.add_descriptors(unit_rows(1, 8, seed=2)).tolist() == [1001]
    with pytest.raises(ValueError, match="id 7 is already in the index"):
        index.add_descriptors(unit_rows(1, 8), ids=[7])
    with pytest.raises(ValueError, match="duplicates"):
        index.add_descriptors(unit_rows(2, 8), ids=[5, 5])
    with pytest.raises(ValueError, match="non-negative"):
        index.add_descriptors(unit_rows(1, 8), ids=[-1])
    with pytest.raises(ValueError, match="2 integers"):
        index.add_descriptors(unit_rows(2, 8), ids=[1])


def test_add_and_search_images_through_the_encoder():
    pipeline = fitted_pipeline()
    maps = make_conv_maps(n_images=12, random_state=2)
    index = ImageIndex(pipeline)
    index.add(maps[:10], ids=np.arange(100, 110))
    result = index.search(maps[2:4], k=3)
    assert result.ids[:, 0].tolist() == [102, 103]
    np.testing.assert_allclose(result.scores[:, 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(index.encode(maps[:2]), pipeline.transform(maps[:2]))


def test_paths_of_added_images(tmp_path):
    from selconv.conv_map import ConvMap

    maps = [ConvMap(m, (64, 48), source=f"photo{i}.jpg") for i, m in enumerate(make_conv_maps(n_images=4))]
    index = ImageIndex(fitted_pipeline())
    index.add(maps)
    assert index.paths == [f"photo{i}.jpg" for i in range(4)]


# ---------------------------------------------------------------------------------------------- approximate kinds
@pytest.mark.parametrize(
    ("kind", "params", "noise", "min_recall"),
    [
        ("ivf", {"nlist": 16, "nprobe": 4}, 0.05, 0.95),
        ("hnsw", {}, 0.05, 0.95),
        # PQ compresses 32 floats to 16 bytes: neighbours must be further apart than its quantisation error.
        ("pq", {"nlist": 8, "nprobe": 8, "m": 16, "nbits": 8}, 0.2, 0.85),
    ],
)
def test_approximate_real_kinds_find_the_exact_neighbours(kind, params, noise, min_recall):
    data, queries = clustered(noise=noise)
    exact = ImageIndex()
    exact.add_descriptors(data)
    index = ImageIndex(kind=kind, index_params=params)
    assert index.is_trained == (kind == "hnsw")
    index.train(data)
    index.add_descriptors(data)
    expected = exact.search_descriptors(queries, k=10).ids
    found = index.search_descriptors(queries, k=10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert recall >= min_recall, recall
    assert (found[:, 0] == expected[:, 0]).mean() >= min_recall


@pytest.mark.parametrize(("kind", "params"), [("ivf", {"nlist": 8, "nprobe": 3}), ("hnsw", {})])
def test_approximate_binary_kinds_find_the_exact_neighbours(kind, params):
    rng = np.random.default_rng(0)
    centres = codes(10, 16, seed=1)
    flips = np.packbits(rng.random((1000, 128)) < 0.03, axis=1)  # ~4 of 128 bits flipped around each centre
    data = np.repeat(centres, 100, axis=0) ^ flips
    queries = data[::50]
    exact = ImageIndex()
    exact.add_descriptors(data)
    index = ImageIndex(kind=kind, index_params=params).train(data)
    index.add_descriptors(data)
    assert index.metric == "hamming"
    found = index.search_descriptors(queries, k=10)
    expected = exact.search_descriptors(queries, k=10)
    # Compared by distance: ids of equal codes may differ. Each query should find itself (distance 0).
    assert (found.scores[:, 0] == 0).mean() >= 0.95
    assert (found.scores == expected.scores).mean() >= 0.95


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_remove_from_approximate_kinds(kind):
    data, queries = clustered(n_clusters=5, per_cluster=40, d=16)
    index = ImageIndex(kind=kind, index_params={"nlist": 4, "nprobe": 4} if kind == "ivf" else None)
    index.train(data).add_descriptors(data)
    removed = np.arange(0, 200, 3)
    assert index.remove(removed) == len(removed) and len(index) == 200 - len(removed)
    found = index.search_descriptors(data, k=5).ids
    assert not np.isin(found, removed).any()
    kept = np.setdiff1d(np.arange(200), removed)
    assert (found[kept, 0] == kept).mean() > 0.95


def test_search_params_can_change_after_building():
    data, queries = clustered()
    index = ImageIndex(kind="ivf", index_params={"nlist": 20, "nprobe": 1}).train(data)
    index.add_descriptors(data)
    index.set_search_params(nprobe=20)
    assert index.index_params["nprobe"] == 20
    exact = ImageIndex()
    exact.add_descriptors(data)
    np.testing.assert_array_equal(
        index.search_descriptors(queries, 5).scores, exact.search_descriptors(queries, 5).scores
    )
    with pytest.raises(ValueError, match="not search parameters"):
        index.set_search_params(nlist=3)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_line_errors():
    index = ImageIndex()
    with pytest.raises(ValueError, match="no metric yet"):
        index.search_descriptors(unit_rows(1, 4), k=1)
    index.add_descriptors(unit_rows(5, 4))
    cases = [
        (lambda: index.search_descriptors(unit_rows(1, 4), k=0), ValueError, "k must be a positive integer"),
        (lambda: index.search_descriptors(unit_rows(1, 4), k=2.5), ValueError, "k must be a positive integer"),
        (lambda: index.search_descriptors(unit_rows(1, 5), k=1), ValueError, "5 floats per row but the index holds 4"),
        (lambda: index.add_descriptors(unit_rows(1, 3)), ValueError, "3 floats per row but the index holds 4"),
        (lambda: index.search_descriptors(codes(1, 4), k=1), TypeError, "uint8 arrays are packed binary codes"),
        (lambda: index.add_descriptors(np.array([["a"] * 4])), TypeError, "real vectors"),
        (lambda: index.add_descriptors(np.array([[0, np.nan, 0, 1]])), ValueError, "row 0 holds NaN"),
        (lambda: index.search_descriptors(np.full((2, 4), np.inf), k=1), ValueError, "row 0 holds NaN or infinity"),
        (lambda: index.add_descriptors(np.zeros((2, 2, 4))), ValueError, "2-D array"),
        (lambda: index.add_descriptors(unit_rows(2, 4), paths=["a"]), ValueError, "paths has 1 entries"),
        (lambda: index.encode(["a.jpg"]), ValueError, "no encoder"),
        (lambda: ImageIndex(kind="annoy"), ValueError, "kind must be one of"),
        (lambda: ImageIndex(metric="l2"), ValueError, "metric must be"),
        (lambda: ImageIndex(kind="pq", metric="hamming"), ValueError, "not available for metric='hamming'"),
        (lambda: ImageIndex(kind="hnsw", index_params={"nprobe": 3}), ValueError, r"\['nprobe'\] do not apply"),
        (lambda: ImageIndex(kind="ivf", index_params={"nlist": 0}), ValueError, "positive integer"),
        (lambda: ImageIndex(kind="pq", index_params={"nbits": 20}), ValueError, "between 1 and 16"),
        (lambda: ImageIndex(kind="ivf").add_descriptors(unit_rows(3, 4)), ValueError, "must be trained before adding"),
        (
            lambda: ImageIndex(kind="ivf", index_params={"nlist": 50}).train(unit_rows(10, 4)),
            ValueError,
            "at least 50 training vectors",
        ),
        (lambda: ImageIndex(kind="pq", index_params={"m": 3}).train(unit_rows(300, 8)), ValueError, "must divide"),
        (
            lambda: ImageIndex(kind="pq", index_params={"m": 2, "nlist": 2}).train(unit_rows(100, 8)),
            ValueError,
            "256 training vectors",
        ),
        (lambda: ImageIndex(metric="hamming").add_descriptors(unit_rows(1, 8)), TypeError, "packed binary codes"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)


def test_encoder_output_that_does_not_fit_the_index():
    index = ImageIndex(fitted_pipeline())
    index.add_descriptors(unit_rows(3, 7))  # 7 floats, the encoder gives 36
    with pytest.raises(ValueError, match="encoder/index mismatch: .* 25 floats per row but the index holds 7"):
        index.search(make_conv_maps(n_images=1), k=1)


def test_training_a_filled_index_is_refused():
    data, _ = clustered(n_clusters=4, per_cluster=20, d=8)
    index = ImageIndex(kind="ivf", index_params={"nlist": 2}).train(data)
    index.add_descriptors(data)
    with pytest.raises(ValueError, match="already holds vectors"):
        index.train(data)


# ---------------------------------------------------------------------------------------------- persistence
def search_saved(folder, queries_file, out_file):
    """Load an index and search it with the queries in ``queries_file`` (also run in a fresh process)."""
    index = load_index(folder)
    queries = dict(np.load(queries_file))
    if index.encoder is not None:
        result = index.search([queries[f"map{i}"] for i in range(len(queries))], k=4)
    else:
        result = index.search_descriptors(queries["queries"], k=4)
    np.savez(out_file, scores=result.scores, ids=result.ids, paths=np.array(result.paths, dtype=str))


@pytest.mark.parametrize(
    ("encoder", "kind", "n_bits", "fresh_process"),
    [
        ("pipeline", "flat", None, False),
        ("pipeline", "flat", 16, True),
        (None, "hnsw", None, True),
        (None, "ivf", 64, False),
        (None, "pq", None, False),
    ],
)
@pytest.mark.slow
def test_save_then_load_in_a_fresh_process_gives_identical_results(tmp_path, encoder, kind, n_bits, fresh_process):
    if encoder == "pipeline":
        pipeline = fitted_pipeline(n_bits)
        maps = make_conv_maps(n_images=12, random_state=3)
        index = ImageIndex(pipeline, kind=kind)
        index.add(maps, ids=np.arange(12) * 7)
        np.savez(tmp_path / "queries.npz", **{f"map{i}": m for i, m in enumerate(maps[:5])})
        expected = index.search(maps[:5], k=4)
    else:
        data = codes(400, n_bits // 8, seed=5) if n_bits else unit_rows(400, 16, seed=5)
        params = {"ivf": {"nlist": 8, "nprobe": 2}, "pq": {"nlist": 4, "m": 4, "nbits": 4}}.get(kind)
        index = ImageIndex(kind=kind, index_params=params).train(data)
        index.add_descriptors(data, paths=[f"dir/é {i}.jpg" for i in range(400)])
        index.remove([1, 2, 3])
        np.savez(tmp_path / "queries.npz", queries=data[:6])
        expected = index.search_descriptors(data[:6], k=4)
    folder = index.save(tmp_path / "index")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", "index.faiss", "ids.npy", "paths.jsonl"] + (["encoder.skops"] if encoder else [])
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    arguments = [str(folder), str(tmp_path / "queries.npz"), str(tmp_path / "out.npz")]
    if fresh_process:
        script = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import test_index; test_index.search_saved(*sys.argv[1:])"
        )
        subprocess.run([sys.executable, "-c", script, *arguments], check=True, capture_output=True, timeout=300)
    else:
        search_saved(*arguments)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["scores"], expected.scores)
    np.testing.assert_array_equal(out["ids"], expected.ids)
    assert out["paths"].tolist() == [[str(p) for p in row] for row in expected.paths]
    loaded = load_index(folder)
    assert (loaded.kind, loaded.metric, loaded.dimension, len(loaded)) == (
        index.kind,
        index.metric,
        index.dimension,
        len(index),
    )
    assert loaded.index_params == index.index_params and loaded.ids.tolist() == index.ids.tolist()


def test_save_replaces_an_index_but_not_other_folders(tmp_path):
    index = ImageIndex()
    index.add_descriptors(unit_rows(5, 4))
    index.save(tmp_path / "index")
    index.add_descriptors(unit_rows(2, 4, seed=1))
    index.save(tmp_path / "index")
    assert len(load_index(tmp_path / "index")) == 7
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a selconv index"):
        index.save(tmp_path / "photos")
    with pytest.raises(ValueError, match="nothing to save"):
        ImageIndex().save(tmp_path / "empty")


@pytest.fixture
def saved_index(tmp_path):
    index = ImageIndex(fitted_pipeline(16))
    index.add(make_conv_maps(n_images=6, random_state=4))
    return index.save(tmp_path / "index")


@pytest.mark.parametrize("name", ["index.faiss", "ids.npy", "paths.jsonl", "encoder.skops"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_file_is_named(saved_index, name, damage):
    path = saved_index / name
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    message = {"flip": "SHA-256 differs", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises(IndexFormatError, match=message) as info:
        load_index(saved_index)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _edit_manifest(folder, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "manifest.json").unlink(), "missing; .* is not a selconv index"),
        (lambda f: _edit_manifest(f, format_version=99), "index format version 99"),
        (lambda f: _edit_manifest(f, format="something else"), "not a selconv index manifest"),
        (lambda f: _edit_manifest(f, count=5), "holds 6 vectors of dimension 16; .*manifest.json says 5"),
        (lambda f: _edit_manifest(f, dimension=32), "manifest.json says 6 of dimension 32"),
        (lambda f: _edit_manifest(f, kind="hnsw", index_params={"M": 0}), "positive integer"),
        (lambda f: _edit_manifest(f, files={}), "file list is incomplete"),
    ],
)
def test_a_damaged_manifest_is_named(saved_index, edit, message):
    edit(saved_index)
    with pytest.raises(IndexFormatError, match=message) as info:
        load_index(saved_index)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)


def test_another_selconv_version_warns(saved_index):
    _edit_manifest(saved_index, selconv_version="0.0.1")
    with pytest.warns(UserWarning, match="written by selconv 0.0.1"):
        load_index(saved_index)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such index folder"):
        load_index(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- encoders in skops
def _public_selconv_estimators():
    from selconv._pickling import SelconvPickleMixin

    for module in pkgutil.walk_packages(selconv.__path__, "selconv."):
        if not module.name.endswith("__main__") and ".datasets.sample" not in module.name:
            importlib.import_module(module.name)
    found, todo = set(), [SelconvPickleMixin]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            # Subclasses defined elsewhere (test doubles in other test modules) are not selconv's to trust.
            if sub.__module__.startswith("selconv.") and not sub.__name__.startswith(("_", "Base")):
                found.add(f"{sub.__module__}.{sub.__qualname__}")
    return found


def test_every_selconv_estimator_is_trusted_and_nothing_else():
    selconv_types = {name for name in trusted_types() if name.startswith("selconv.")}
    assert selconv_types == _public_selconv_estimators()
    assert set(trusted_types()) - selconv_types == {"sklearn.pipeline.Pipeline"}


def _fitted_estimators():
    """One small fitted instance of every selconv estimator (but the extractor) and the input it transforms."""
    from selconv import aggregation, embedding, encoding, hashing, local_pca, masks, pooling, postprocessing

    maps = make_conv_maps(n_images=8)
    sets = make_local_sets()
    vectors = np.random.default_rng(0).standard_normal((80, 16))
    on_maps = [
        masks.MaxMask(),
        masks.SumMask(),
        masks.NoMask(),
        pooling.SPoC(),
        pooling.MAC(),
        pooling.RMAC(),
        pooling.CroW(),
        pooling.GeM(),
    ]
    on_sets = [
        local_pca.LocalPCA(4, random_state=0),
        embedding.TriangulationEmbedding(3, n_clamped=3, random_state=0),
        embedding.VLADEmbedding(3, random_state=0),
        embedding.FisherVectorEmbedding(2, random_state=0),
        embedding.FAembEmbedding(2, n_clamped=3, random_state=0),
        aggregation.DemocraticAggregator(),
        aggregation.SumPooling(),
        aggregation.AveragePooling(),
        aggregation.MaxPooling(),
        aggregation.GeneralizedMaxPooling(),
        encoding.EncodeAggregate(embedding.TriangulationEmbedding(3, n_clamped=3, random_state=0)),
    ]
    on_vectors = [
        postprocessing.RotationNormalizer(n_dropped=2),
        postprocessing.PowerNormalizer(),
        postprocessing.PCAWhitening(4),
        hashing.ITQHasher(8, random_state=0),
        hashing.KMeansHasher(8),
        hashing.RBAHasher(8, n_iter=2, random_state=0),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield from ((e.fit(maps), maps) for e in on_maps)
        yield from ((e.fit(sets), sets) for e in on_sets)
        yield from ((e.fit(vectors), vectors) for e in on_vectors)


def test_every_fitted_estimator_round_trips_through_skops(tmp_path):
    from selconv.index._persistence import encoder_from_file, encoder_to_bytes

    covered = set()
    for estimator, X in _fitted_estimators():
        path = tmp_path / f"{type(estimator).__name__}.skops"
        path.write_bytes(encoder_to_bytes(estimator))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no version warning
            loaded = encoder_from_file(path)
        assert type(loaded) is type(estimator) and repr(loaded) == repr(estimator)
        # Compared with a pickle round trip: a fitted attribute that is a strided view (PCAWhitening.components_)
        # comes back contiguous from both, which can change the last bit of a BLAS product.
        assert_same_output(loaded.transform(X), pickle.loads(pickle.dumps(estimator)).transform(X))
        covered.add(f"{type(estimator).__module__}.{type(estimator).__qualname__}")
    missing = (
        _public_selconv_estimators()
        - covered
        - {"selconv.extraction.extractor.ConvFeatureExtractor", "selconv.masks.SiftMask"}
    )
    assert not missing


def test_the_extractor_round_trips_through_skops_and_rebuilds_its_network(tmp_path):
    """Saved by parameters and weight checksum (its torch module is not stored) and rebuilt on first use."""
    from selconv.extraction import ConvFeatureExtractor
    from selconv.index._persistence import encoder_from_file, encoder_to_bytes

    extractor = ConvFeatureExtractor(
        "alexnet", layers="conv5", weights=None, max_size=96, n_workers=0, device="cpu"
    ).fit()
    pipeline = make_paper_pipeline(512, extractor=extractor)
    pixels = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    blob = encoder_to_bytes(pipeline)
    assert len(blob) < 100_000  # no weights inside
    (tmp_path / "encoder.skops").write_bytes(blob)
    loaded = encoder_from_file(tmp_path / "encoder.skops")["extract"]
    assert loaded.weights_checksum_ == extractor.weights_checksum_ and loaded._model is None
    np.testing.assert_array_equal(loaded.transform([pixels])[0].features, extractor.transform([pixels])[0].features)


class _NotSelconv:
    def transform(self, X):
        return X


def test_encoders_with_untrusted_types_are_refused(tmp_path, saved_index):
    from sklearn.pipeline import Pipeline

    from selconv.extraction import ConvFeatureExtractor

    index = ImageIndex(Pipeline([("custom", _NotSelconv())]))
    index.add_descriptors(unit_rows(2, 4))
    with pytest.raises(TypeError, match="test_index._NotSelconv, which could run code when loaded"):
        index.save(tmp_path / "refused")
    index.encoder = ConvFeatureExtractor(backbone=lambda: None)
    with pytest.raises(TypeError, match="could run code when loaded"):
        index.save(tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    # A file that names an untrusted type is refused before anything is built, even with matching checksums.
    import skops.io as sio

    from selconv.index._persistence import file_digest

    path = saved_index / "encoder.skops"
    path.write_bytes(sio.dumps(Pipeline([("custom", _NotSelconv())])))
    manifest = json.loads((saved_index / "manifest.json").read_text())
    manifest["files"]["encoder.skops"] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    (saved_index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        IndexFormatError, match=r"encoder.skops: holds types outside selconv's trusted list, .*_NotSelconv"
    ):
        load_index(saved_index)
