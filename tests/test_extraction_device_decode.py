"""decode="device": JPEG files decoded (torchvision) and resized (torch) on the extractor's device, CPU fallback."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selconv.extraction import ConvFeatureExtractor
from selconv.extraction._device_decode import decode_resize
from selconv.extraction.images import load_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford5k-subset" / "jpg"


def photo(width=96, height=72, seed=0):
    """A smooth image with texture (JPEG-friendly, not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0)], axis=2)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))


def extractor(decode, max_size=64):
    return ConvFeatureExtractor(
        tiny_net, weights=None, max_size=max_size, device="cpu", decode=decode, n_workers=2
    ).fit()


def test_decode_option_is_validated():
    with pytest.raises(ValueError, match="decode"):
        ConvFeatureExtractor(tiny_net, weights=None, decode="cuda").fit()


@pytest.mark.parametrize("size", [(60, 45), (130, 98), (96, 72)])  # down, up, unchanged
def test_device_resize_is_near_the_cpu_path(tmp_path, size):
    """torchvision decode + torch bicubic antialiased resize vs OpenCV + Pillow: one grey level at most."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo()).save(path, quality=92)
    ours = decode_resize([path.read_bytes()], [size], torch.device("cpu"))[0].numpy()
    expected = load_image(str(path), 0, max_size=max(size), upscale=True, keypoints=None).pixels
    assert ours.shape == expected.shape == (size[1], size[0], 3)
    difference = np.abs(ours.astype(int) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())


def test_fallback_inputs_give_the_cpu_path_maps(tmp_path):
    """PNG, CMYK JPEG, EXIF-rotated JPEG, arrays and boxes take the CPU path: the same maps as decode="cpu"."""
    pixels = photo()
    png, cmyk, rotated = tmp_path / "a.png", tmp_path / "cmyk.jpg", tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(png)
    Image.fromarray(pixels).convert("CMYK").save(cmyk, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(rotated, exif=exif, quality=95)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pixels).save(plain, quality=95)
    inputs = [str(png), str(cmyk), str(rotated), pixels, (str(plain), (4, 4, 60, 50))]
    for ours, reference in zip(extractor("device").transform(inputs), extractor("cpu").transform(inputs)):
        np.testing.assert_array_equal(ours.features, reference.features)
        assert ours.image_size == reference.image_size


def test_plain_jpegs_near_the_cpu_path_and_truncated_files_still_named(tmp_path, monkeypatch):
    from selconv.extraction import _device_decode

    calls = []  # one entry per image decoded on the device
    decode = _device_decode._decode_resize_locked
    monkeypatch.setattr(_device_decode, "_decode_resize_locked", lambda *args: calls.extend(args[0]) or decode(*args))
    paths = []
    for seed, size in enumerate([(96, 72), (72, 96), (96, 72)]):
        paths.append(str(tmp_path / f"{seed}.jpg"))
        Image.fromarray(photo(*size, seed=seed)).save(paths[-1], quality=92)
    ours = extractor("device").transform(paths)
    assert len(calls) == 3  # all three took the device path
    reference = extractor("cpu").transform(paths)
    for a, b in zip(ours, reference):
        assert a.image_size == b.image_size and a.features.shape == b.features.shape
        assert np.abs(a.features - b.features).max() <= 0.05 * np.abs(b.features).max()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(Path(paths[0]).read_bytes()[:600])
    with pytest.raises(ValueError, match="cut.jpg"):
        extractor("device").transform([str(truncated)])


def test_threaded_device_decoding_gives_the_maps_of_decoding_in_the_calling_thread(tmp_path):
    """Worker threads decoding while the network runs (on CUDA when there is one: the side stream and
    ``record_consumer`` keep nvJPEG from writing into memory the network still uses) give the maps, all finite,
    of decoding one image at a time in the calling thread."""
    from selconv.extraction._device_decode import record_consumer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = []
    for seed in range(24):  # 96 x 72 needs no resize at max_size=96: the decoder's own buffer reaches the network
        paths.append(str(tmp_path / f"{seed}.jpg"))
        Image.fromarray(photo(*[(96, 72), (130, 98), (72, 96)][seed % 3], seed=seed)).save(paths[-1], quality=90)

    def maps(n_workers):
        model = ConvFeatureExtractor(
            tiny_net, weights=None, max_size=96, device=device, decode="device", n_workers=n_workers, batch_size=4
        )
        return [m.features for m in model.fit().transform(paths)]

    for threaded, alone in zip(maps(8), maps(0)):
        assert np.isfinite(threaded).all()
        np.testing.assert_allclose(threaded, alone, rtol=1e-5, atol=1e-6)
    record_consumer([torch.zeros(2), np.zeros(2)], "cpu")  # nothing to record on the CPU


def _decode_in_threads(raws, size, monkeypatch):
    """decode_one from one thread per file, all queued while the lock is held, then let go: (results, batches)."""
    import threading

    from selconv.extraction import _device_decode

    batches = []
    decode = _device_decode._decode_resize_locked
    monkeypatch.setattr(
        _device_decode, "_decode_resize_locked", lambda *args: batches.append(len(args[0])) or decode(*args)
    )
    results = [None] * len(raws)

    def one(i):
        try:
            results[i] = _device_decode.decode_one(raws[i], size, "cpu")
        except (RuntimeError, ValueError) as error:
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(raws))]
    with _device_decode._LOCK:
        for thread in threads:
            thread.start()
        while len(_device_decode._WAITING.get("cpu", [])) < len(raws):
            threading.Event().wait(0.001)
    for thread in threads:
        thread.join()
    return results, batches


def jpeg_bytes(n):
    out = []
    for seed in range(n):
        buffer = io.BytesIO()
        Image.fromarray(photo(seed=seed)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_requests_waiting_for_the_decoder_are_decoded_in_one_batch(monkeypatch):
    raws = jpeg_bytes(5)
    results, batches = _decode_in_threads(raws, (60, 45), monkeypatch)
    assert batches[0] == 5 and sum(batches) == 5  # the first thread through decodes all five; the others wait
    for raw, pixels in zip(raws, results):
        np.testing.assert_array_equal(pixels.numpy(), decode_resize([raw], [(60, 45)], "cpu")[0].numpy())


def test_a_file_that_fails_its_batch_fails_alone(monkeypatch):
    raws = jpeg_bytes(3)
    raws.insert(1, raws[0][:400] + b"\xff\xd9")  # a header, then nothing: torchvision raises
    results, batches = _decode_in_threads(raws, (96, 72), monkeypatch)
    assert batches == [4, 1, 1, 1, 1]  # the batch failed, then each file alone
    assert isinstance(results[1], (RuntimeError, ValueError))
    assert all(isinstance(results[i], torch.Tensor) and results[i].shape == (72, 96, 3) for i in (0, 2, 3))
