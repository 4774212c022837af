"""ConvFeatureExtractor(compile=True): torch.compile's settings, maps equal to eager ones, pickling, the cache key,
and one real compilation on the CPU (slow)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from selconv.extraction import ConvFeatureExtractor
from selconv.extraction._network import normalize_pixels


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
    )


def images():
    """Both orientations, a third shape, a tail batch and a batch of one image (batch_size=2 below)."""
    rng = np.random.default_rng(0)
    shapes = [(48, 64), (64, 48), (48, 64), (64, 48), (48, 64), (40, 56), (64, 48)]
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


def make_extractor(**params):
    params = {"weights": None, "max_size": None, "device": "cpu", "n_workers": 0, "batch_size": 2, **params}
    return ConvFeatureExtractor(tiny_net, **params)


@pytest.fixture
def compile_calls(monkeypatch):
    """torch.compile replaced by a spy that records its arguments and returns the module unchanged."""
    calls = []

    def spy(module, **kwargs):
        calls.append((module, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def assert_same_maps(actual, expected):
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        assert a.image_size == b.image_size
        np.testing.assert_array_equal(a.features, b.features)


def test_compile_wraps_the_network_once_per_call(compile_calls):
    eager = make_extractor().fit()
    expected = eager.transform(images())
    assert compile_calls == []
    compiled = clone(eager).set_params(compile=True).fit()
    assert compile_calls == []  # fit builds the network only
    assert_same_maps(compiled.transform(images()), expected)
    # the network and the pixels' normalisation (one fused kernel), once each per call
    assert [(compiled_object, settings) for compiled_object, settings in compile_calls] == [
        (compiled._model, {"dynamic": True}),
        (normalize_pixels, {"dynamic": True}),
    ]
    # same computation to float rounding: the cache key ignores it, as it ignores batch_size and device
    assert compiled._output_signature() == eager._output_signature()
    assert make_extractor(compile=True).get_params()["compile"] is True
    with pytest.raises(InvalidParameterError, match="compile"):
        make_extractor(compile="yes").fit()


def test_pickled_compiled_extractor_transforms(compile_calls):
    expected = make_extractor().fit().transform(images())
    fitted = make_extractor(compile=True).fit()
    fitted.transform(images()[:1])
    loaded = pickle.loads(pickle.dumps(fitted))
    assert loaded.compile is True and loaded._model is None
    assert_same_maps(loaded.transform(images()), expected)
    assert [compiled_object for compiled_object, _ in compile_calls[2:]] == [loaded._model, normalize_pixels]


def test_extractor_saved_before_cuda_graphs_existed_loads_without_them():
    fitted = make_extractor().fit()
    state = fitted.__getstate__()
    del state["cuda_graphs"]
    loaded = ConvFeatureExtractor.__new__(ConvFeatureExtractor)
    loaded.__setstate__(state)
    assert loaded.cuda_graphs is False
    assert_same_maps(loaded.transform(images()), fitted.transform(images()))


def _inductor_problem() -> str | None:
    """Why torch.compile cannot run on this machine's CPU (no C++ compiler, no Python headers, ...), or None."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as error:  # the environment, not selconv: the test is skipped with the reason
        return f"torch.compile does not run on this CPU: {type(error).__name__}: {str(error)[:300]}"
    return None


@pytest.mark.slow
def test_real_compile_matches_eager_and_recompiles_little():
    problem = _inductor_problem()
    if problem is not None:
        pytest.skip(problem)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # an empty budget of compiled graphs (torch shares one per process)
    expected = make_extractor().fit().transform(images())
    compiled = make_extractor(compile=True).fit()
    before = counters["stats"]["unique_graphs"]
    maps = compiled.transform(images())
    graphs = counters["stats"]["unique_graphs"] - before
    assert len(maps) == len(expected)
    for a, b in zip(maps, expected):
        assert a.image_size == b.image_size
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5 * float(np.abs(b.features).max()))
    # three image shapes and batches of 2 and 1: for the network and for the pixels' normalisation each, one
    # dynamic graph and one for the single image
    assert graphs <= 4
    again = compiled.transform(images())  # a new wrapper of the same module: nothing compiled again
    assert counters["stats"]["unique_graphs"] - before == graphs
    assert_same_maps(again, maps)


@pytest.mark.slow
def test_real_compile_of_padded_batches_matches_eager():
    """pad_to_multiple under torch.compile: the padded forward (the images' sizes as a tensor argument) compiles,
    gives the eager maps, and nine shapes under one batch shape compile one graph (and one for the
    normalisation of the pixels)."""
    problem = _inductor_problem()
    if problem is not None:
        pytest.skip(problem)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    rng = np.random.default_rng(0)
    shapes = [(48, 64), (64, 48), (40, 64), (64, 48), (48, 64), (40, 56), (64, 48), (33, 60), (60, 37)]
    pixels = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    params = {"weights": None, "max_size": None, "device": "cpu", "n_workers": 0, "batch_size": 3}
    expected = ConvFeatureExtractor("vgg16", **params).fit().transform(pixels)
    compiled = ConvFeatureExtractor("vgg16", compile=True, pad_to_multiple=32, **params).fit()
    before = counters["stats"]["unique_graphs"]
    maps = compiled.transform(pixels)
    assert counters["stats"]["unique_graphs"] - before == 2  # the network's, the pixels' normalisation's
    for a, b in zip(maps, expected):
        assert a.features.shape == b.features.shape
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5 * float(np.abs(b.features).max()))
