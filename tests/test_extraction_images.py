"""Robust image loading: orientation, colour modes, bit depths, and every bad-input case, raised or skipped."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from selconv.extraction import ConvFeatureExtractor, ImageLoadError, ImageSkippedWarning
from selconv.extraction.images import load_image


def load(item, max_size=None, **kwargs):
    return load_image(item, 0, max_size=max_size, upscale=True, keypoints=kwargs.get("keypoints"))


def gradient(width=40, height=30):
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return (
        np.concatenate(
            [
                np.broadcast_to(x, (height, width, 1)),
                np.broadcast_to(y, (height, width, 1)),
                np.full((height, width, 1), 90.0),
            ],
            axis=2,
        )
        .round()
        .astype(np.uint8)
    )


def tiny_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))


def test_exif_orientation_is_applied(tmp_path):
    pixels = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    loaded = load(str(path))
    assert loaded.pixels.shape == (40, 30, 3)
    expected = np.rot90(pixels, k=-1)
    assert np.abs(loaded.pixels.astype(int) - expected).mean() < 4


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGB"])
def test_colour_modes_convert_to_rgb(tmp_path, mode):
    rgb = gradient()
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"image.{'tif' if mode == 'CMYK' else 'png'}"
    image.save(path)
    loaded = load(str(path))
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (30, 40, 3)
    np.testing.assert_array_equal(loaded.pixels, np.asarray(Image.open(path).convert("RGB")))
    if mode in ("L", "1"):
        assert (loaded.pixels[..., 0] == loaded.pixels[..., 2]).all()
    if mode in ("RGB", "CMYK"):
        assert np.abs(loaded.pixels.astype(int) - rgb).max() <= 2


def test_cmyk_jpeg(tmp_path):
    rgb = gradient()
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=98)
    loaded = load(str(path))
    assert np.abs(loaded.pixels.astype(int) - rgb).mean() < 6  # not inverted, not clipped


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_plain_jpeg_fast_path_decodes_like_pillow(tmp_path, mode):
    path = tmp_path / "plain.jpg"
    Image.fromarray(gradient(64, 48)).convert(mode).save(path, quality=90)
    loaded = load(str(path)).pixels
    np.testing.assert_array_equal(loaded, np.asarray(Image.open(path).convert("RGB")))


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left half opaque red-ish, right half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    loaded = load(str(path)).pixels
    np.testing.assert_array_equal(loaded[:, :6], np.broadcast_to([200, 0, 0], (10, 6, 3)))
    np.testing.assert_array_equal(loaded[:, 6:], 255)
    np.testing.assert_array_equal(load(rgba).pixels, loaded)  # the array path agrees
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((11, 0))
    assert (load(palette).pixels[:, 6:] == 255).all()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    loaded = load(str(path)).pixels[..., 0]
    np.testing.assert_array_equal(loaded, [[0, 64, 128, 255]])
    np.testing.assert_array_equal(load(values).pixels[..., 0], [[0, 64, 128, 255]])


def test_array_inputs_validated():
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load(np.full((4, 4, 3), 2.0))
    with pytest.raises(ImageLoadError, match="shape"):
        load(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="dtype"):
        load(np.zeros((4, 4), np.int64))
    with pytest.raises(ImageLoadError, match="expected a file path"):
        load(42)


@pytest.fixture
def bad_files(tmp_path):
    good = io.BytesIO()
    Image.fromarray(gradient(64, 48)).save(good, format="JPEG")
    data = good.getvalue()
    files = {
        "missing": tmp_path / "missing.jpg",
        "empty": tmp_path / "empty.jpg",
        "text": tmp_path / "notes.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "corrupt": tmp_path / "corrupt.png",
    }
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n")
    files["truncated"].write_bytes(data[: len(data) // 2])
    png = io.BytesIO()
    Image.fromarray(gradient(64, 48)).save(png, format="PNG")
    broken = bytearray(png.getvalue())
    broken[60:120] = b"\x00" * 60  # damage the compressed image data
    files["corrupt"].write_bytes(bytes(broken))
    return {k: str(v) for k, v in files.items()}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("text", "not an image"),
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
    ],
)
def test_bad_files_raise_naming_the_file(bad_files, case, message):
    with pytest.raises(ImageLoadError, match=message) as info:
        load(bad_files[case])
    assert bad_files[case] in str(info.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.fromarray(gradient(64, 48)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageLoadError, match="decompression bomb") as info:
        load(str(path))
    assert str(path) in str(info.value)


def test_extractor_raises_or_skips_and_reports(bad_files, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(gradient(64, 48)).save(good)
    inputs = [str(good), *bad_files.values(), str(good)]
    strict = ConvFeatureExtractor(tiny_net, max_size=32, n_workers=2).fit()
    with pytest.raises(ImageLoadError, match="missing.jpg"):
        strict.transform(inputs)
    lenient = ConvFeatureExtractor(tiny_net, max_size=32, on_error="skip", n_workers=2).fit()
    with pytest.warns(ImageSkippedWarning, match="5 of 7 images"):
        maps = lenient.transform(inputs)
    assert [m.source for m in maps] == [str(good), str(good)]
    extraction = lenient.extract(inputs)
    assert extraction.kept == [0, 6] and [skip.position for skip in extraction.skipped] == [1, 2, 3, 4, 5]
    assert [skip.name for skip in extraction.skipped] == list(bad_files.values())


def test_worker_threads_leave_the_process_warning_state_alone(tmp_path, monkeypatch):
    """warnings.catch_warnings swaps process-wide state: entered in a loader thread, it could drop a warning
    that the caller's own pytest.warns / catch_warnings in the main thread was recording (seen as a flaky test).
    Decoding, cropping and resizing in the worker threads must not use it."""
    entered_in = []
    real = warnings.catch_warnings

    class Spy(real):
        def __enter__(self):
            entered_in.append(threading.current_thread().name)
            return super().__enter__()

    monkeypatch.setattr(warnings, "catch_warnings", Spy)
    paths = []
    for i, (width, height) in enumerate([(64, 48), (30, 20), (80, 60)]):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(gradient(width, height)).save(paths[-1])
    extractor = ConvFeatureExtractor(tiny_net, max_size=40, n_workers=2).fit()
    extractor.transform([*paths, (paths[2], (5, 5, 70, 50))])  # resized up and down, and a box
    assert all(name == threading.main_thread().name for name in entered_in), entered_in


class _NaNNet(torch.nn.Module):
    """A network whose output is NaN, as a float16 overflow or a bad device decode would give."""

    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2) * float("nan")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_non_finite_network_output_is_an_error_naming_the_image(tmp_path, on_error):
    from selconv import ConvFeatureExtractor
    from selconv.exceptions import NonFiniteError

    path = tmp_path / "photo.jpg"
    Image.fromarray(gradient()).save(path)
    extractor = ConvFeatureExtractor(backbone=_NaNNet, max_size=None, n_workers=0, on_error=on_error).fit()
    with pytest.raises(NonFiniteError, match=r"NaN or infinity for 1 image\(s\): .*photo\.jpg"):
        extractor.transform([str(path)])


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))


def test_a_head_applied_on_the_device_gives_the_rows_of_the_maps(tmp_path):
    """iter_extract(head=...): each image's row of the head's output, in input order, skips as without a head;
    the NaN policy is checked on the maps (the head's output of a NaN map may look finite)."""
    from selconv import ConvFeatureExtractor
    from selconv.exceptions import NonFiniteError

    paths = []
    for i, size in enumerate([(64, 48), (48, 64), (64, 48), (40, 40)]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(gradient(*size)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    inputs = [paths[0], str(tmp_path / "bad.jpg"), *paths[1:]]
    extractor = ConvFeatureExtractor(
        backbone=_tiny_net, max_size=None, n_workers=2, batch_size=2, on_error="skip", cache_dir=tmp_path / "cache"
    ).fit()

    def head(maps):  # (B, K, H, W) -> (B, 2K): a GeM-like pair of poolings
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], dim=1)

    stream = extractor.iter_extract(inputs, head=head)
    pairs = list(stream)
    assert not any((tmp_path / "cache").rglob("*.map"))  # no map reached the host to be stored
    expected = [np.concatenate([m.features.mean((1, 2)), m.features.max((1, 2))]) for m in extractor.transform(paths)]
    assert [position for position, _ in pairs] == [0, 2, 3, 4]
    assert [skip.position for skip in stream.skipped] == [1]
    for (_, row), reference in zip(pairs, expected):
        np.testing.assert_allclose(row, reference, rtol=1e-5, atol=1e-6)
    nan_net = ConvFeatureExtractor(backbone=_NaNNet, max_size=None, n_workers=0).fit()
    with pytest.raises(NonFiniteError, match=r"0\.jpg"):
        list(nan_net.iter_extract(paths[:1], head=lambda maps: torch.zeros(len(maps), 1)))
    with pytest.raises(ValueError, match=r"head must return a \(B, D\) tensor for maps of shape \(1, 4, 24, 32\)"):
        list(extractor.iter_extract(paths[:1], head=lambda maps: maps.mean(1)))
    with pytest.raises(ValueError, match="one scale"):
        ConvFeatureExtractor(backbone=_tiny_net, scales=(1.0, 0.5)).fit().iter_extract(paths, head=head)


class _OpenCVThreadsSeen(torch.nn.Module):
    """Records OpenCV's thread count while the extraction runs (the network runs in the calling thread)."""

    seen: list = []

    def forward(self, x):
        import cv2

        _OpenCVThreadsSeen.seen.append(cv2.getNumThreads())
        return torch.nn.functional.max_pool2d(x, 2)


def test_opencv_runs_one_thread_per_worker_while_workers_decode_and_is_restored(tmp_path):
    import cv2

    from selconv import ConvFeatureExtractor

    path = tmp_path / "photo.jpg"
    Image.fromarray(gradient()).save(path)
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        for n_workers, expected in ((2, 1), (0, 3), (1, 3)):  # one worker does not oversubscribe
            extractor = ConvFeatureExtractor(backbone=_OpenCVThreadsSeen, max_size=None, n_workers=n_workers).fit()
            extractor._get_model()  # its probe forward runs outside any extraction
            _OpenCVThreadsSeen.seen.clear()
            extractor.transform([str(path)] * 3)
            assert set(_OpenCVThreadsSeen.seen) == {expected}, (n_workers, _OpenCVThreadsSeen.seen)
            assert cv2.getNumThreads() == 3  # restored
    finally:
        cv2.setNumThreads(before)
