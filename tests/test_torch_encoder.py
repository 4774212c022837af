"""The torch path of the post-CNN stages against the numpy estimators (runs on CPU torch, so CI covers it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_local_sets
from sklearn.decomposition import PCA

from selconv._torch_kernels import max_mask, sum_mask
from selconv.aggregation import AveragePooling, DemocraticAggregator, EmptyImageWarning, SumPooling
from selconv.conv_map import ConvMap, MultiScaleConvMap
from selconv.embedding import FAembEmbedding, FisherVectorEmbedding, TriangulationEmbedding, VLADEmbedding
from selconv.encoding import EncodeAggregate
from selconv.masks import MaxMask, SumMask
from selconv.pipelines import make_paper_pipeline
from selconv.torch_encoder import TorchEncoder

K = 64


def pool5_like_maps(n_images, height, width, random_state=0, n_salient=12):
    """Non-negative, mostly zero maps whose channel maxima sit on a few salient cells (like VGG16 pool5),
    with ties (repeated maxima) and an all-zero channel, the cases where argmax conventions matter."""
    rng = np.random.default_rng(random_state)
    maps = rng.standard_exponential((n_images, K, height, width), dtype=np.float32)
    maps[rng.random(maps.shape) < 0.8] = 0.0
    flat = maps.reshape(n_images, K, -1)
    for i in range(n_images):
        salient = rng.choice(height * width, n_salient, replace=False)
        flat[i, np.arange(K), salient[rng.integers(0, n_salient, K)]] = flat[i].max() + 1.0
        flat[i, 3] = 0.0  # a dead channel
        flat[i, 5, :2] = flat[i, 5].max() + 2.0  # a tie: the first cell wins
    return maps


def quiet(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args)


@pytest.mark.parametrize(("mask", "kernel"), [(MaxMask(), max_mask), (SumMask(), sum_mask)])
def test_masks_are_identical(mask, kernel):
    for height, width in ((7, 9), (6, 6)):
        maps = pool5_like_maps(5, height, width)
        expected = np.stack([m.ravel() for m in mask.get_selected_locations(list(maps))])
        np.testing.assert_array_equal(kernel(torch.as_tensor(maps)).numpy(), expected)


def test_encode_aggregate_torch_equals_numpy_in_fit_and_transform():
    train = make_local_sets(counts=(300, 0, 250, 120, 400, 1, 350), n_features=8, random_state=0, nonnegative=False)
    test = make_local_sets(counts=(90, 0, 230, 1, 150), n_features=8, random_state=1, nonnegative=False)
    embedding = TriangulationEmbedding(6, n_clamped=4, random_state=0)
    numpy_path = EncodeAggregate(embedding, DemocraticAggregator()).fit(train)
    torch_path = EncodeAggregate(embedding, DemocraticAggregator(), device="torch", working_memory=0.05).fit(train)
    # k-means in torch: scikit-learn's algorithm and random draws, float32 sums in another order.
    np.testing.assert_allclose(
        torch_path.embedding_.cluster_centers_, numpy_path.embedding_.cluster_centers_, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(torch_path.embedding_.mean_, numpy_path.embedding_.mean_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(torch_path.embedding_.eigenvalues_, numpy_path.embedding_.eigenvalues_, rtol=1e-4)
    with pytest.warns(EmptyImageWarning, match="indices: 1\\)"):
        ours = torch_path.transform(test)
    with pytest.warns(EmptyImageWarning):
        reference = numpy_path.transform(test)
    assert ours.dtype == np.float32
    # The clamped eigenvalues are equal, so their eigenvectors are only defined up to a rotation of
    # their subspace, which differs with the summation order: the fits agree up to that rotation,
    # i.e. in the inner products between images (all that ranking uses).
    scale = np.abs(reference).max() ** 2
    np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, rtol=1e-4, atol=1e-5 * scale)
    # Transform alone (numpy fit, torch kernels): the same numbers.
    numpy_path.set_params(device="torch")
    with pytest.warns(EmptyImageWarning):
        np.testing.assert_allclose(numpy_path.transform(test), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("embedding", "aggregator"),
    [
        (FAembEmbedding(4, n_clamped=5, random_state=0), DemocraticAggregator()),
        (FAembEmbedding(4, n_clamped=5, random_state=0), SumPooling()),
        (VLADEmbedding(5, random_state=0), DemocraticAggregator()),
        (FisherVectorEmbedding(3, random_state=0), AveragePooling()),
    ],
    ids=["faemb-democratic", "faemb-sum", "vlad-democratic", "fv-average"],
)
def test_encode_aggregate_torch_equals_numpy_for_every_embedding(embedding, aggregator):
    """The other codebook embeddings on a torch device: embedded on the host, whitened (F-FAemb) and pooled
    (democratic) on the device, the codebook (k-means) and the whitening's scatter learned there."""
    train = make_local_sets(counts=(300, 250, 0, 120, 400, 350), n_features=6, random_state=0, nonnegative=False)
    test = make_local_sets(counts=(90, 230, 1, 150), n_features=6, random_state=1, nonnegative=False)
    numpy_path = EncodeAggregate(embedding, aggregator).fit(train)
    torch_path = EncodeAggregate(embedding, aggregator, device="torch", working_memory=0.05).fit(train)
    codebook = "means_" if isinstance(embedding, FisherVectorEmbedding) else "cluster_centers_"  # FV: a GMM, on the CPU
    np.testing.assert_allclose(
        getattr(torch_path.embedding_, codebook), getattr(numpy_path.embedding_, codebook), rtol=1e-5, atol=1e-6
    )
    if hasattr(numpy_path.embedding_, "eigenvalues_"):
        np.testing.assert_allclose(torch_path.embedding_.mean_, numpy_path.embedding_.mean_, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(torch_path.embedding_.eigenvalues_, numpy_path.embedding_.eigenvalues_, rtol=1e-4)
    reference = numpy_path.transform(test)
    ours = torch_path.transform(test)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    # Clamped eigenvalues leave their eigenvectors defined up to a rotation of their subspace: compare the
    # inner products between images (all that ranking uses).
    scale = np.abs(reference).max() ** 2
    np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, rtol=1e-4, atol=1e-5 * scale)
    # Transform alone (numpy fit, torch kernels): the same numbers.
    numpy_path.set_params(device="torch")
    np.testing.assert_allclose(numpy_path.transform(test), reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


def test_device_errors():
    sets = make_local_sets(counts=(40, 30), n_features=4)
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        EncodeAggregate(device="gpu").fit(sets)
    with pytest.raises(ValueError, match="supports selconv's codebook embeddings .* got PCA"):
        EncodeAggregate(embedding=PCA(2), device="torch").fit(sets)


@pytest.mark.parametrize(("mask", "n_bits"), [("max", None), ("sum", None), ("max", 16)])
def test_torch_encoder_equals_the_pipeline(mask, n_bits):
    """Conv maps -> descriptors (or codes) through the torch kernels = the fitted numpy pipeline."""
    train = list(pool5_like_maps(60, 6, 8, random_state=2))  # more images than the 48 rotated dimensions
    test = list(pool5_like_maps(6, 6, 8, random_state=3)) + list(pool5_like_maps(3, 5, 7, random_state=4))
    pipeline = make_paper_pipeline(512, mask=mask, n_bits=n_bits).set_params(
        pca__n_components=8, encode__embedding__n_clusters=6, encode__embedding__n_clamped=4, rotate__n_dropped=4
    )
    quiet(pipeline.fit, train)
    reference = pipeline.transform(test)
    encoder = TorchEncoder(pipeline, device="torch")
    ours = encoder.transform(test)  # a list of two grid sizes
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    if n_bits is None:
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
        batch = encoder.transform(torch.as_tensor(np.stack(test[:6])))
        np.testing.assert_allclose(batch.numpy(), reference[:6], rtol=1e-4, atol=1e-5)
    else:
        mismatched = np.unpackbits(ours ^ reference).sum()
        assert mismatched <= 2, mismatched  # a bit of a coordinate within float32 rounding of 0 may flip
    # Multi-scale maps: the numpy pipeline takes them (local features of both scales pooled together);
    # the torch encoder takes one grid per image and says which parameter made them.
    multi = [
        MultiScaleConvMap((ConvMap(a, (16, 12)), ConvMap(b, (14, 10))), (1.0, 0.7)) for a, b in zip(test, test[6:])
    ]
    assert pipeline.transform(multi).shape == (3, reference.shape[1])
    with pytest.raises(ValueError, match=r"TorchEncoder takes one conv map per image.*scales=\(1.0,\)"):
        encoder.transform(multi)


@pytest.mark.parametrize("mask", ["max", "sum", "none"])
def test_a_padded_batch_with_sizes_equals_each_map_cropped(mask):
    """transform(maps, sizes): maps zero-padded (and padded with garbage) to one grid, each with its own size,
    give the descriptors of the maps cropped to their own grids; the cells beyond are never selected."""
    train = list(pool5_like_maps(60, 6, 8, random_state=2))
    pipeline = make_paper_pipeline(512, mask=mask).set_params(
        pca__n_components=8, encode__embedding__n_clusters=6, encode__embedding__n_clamped=4, rotate__n_dropped=4
    )
    quiet(pipeline.fit, train)
    own_grids = [(6, 8), (5, 7), (6, 5), (4, 8)]
    test = [pool5_like_maps(1, h, w, random_state=10 + i)[0] for i, (h, w) in enumerate(own_grids)]
    padded = np.random.default_rng(0).standard_exponential((len(test), K, 6, 8), dtype=np.float32) * 50
    for target, conv_map in zip(padded, test):  # garbage beyond, larger than any own value: never selected
        target[:, : conv_map.shape[1], : conv_map.shape[2]] = conv_map
    encoder = TorchEncoder(pipeline, device="torch")
    ours = encoder.transform(torch.as_tensor(padded), sizes=torch.tensor(own_grids))
    np.testing.assert_allclose(ours.numpy(), pipeline.transform(test), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"sizes must have shape \(4, 2\); got \(3, 2\)"):
        encoder.transform(torch.as_tensor(padded), sizes=torch.tensor(own_grids[:3]))
    with pytest.raises(ValueError, match="sizes goes with a tensor of maps"):
        encoder.transform(test, sizes=torch.tensor(own_grids))


def test_torch_encoder_rejects_unsupported_pipelines():
    with pytest.raises(ValueError, match="needs a paper pipeline"):
        TorchEncoder(make_paper_pipeline(512)[:2], device="torch")
    extended = make_paper_pipeline(512)
    extended.steps.append(("scale", PCA()))  # a step it would otherwise leave out silently
    with pytest.raises(ValueError, match=r"this one also has \['scale'\]"):
        TorchEncoder(extended, device="torch")


def relative_errors(ours, exact):
    """(max over images of max|a - b| / max|b|, max over images of ||a - b|| / ||b||)."""
    difference = np.abs(ours - exact)
    by_coordinate = difference.max(axis=1) / np.abs(exact).max(axis=1)
    by_norm = np.linalg.norm(difference, axis=1) / np.linalg.norm(exact, axis=1)
    return by_coordinate.max(), by_norm.max()


def agreement_with_float64(train, test, bounds, small=True):
    """Fit the 512-D preset (``small``: shrunk); numpy and torch (both dtypes) against float64 on ``test``."""
    pipeline = make_paper_pipeline(512)
    if small:
        pipeline.set_params(
            pca__n_components=8, encode__embedding__n_clusters=6, encode__embedding__n_clamped=4, rotate__n_dropped=4
        )
    quiet(pipeline.fit, train)
    exact = TorchEncoder(pipeline, device="torch").transform_float64(test)
    errors = {"numpy": relative_errors(pipeline.transform(test), exact)}
    for dtype in ("float32", "float64"):
        errors[dtype] = relative_errors(
            TorchEncoder(pipeline, device="torch", projection_dtype=dtype).transform(test), exact
        )
    for path, (by_coordinate, by_norm) in bounds.items():
        assert errors[path][0] <= by_coordinate and errors[path][1] <= by_norm, (path, errors)
    assert errors["float64"][1] < errors["float32"][1], errors  # float64 projection: nearer the exact result
    return errors


def test_float64_projection_is_nearer_the_exact_result():
    """float32 paths a few 1e-6 to 1e-5 from float64, the float64 projection nearer. The bounds leave room for the
    BLAS: OpenBLAS picks its float32 kernels (and so their rounding) by CPU, and one 2-core AMD EPYC machine had
    the torch float32 path at 1.7e-5 / 5.2e-6 where others had less."""
    train = list(pool5_like_maps(60, 6, 8, random_state=2))
    test = list(pool5_like_maps(12, 6, 8, random_state=3))
    agreement_with_float64(train, test, {"numpy": (5e-5, 1.5e-5), "float32": (5e-5, 1.5e-5), "float64": (1.5e-5, 5e-6)})


def test_projection_dtype_is_checked():
    with pytest.raises(ValueError, match="projection_dtype must be"):
        TorchEncoder(make_paper_pipeline(512), device="torch", projection_dtype="float16")


@pytest.mark.slow
def test_float64_projection_on_real_vgg16_maps():
    """Real pool5 maps (VGG16, 256 px, Oxford subset): the float32 paths' error and the float64 projection's gain."""
    from pathlib import Path

    from selconv import ConvFeatureExtractor

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford5k-subset" / "jpg"
    paths = sorted(str(p) for p in folder.glob("*.jpg"))[::40][:24]
    if len(paths) < 24:
        pytest.skip("the Oxford subset is not here")
    extractor = ConvFeatureExtractor("vgg16", max_size=256, device="cpu", progress=False).fit()
    maps = [m.features for m in extractor.transform(paths)]
    rng = np.random.default_rng(0)  # training maps: the real ones, rescaled per cell and flipped
    train = [
        np.ascontiguousarray((m * rng.uniform(0.5, 1.5, m.shape[1:]).astype(np.float32))[:, :, :: rng.choice([1, -1])])
        for m in maps * 30
    ]
    # Measured: numpy 1.2e-3 / 1.7e-4, torch float32 2.1e-3 / 2.7e-4, torch float64 6.6e-4 / 9.0e-5 (max-coordinate /
    # l2): the float32 floor of the numpy reference itself is above the 1e-4 (max-coordinate).
    bounds = {"numpy": (3e-3, 4e-4), "float32": (4e-3, 5e-4), "float64": (1.2e-3, 1.5e-4)}
    agreement_with_float64(train, maps, bounds, small=False)


def test_jpeg_files_to_descriptors_with_the_encoder_as_the_extractors_head(tmp_path):
    """iter_extract(head=TorchEncoder.transform): the maps stay on the device and the descriptors are the numpy
    pipeline's of the maps the extractor returns (decoding on the device, in batches, as on a GPU)."""
    from PIL import Image

    from selconv.extraction import ConvFeatureExtractor

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))

    rng = np.random.default_rng(0)
    paths = []
    for i in range(72):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(rng.integers(0, 256, (36, 48, 3) if i % 3 else (48, 36, 3), dtype=np.uint8)).save(paths[-1])
    extractor = ConvFeatureExtractor(
        net, weights=None, max_size=None, device="cpu", decode="device", n_workers=4, batch_size=5
    ).fit()
    pipeline = make_paper_pipeline(512).set_params(
        pca__n_components=8, encode__embedding__n_clusters=6, encode__embedding__n_clamped=4, rotate__n_dropped=4
    )
    quiet(pipeline.fit, extractor.transform(paths[:60]))
    test = paths[60:]
    stream = extractor.iter_extract(test, head=TorchEncoder(pipeline, device="torch").transform)
    pairs = list(stream)
    assert [position for position, _ in pairs] == list(range(len(test))) and not stream.skipped
    np.testing.assert_allclose(
        np.stack([row for _, row in pairs]), pipeline.transform(extractor.transform(test)), rtol=1e-4, atol=1e-5
    )


