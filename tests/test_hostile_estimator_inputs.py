"""Hostile inputs for every public estimator, the search and metrics functions and the command line (issue 7).

A deterministic generator crosses each estimator (and parameter extremes inside its constraints) with
inputs that have gone wrong: NaN, infinity, values at the edge of float32/float64, empty images, empty
lists, 0 features or channels, wrong dimensions and dtypes, ragged mixes. Every case must end in one
of two ways, within a time limit:

- a result with no NaN or infinity in it (no silent NaN), or
- a ``ValueError`` / ``TypeError`` (scikit-learn's ``InvalidParameterError``, selconv's
  ``NonFiniteError`` and ``GroundTruthError`` are both) with a message, not one of the cryptic ones
  numpy raises from deep inside (``cannot reshape``, ``index ... out of bounds``, ...).

Anything else (IndexError, AttributeError, ZeroDivisionError, a hang) fails the case. The command-line
cases run ``main(argv)`` in-process and require exit status 2 with a one-line message and no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import warnings

import numpy as np
import pytest

from selconv import cli
from selconv.aggregation import (
    AveragePooling,
    DemocraticAggregator,
    GeneralizedMaxPooling,
    MaxPooling,
    SumPooling,
)
from selconv.conv_map import ConvMap
from selconv.embedding import FAembEmbedding, FisherVectorEmbedding, TriangulationEmbedding, VLADEmbedding
from selconv.hashing import ITQHasher, KMeansHasher, RBAHasher
from selconv.index import ImageIndex
from selconv.local_pca import LocalPCA
from selconv.masks import MaxMask, NoMask, SiftMask, SumMask
from selconv.metrics import average_precisions, evaluate
from selconv.pooling import MAC, RMAC, CroW, GeM, SPoC
from selconv.postprocessing import PCAWhitening, PowerNormalizer, RotationNormalizer
from selconv.search import average_query_expansion, rank

#: Seconds a single case may take before it counts as a hang.
TIME_LIMIT = 20
#: Messages that say where numpy failed, not what the user must fix.
CRYPTIC = (
    "cannot reshape",
    "out of bounds",
    "empty sequence",
    "zero-size array",
    "has no attribute",
    "not subscriptable",
)
F32_MAX = float(np.finfo(np.float32).max)


@contextlib.contextmanager
def _deadline(seconds):
    def expire(signum, frame):
        raise TimeoutError(f"case did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _assert_finite(result, where="result"):
    if isinstance(result, (list, tuple)):
        for i, item in enumerate(result):
            _assert_finite(item, f"{where}[{i}]")
    elif isinstance(result, np.ndarray) and np.issubdtype(result.dtype, np.inexact):
        assert np.isfinite(result).all(), f"silent NaN/inf in {where}"
    elif hasattr(result, "average_precisions"):  # RetrievalResult: these cases all have positives
        assert np.isfinite(result.average_precisions).all() and np.isfinite(result.map), "silent NaN mAP"


def run_case(call):
    """'ok' (finite result) or 'error' (a clear ValueError/TypeError); anything else fails the case."""
    with warnings.catch_warnings(), _deadline(TIME_LIMIT):
        warnings.simplefilter("ignore")
        try:
            result = call()
        except (ValueError, TypeError) as error:
            message = str(error)
            assert message.strip(), f"{type(error).__name__} without a message"
            assert not any(c in message.lower() for c in CRYPTIC), f"cryptic message: {message}"
            return "error"
    _assert_finite(result)
    return "ok"


# ------------------------------------------------------------------------------------------- generators

RNG = np.random.default_rng(7)


def _good_sets(n_features=4):
    """Unequal counts and an empty image (equal counts would silently become a 3-D array)."""
    return [np.abs(RNG.standard_normal((n, n_features))).astype(np.float32) for n in (9, 0, 14, 6, 11)]


def _with(value, dtype=np.float32):
    sets = _good_sets()
    sets[2] = sets[2].astype(dtype)
    sets[2][3, 1] = value
    return sets


RAGGED_INPUTS = {
    "nan": _with(np.nan),
    "+inf": _with(np.inf),
    "-inf": _with(-np.inf),
    "huge_float32": [s * 0 + F32_MAX / 2 for s in _good_sets()],
    "huge_float32_mixed_signs": [np.where(s > 0.5, F32_MAX, -F32_MAX).astype(np.float32) for s in _good_sets()],
    "beyond_float32": _with(1e300, np.float64),
    "denormal": [s * 0 + np.float32(1e-42) for s in _good_sets()],
    "zeros": [s * 0 for s in _good_sets()],
    "identical_rows": [np.ones_like(s) for s in _good_sets()],
    "negative": [-s for s in _good_sets()],
    "all_empty": [np.zeros((0, 4), np.float32)] * 3,
    "one_row": [np.ones((1, 4), np.float32)],
    "empty_list": [],
    "single_2d_array": RNG.random((5, 4)),
    "3d_item": [RNG.random((2, 3, 4))],
    "1d_item": [RNG.random(4)],
    "0_features": [np.zeros((3, 0), np.float32)],
    "mismatched_features": [RNG.random((3, 4)), RNG.random((3, 5))],
    "strings": [np.array([["a", "b", "c", "d"]])],
    "object_none": [np.array([[1.0, None, 2.0, 3.0]], dtype=object)],
    "complex": [RNG.random((3, 4)) + 1j],
    "bool": [RNG.random((6, 4)) > 0.5, RNG.random((7, 4)) > 0.5],
    "int": [RNG.integers(0, 9, (6, 4)), RNG.integers(0, 9, (8, 4))],
    "float16": [s.astype(np.float16) for s in _good_sets()],
    "nested_ragged": [[[1.0, 2.0, 3.0, 4.0], [1.0]]],
    "none_item": [None],
    "scalar": 3.0,
    "string": "images",
    "dict": {"a": np.ones((2, 4))},
}

RAGGED_ESTIMATORS = {
    "LocalPCA": lambda: LocalPCA(n_components=2, random_state=0),
    "LocalPCA(whiten)": lambda: LocalPCA(n_components=2, whiten=True, random_state=0),
    "Temb": lambda: TriangulationEmbedding(n_clusters=2, n_clamped=0, random_state=0),
    "VLAD": lambda: VLADEmbedding(n_clusters=2, random_state=0),
    "FV": lambda: FisherVectorEmbedding(n_components=2, max_iter=20, random_state=0),
    "FV(reg_covar=1e-300)": lambda: FisherVectorEmbedding(
        n_components=2, max_iter=20, reg_covar=1e-300, random_state=0
    ),
    "FAemb": lambda: FAembEmbedding(n_clusters=2, n_clamped=0, random_state=0),
    "FAemb(mu=1e-300)": lambda: FAembEmbedding(n_clusters=2, n_clamped=0, mu=1e-300, random_state=0),
    "Democratic": lambda: DemocraticAggregator(),
    "Democratic(gamma=1)": lambda: DemocraticAggregator(50, gamma=1.0),
    "Democratic(gamma=0)": lambda: DemocraticAggregator(gamma=0.0),
    "Sum": SumPooling,
    "Average": AveragePooling,
    "Max": MaxPooling,
    "GMP": GeneralizedMaxPooling,
    "GMP(reg=1e-300)": lambda: GeneralizedMaxPooling(reg=1e-300),
    "GMP(reg=1e300)": lambda: GeneralizedMaxPooling(reg=1e300),
}


def _maps(make=lambda shape: np.abs(RNG.standard_normal(shape)).astype(np.float32)):
    return [make(shape) for shape in ((3, 4, 5), (3, 2, 3), (3, 1, 1), (3, 6, 4))]


def _map_with(value, dtype=np.float32):
    maps = _maps()
    maps[0] = maps[0].astype(dtype)
    maps[0][1, 2, 3] = value
    return maps


MAP_INPUTS = {
    "nan": _map_with(np.nan),
    "+inf": _map_with(np.inf),
    "beyond_float32": _map_with(1e300, np.float64),
    "huge": _maps(lambda shape: np.full(shape, F32_MAX / 2, np.float32)),
    "denormal": _maps(lambda shape: np.full(shape, 1e-42, np.float32)),
    "zeros": _maps(lambda shape: np.zeros(shape, np.float32)),
    "negative": _maps(lambda shape: -np.ones(shape, np.float32)),
    "0_channels": [np.zeros((0, 4, 4), np.float32)],
    "0_height": [np.zeros((3, 0, 4), np.float32), np.ones((3, 2, 2), np.float32)],
    "0_width": [np.zeros((3, 4, 0), np.float32)],
    "int": _maps(lambda shape: np.ones(shape, np.int64)),
    "complex": _maps(lambda shape: np.ones(shape, np.complex64)),
    "2d_item": [np.ones((4, 5), np.float32)],
    "4d_item": [np.ones((1, 3, 4, 5), np.float32)],
    "mismatched_channels": [np.ones((3, 2, 2), np.float32), np.ones((4, 2, 2), np.float32)],
    "empty_list": [],
    "single_3d_array": np.ones((3, 4, 5), np.float32),
    "strings": [np.array([[["x"]]])],
    "none_item": [None],
    "nested_ragged": [[[[1.0, 2.0], [1.0]]]],
}

MAP_ESTIMATORS = {
    "NoMask": NoMask,
    "MaxMask": MaxMask,
    "SumMask": SumMask,
    "SiftMask": SiftMask,
    "SiftMask(radius=0, fallback=empty)": lambda: SiftMask(radius=0, fallback="empty"),
    "SPoC": SPoC,
    "SPoC(center_prior)": lambda: SPoC(center_prior=True),
    "MAC": MAC,
    "RMAC": RMAC,
    "RMAC(no whitening)": lambda: RMAC(region_whitening=False),
    "CroW": CroW,
    "CroW(a=b=1e-3)": lambda: CroW(a=1e-3, b=1e-3),
    "CroW(a=b=1e3)": lambda: CroW(a=1e3, b=1e3),
    "GeM": GeM,
    "GeM(p=1e-3)": lambda: GeM(p=1e-3),
    "GeM(p=1e3)": lambda: GeM(p=1e3),
}


def _as_conv_maps(maps, keypoints):
    """Wrap (K, H, W) arrays as ConvMaps with keypoints (what SiftMask needs); non-arrays stay as they are."""
    if not isinstance(maps, list):
        return maps
    wrapped = []
    for item in maps:
        array = np.asarray(item) if not isinstance(item, (type(None), list)) else None
        if array is None or array.ndim != 3:
            wrapped.append(item)
            continue
        wrapped.append(ConvMap(array, image_size=(40, 30), keypoints=keypoints))
    return wrapped


KEYPOINTS = {
    "some": np.array([[3.0, 4.0], [39.0, 29.0], [0.0, 0.0]]),
    "none_found": np.zeros((0, 2)),
    "outside_image": np.array([[-1e6, 5.0], [1e9, 1e9]]),
}


def _as_2d_inputs():
    X = RNG.standard_normal((30, 16))

    def with_value(value, dtype=np.float64):
        bad = X.astype(dtype)
        bad[4, 5] = value
        return bad

    return {
        "nan": with_value(np.nan),
        "+inf": with_value(np.inf),
        "huge_float64": X * 1e300,
        "huge_float32": (np.sign(X) * F32_MAX).astype(np.float32),
        "tiny": X * 1e-300,
        "zeros": np.zeros_like(X),
        "constant_rows": np.ones_like(X),
        "one_row": X[:1],
        "0_rows": X[:0],
        "0_columns": X[:, :0],
        "1d": X[0],
        "3d": X.reshape(30, 4, 4),
        "strings": X.astype(str),
        "complex": X + 1j,
        "object_none": np.array([[1.0, None] * 8] * 30, dtype=object),
        "bool": X > 0,
        "int": (X * 10).astype(np.int64),
        "ragged_lists": [[1.0, 2.0], [3.0]],
        "empty_list": [],
        "none": None,
    }


TWO_D_INPUTS = _as_2d_inputs()

TWO_D_ESTIMATORS = {
    "RN": lambda: RotationNormalizer(n_dropped=1),
    "RN(whiten, raw input)": lambda: RotationNormalizer(n_dropped=1, whiten=True, normalize_input=False),
    "PN": PowerNormalizer,
    "PN(alpha=1e-6)": lambda: PowerNormalizer(alpha=1e-6),
    "PN(alpha=1e6)": lambda: PowerNormalizer(alpha=1e6),
    "PCAWhitening": PCAWhitening,
    "PCAWhitening(shrinkage=0)": lambda: PCAWhitening(shrinkage=0.0),
    "PCAWhitening(shrinkage=1e300)": lambda: PCAWhitening(shrinkage=1e300),
    "ITQ": lambda: ITQHasher(n_bits=8, n_iter=5, random_state=0),
    "KMH": lambda: KMeansHasher(n_bits=8, bits_per_subspace=2, n_iter=1),
    "RBA": lambda: RBAHasher(n_bits=8, n_iter=2, max_lbfgs_iter=5, random_state=0),
    "RBA(penalties=1e300)": lambda: RBAHasher(
        n_bits=8, n_iter=2, max_lbfgs_iter=5, independence_penalty=1e300, binary_penalty=1e300, random_state=0
    ),
}

#: Parameters outside each constraint: fit must refuse them (and transform, when set after fit).
OUT_OF_RANGE = [
    (DemocraticAggregator, {"gamma": 1.5}),
    (DemocraticAggregator, {"gamma": -0.1}),
    (DemocraticAggregator, {"gamma": np.nan}),
    (DemocraticAggregator, {"n_iter": -1}),
    (GeneralizedMaxPooling, {"reg": 0.0}),
    (PowerNormalizer, {"alpha": 0.0}),
    (PowerNormalizer, {"alpha": np.nan}),
    (FisherVectorEmbedding, {"reg_covar": 0.0}),
    (FAembEmbedding, {"mu": 0.0}),
    (LocalPCA, {"n_components": 0}),
    (GeM, {"p": 0.0}),
    (CroW, {"a": 0.0}),
    (CroW, {"b": -1.0}),
    (RMAC, {"overlap": 1.0}),
    (PCAWhitening, {"shrinkage": -1.0}),
    (ITQHasher, {"n_bits": 4}),
    (SiftMask, {"radius": -1}),
]


# ------------------------------------------------------------------------------------------- estimators


@functools.cache
def _fitted(family, name):
    """Each estimator fitted once on good data, for the cases that give hostile input to ``transform``."""
    make, good = {
        "ragged": (RAGGED_ESTIMATORS, _good_sets),
        "maps": (MAP_ESTIMATORS, lambda: _as_conv_maps(_maps(), KEYPOINTS["some"])),
        "2d": (TWO_D_ESTIMATORS, lambda: np.random.default_rng(0).standard_normal((40, 16))),
    }[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return make[name]().fit(good())
        except ValueError:  # an extreme parameter may refuse even good data (clearly: see the first case)
            return None


def _run_all(cases):
    """Run every (label, call) case; fail once, listing every case that went wrong."""
    failures = []
    for label, call in cases:
        try:
            run_case(call)
        except Exception as error:  # noqa: BLE001 - an unexpected type is exactly what is being caught
            failures.append(f"{label}: {type(error).__name__}: {error}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    return len(cases)


def _estimator_cases(family, make, name, inputs):
    """Per input: fit + transform on it (a hostile training set), and transform of a good fit."""
    fitted = _fitted(family, name)
    cases = []
    for input_name, X in inputs.items():
        cases.append((f"{input_name} (fit)", lambda X=X: make().fit(X).transform(X)))
        if fitted is not None:
            cases.append((f"{input_name} (transform)", lambda X=X: fitted.transform(X)))
    return cases


@pytest.mark.parametrize("estimator_name", sorted(RAGGED_ESTIMATORS))
def test_ragged_estimators_on_hostile_input(estimator_name):
    _run_all(_estimator_cases("ragged", RAGGED_ESTIMATORS[estimator_name], estimator_name, RAGGED_INPUTS))


@pytest.mark.parametrize("estimator_name", sorted(MAP_ESTIMATORS))
def test_conv_map_estimators_on_hostile_input(estimator_name):
    # Plain arrays, and ConvMaps with keypoints (for SiftMask: found, none found, outside the image).
    inputs = dict(MAP_INPUTS)
    for k in KEYPOINTS if "Sift" in estimator_name else ["some"]:
        inputs.update(
            {f"{name} as ConvMap, keypoints {k}": _as_conv_maps(X, KEYPOINTS[k]) for name, X in MAP_INPUTS.items()}
        )
    _run_all(_estimator_cases("maps", MAP_ESTIMATORS[estimator_name], estimator_name, inputs))


@pytest.mark.parametrize(
    "keypoints",
    [[[np.nan, 1.0]], [[1.0, np.inf]], [[1.0, 2.0, 3.0]], "xy", [[1.0, None]], np.zeros((2, 3))],
    ids=["nan", "inf", "3_columns", "string", "none", "2x3"],
)
def test_conv_map_with_hostile_keypoints_is_refused_where_it_is_built(keypoints):
    assert run_case(lambda: SiftMask().fit_transform([ConvMap(np.ones((3, 4, 4), np.float32), (8, 8), keypoints)]))
    with pytest.raises(ValueError, match="keypoints"):
        ConvMap(np.ones((3, 4, 4), np.float32), (8, 8), keypoints)


@pytest.mark.parametrize("image_size", [(0, 5), (np.nan, 5), ("a", 5), (5,), None, (-3, 4)], ids=str)
def test_conv_map_with_hostile_image_size_is_refused(image_size):
    with pytest.raises(ValueError, match="image_size"):
        ConvMap(np.ones((3, 4, 4), np.float32), image_size)


@pytest.mark.parametrize("estimator_name", sorted(TWO_D_ESTIMATORS))
def test_2d_estimators_on_hostile_input(estimator_name):
    _run_all(_estimator_cases("2d", TWO_D_ESTIMATORS[estimator_name], estimator_name, TWO_D_INPUTS))


@pytest.mark.parametrize(("estimator_class", "params"), OUT_OF_RANGE, ids=lambda v: getattr(v, "__name__", str(v)))
def test_out_of_range_parameters_are_refused_at_fit_and_after_set_params(estimator_class, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        estimator_class(**params).fit(_maps() if estimator_class in (GeM, CroW, RMAC, SiftMask) else _good_sets())
    if estimator_class in (DemocraticAggregator, PowerNormalizer, GeM, CroW):  # stateless: transform re-validates
        X = {PowerNormalizer: RNG.random((5, 4)), GeM: _maps(), CroW: _maps()}.get(estimator_class, _good_sets())
        fitted = estimator_class().fit(X).set_params(**params)
        with pytest.raises(ValueError, match=next(iter(params))):
            fitted.transform(X)


# ---------------------------------------------------------------------------------- search and metrics


def _index(descriptors, metric="auto"):
    index = ImageIndex(metric=metric)
    index.add_descriptors(descriptors)
    return index


def test_search_on_hostile_descriptors():
    good = RNG.standard_normal((20, 16)).astype(np.float32)
    ground_truth = [{"positives": [1, 2], "junk": [0]}] * 3
    cases = []
    for name, X in TWO_D_INPUTS.items():
        cases += [
            (f"ImageIndex.search_descriptors({name})", lambda X=X: _index(good).search_descriptors(X, 3)),
            (f"ImageIndex.add_descriptors({name})", lambda X=X: _index(X).search_descriptors(good, 3)),
            (
                f"binary ImageIndex.search_descriptors({name})",
                lambda X=X: _index(np.zeros((4, 2), np.uint8), metric="hamming").search_descriptors(X, 2),
            ),
            (f"rank(query={name})", lambda X=X: rank(X, good)),
            (f"rank(database={name})", lambda X=X: rank(good, X)),
            (f"evaluate(query={name})", lambda X=X: evaluate(X, good, ground_truth)),
            (f"evaluate(database={name})", lambda X=X: evaluate(good[:3], X, ground_truth)),
            (
                f"evaluate(database={name}, query_expansion)",
                lambda X=X: evaluate(good[:3], X, ground_truth, query_expansion=2),
            ),
            (f"average_query_expansion(ranking={name})", lambda X=X: average_query_expansion(good[:3], good, X, top=2)),
        ]
    _run_all(cases)


HOSTILE_GROUND_TRUTH = {
    "index_beyond_database": [{"positives": [50]}] * 3,
    "negative_index": [{"positives": [-1]}] * 3,
    "float_index": [{"positives": [1.5]}] * 3,
    "string_index": [{"positives": ["a"]}] * 3,
    "nan_index": [{"positives": [np.nan]}] * 3,
    "missing_positives": [{"junk": [1]}] * 3,
    "not_a_dict": [[1, 2]] * 3,
    "a_dict": {"positives": [1]},
    "too_few_entries": [{"positives": [1]}],
    "none": None,
    "junk_beyond_database": [{"positives": [1], "junk": [10**9]}] * 3,
}


def test_metrics_on_hostile_ground_truth():
    q = RNG.standard_normal((3, 8))
    db = RNG.standard_normal((10, 8))
    for name, ground_truth in HOSTILE_GROUND_TRUTH.items():
        assert run_case(lambda gt=ground_truth: evaluate(q, db, gt)) == "error", name
        assert run_case(lambda gt=ground_truth: average_precisions(rank(q, db), gt, n_database=10)) == "error", name


@pytest.mark.parametrize(
    "rankings",
    [
        np.array([[0.5, 1.0]]),
        np.array([[-1, 0]]),
        np.array([[0, 99]]),
        np.array([["a", "b"]]),
        np.zeros((1, 2, 2), int),
    ],
    ids=["float", "negative", "beyond_database", "strings", "3d"],
)
def test_metrics_on_hostile_rankings(rankings):
    assert run_case(lambda: average_precisions(rankings, [{"positives": [1]}], n_database=10)) == "error"


# --------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A tiny user-format dataset: 6 images, a CSV, a training folder inside it, a broken CSV, a plain file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hostile_cli")
    data = root / "data"
    rng = np.random.default_rng(0)
    for name in ("a0", "a1", "b0", "b1", "c0", "train/t0", "train/t1"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(data / f"{name}.png")
    (data / "groundtruth.csv").write_text("image,label\na0.png,a\na1.png,a\nb0.png,b\nb1.png,b\n")
    (root / "broken.csv").write_text("image,label,colour\na0.png,a,red\n")
    (root / "afile").write_text("not a folder")
    (root / "emptydir").mkdir()
    return root


def _refuse_benchmark(*args, **kwargs):
    raise AssertionError("run_benchmark must not be reached: the error must come before any extraction")


CLI_CASES = {  # name: the command line (split on spaces)
    "no_command": "",
    "evaluate_without_dataset": "evaluate",
    "unknown_dataset": "evaluate --dataset nope",
    "unknown_preset": "evaluate --dataset sample --preset 500",
    "unknown_mask": "evaluate --dataset sample --mask max,median",
    "zero_bits": "evaluate --dataset sample --bits 0",
    "odd_bits": "evaluate --dataset sample --bits 12",
    "bits_not_a_multiple_of_8": "evaluate --dataset sample --bits 12",
    "negative_max_size": "demo --max-size -3",
    "text_max_size": "demo --max-size big",
    "unknown_option": "evaluate --dataset sample --colour red",
    "two_training_sets": "evaluate --dataset sample --train-dir a --train-dataset paris6k",
    "missing_data_dir": "evaluate --dataset oxford5k",
    "data_dir_does_not_exist": "evaluate --dataset oxford5k --data-dir {root}/missing",
    "data_dir_is_a_file": "evaluate --dataset oxford5k --data-dir {root}/afile",
    "data_dir_not_in_official_layout": "evaluate --dataset oxford5k --data-dir {root}/emptydir",
    "protocol_of_another_dataset": "evaluate --dataset roxford5k --data-dir {root} --protocol loo-landmark",
    "protocol_hard_on_sample": "evaluate --dataset sample --protocol hard",
    "protocol_hard_on_oxford5k": "evaluate --dataset oxford5k --data-dir {root} --protocol hard",
    "protocol_hard_on_folder": "evaluate --dataset folder --data-dir {root}/data --protocol hard",
    "data_dir_for_sample": "evaluate --dataset sample --data-dir {root}",
    "ground_truth_for_oxford5k": "evaluate --dataset oxford5k --data-dir {root} --ground-truth x.csv",
    "rotations_for_folder": "evaluate --dataset folder --data-dir {root}/data --rotations r.txt",
    "fit_on_database_with_training": "evaluate --dataset sample --fit-on database --train-dir {root}",
    "max_train_with_fit_on_database": "evaluate --dataset sample --fit-on database --max-train 5",
    "train_data_dir_alone": "evaluate --dataset sample --train-data-dir {root}",
    "train_dir_missing": "evaluate --dataset sample --train-dir {root}/missing",
    "train_dir_is_a_file": "evaluate --dataset sample --train-dir {root}/afile",
    "train_dir_without_images": "evaluate --dataset sample --train-dir {root}/emptydir",
    "training_is_the_database": (
        "evaluate --dataset folder --data-dir {root}/data --train-dataset folder --train-data-dir {root}/data"
    ),
    "train_dir_contains_the_dataset": "evaluate --dataset folder --data-dir {root}/data --train-dir {root}",
    "broken_ground_truth": "evaluate --dataset folder --data-dir {root}/data --ground-truth {root}/broken.csv",
    "missing_ground_truth": "evaluate --dataset folder --data-dir {root}/data --ground-truth {root}/missing.csv",
    "folder_without_queries": "evaluate --dataset folder --data-dir {root}/data/train",
    "out_is_a_file": "evaluate --dataset sample --out {root}/afile",
    "out_under_a_file": "evaluate --dataset sample --out {root}/afile/out",
    "cache_dir_is_a_file": "evaluate --dataset sample --cache-dir {root}/afile",
    "cache_dir_under_a_file": "evaluate --dataset sample --cache-dir {root}/afile/cache",
    "demo_out_is_a_file": "demo --out {root}/afile",
    "demo_cache_dir_under_a_file": "demo --cache-dir {root}/afile/x",
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_errors_are_one_line_with_status_2(case, user_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli._benchmark, "run_benchmark", _refuse_benchmark)
    argv = [a.format(root=user_folder) for a in CLI_CASES[case].split()]
    if argv and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with _deadline(TIME_LIMIT):
        status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("selconv: error:"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("where", ["--out", "--cache-dir"])
def test_cli_unwritable_output_folder_is_one_line_with_status_2(where, tmp_path, monkeypatch, capsys):
    """As root, permissions cannot make a folder unwritable: the write probe is made to fail as it would."""

    probe = cli._common.tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir == tmp_path / "x":
            raise PermissionError(13, "Permission denied", str(dir))
        return probe(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cli._benchmark, "run_benchmark", _refuse_benchmark)
    monkeypatch.setattr(cli._common.tempfile, "TemporaryFile", refuse)
    status = cli.main(["evaluate", "--dataset", "sample", "--out", str(tmp_path / "out"), where, str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "not a writable folder" in err and "Permission denied" in err and where in err


def test_cli_help_and_version_are_not_errors(capsys):
    assert cli.main(["--version"]) == 0
    assert cli.main(["evaluate", "--help"]) == 0
    assert "selconv" in capsys.readouterr().out
