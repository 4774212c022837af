"""Encoders saved by selconv 0.1.0, whose classes have since moved or been renamed, still load and give the
same output (the old-name -> new-name map of selconv.index._persistence). The fixtures were written by
selconv 0.1.0 with tests/data/selconv-0.1.0/make_fixtures.py."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_conv_maps, make_local_sets

from selconv.index._persistence import RENAMED_SELCONV_TYPES, encoder_from_file, trusted_types

FIXTURES = Path(__file__).parent / "data" / "selconv-0.1.0"


def _resolve(qualified: str):
    module, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(module), name, None)


def test_every_new_name_is_a_trusted_class_and_no_old_name_is_trusted():
    for old, new in RENAMED_SELCONV_TYPES.items():
        assert new in trusted_types() and old not in trusted_types()
        cls = _resolve(new)
        assert isinstance(cls, type) and f"{cls.__module__}.{cls.__qualname__}" == new


@pytest.mark.parametrize(
    ("name", "make_input", "steps"),
    [
        (
            "pooled",
            lambda: make_conv_maps(n_images=24, n_channels=16, random_state=1),
            ["selconv.pooling.GeM", "selconv.postprocessing.whitening.PCAWhitening", "selconv.hashing.rba.RBAHasher"],
        ),
        (
            "local",
            lambda: make_local_sets(counts=(40, 0, 23, 31, 15, 9, 30, 12), n_features=16, random_state=1),
            [
                "selconv.local_pca.LocalPCA",
                "selconv.encoding.EncodeAggregate",
                "selconv.postprocessing.rotation.RotationNormalizer",
                "selconv.postprocessing.power.PowerNormalizer",
            ],
        ),
    ],
)
def test_encoder_saved_by_0_1_0_loads_as_the_renamed_classes_with_the_same_output(name, make_input, steps):
    encoder = encoder_from_file(FIXTURES / f"{name}.skops")
    assert [f"{type(step).__module__}.{type(step).__qualname__}" for _, step in encoder.steps] == steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the empty image of the local sets
        output = encoder.transform(make_input())
    np.testing.assert_allclose(output, np.load(FIXTURES / "expected.npz")[name], rtol=1e-5, atol=1e-6)