def test_the_encoder_as_head_of_padded_batches(tmp_path):
    """pad_to_multiple with TorchEncoder as the head: it gets each padded batch whole (with the maps' sizes), and
    the descriptors are the numpy pipeline's of the maps the extractor returns."""
    from PIL import Image

    from selconv.extraction import ConvFeatureExtractor

    rng = np.random.default_rng(0)
    paths = []
    for i in range(72):
        paths.append(str(tmp_path / f"{i}.png"))
        height, width = ((100, 132), (132, 100), (112, 120), (127, 127))[i % 4]
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(paths[-1])
    extractor = ConvFeatureExtractor(
        "alexnet", weights=None, max_size=None, device="cpu", n_workers=2, batch_size=6, pad_to_multiple=32
    ).fit()
    pipeline = make_paper_pipeline(512).set_params(
        pca__n_components=8, encode__embedding__n_clusters=6, encode__embedding__n_clamped=4, rotate__n_dropped=4
    )
    quiet(pipeline.fit, extractor.transform(paths[:60]))
    encoder = TorchEncoder(pipeline, device="torch")
    calls = []

    def head(maps, sizes=None):  # sizes: only for batches that are padded
        calls.append(1 if sizes is None else len({tuple(size) for size in sizes.tolist()}))
        return encoder.transform(maps, sizes=sizes)

    rows = np.stack([row for _, row in extractor.iter_extract(paths[60:], head=head)])
    # Within 1e-4 of each descriptor's largest coordinate (issue 10's float32 bound): a coordinate near zero may
    # differ by more than 1e-4 of itself, as float32 sums in another order (batch composition, BLAS kernels).
    by_coordinate, _ = relative_errors(rows, pipeline.transform(extractor.transform(paths[60:])))
    assert by_coordinate <= 1e-4, by_coordinate
    assert max(calls) > 1  # batches of several map sizes went whole
