"""Tests for m3trt.data.images: every mode, orientation, draft decoding, inputs and bad files."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from m3trt.data import images
from m3trt.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    PILLOW_FORMATS,
    describe_source,
    load_image,
    read_image_size,
)
from m3trt.errors import ImageDecodeError, InputError, M3Error

S = 16
RED, BLUE, GREEN, YELLOW, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0), (255,) * 3


def assert_output(out: np.ndarray, size: int = S) -> None:
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert out.flags.writeable


def assert_uniform(out: np.ndarray, rgb: tuple[int, int, int], tol: int = 1) -> None:
    assert_output(out)
    diff = np.abs(out.astype(int) - np.array(rgb)).max()
    assert diff <= tol, f"expected {rgb}, got e.g. {out[S // 2, S // 2].tolist()}"


def save(img: Image.Image, path: Path, **params) -> Path:
    img.save(path, **params)
    return path


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: shows where a rotation moved things."""
    img = Image.new("RGB", (width, height), left)
    img.paste(right, (width // 2, 0, width, height))
    return img


def quadrants(width: int, height: int) -> Image.Image:
    """Four distinct colours, so that every flip and rotation gives a different picture."""
    img = Image.new("RGB", (width, height), RED)
    img.paste(GREEN, (width // 2, 0, width, height // 2))
    img.paste(BLUE, (0, height // 2, width // 2, height))
    img.paste(YELLOW, (width // 2, height // 2, width, height))
    return img


def smooth_photo(width: int, height: int) -> Image.Image:
    """A deterministic photo-like image (gradients and soft shapes) for lossy JPEG tests."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / 97.0) * np.cos(y / 131.0)
    g = 255 * x / width
    b = 255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2)
    return Image.fromarray(np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8))


def jpeg_file(tmp_path: Path, name: str = "a.jpg", size=(64, 48), **params) -> Path:
    return save(smooth_photo(*size), tmp_path / name, quality=90, **params)


def reference(img: Image.Image, size: int = S) -> np.ndarray:
    """What Pillow's own orientation + convert + the same resize produce (no draft)."""
    img = ImageOps.exif_transpose(img).convert("RGB")
    small = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(small).astype(int)


# --- Modes ---------------------------------------------------------------------------------


def p_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (20, 12), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    if transparent:
        img.info["transparency"] = 1
    return img


MODE_CASES = [
    ("L", lambda: Image.new("L", (20, 12), 100), "png", (100, 100, 100)),
    ("1", lambda: Image.new("1", (20, 12), 1), "png", WHITE),
    ("P", lambda: p_image(False), "png", (10, 200, 30)),
    ("P-transparent-png", lambda: p_image(True), "png", WHITE),
    ("P-transparent-gif", lambda: p_image(True), "gif", WHITE),
    ("LA-opaque", lambda: Image.new("LA", (20, 12), (50, 255)), "png", (50, 50, 50)),
    ("LA-transparent", lambda: Image.new("LA", (20, 12), (50, 0)), "png", WHITE),
    ("RGBA-opaque", lambda: Image.new("RGBA", (20, 12), (*RED, 255)), "png", RED),
    ("RGBA-transparent", lambda: Image.new("RGBA", (20, 12), (0, 0, 0, 0)), "png", WHITE),
    ("RGBA-half", lambda: Image.new("RGBA", (20, 12), (*RED, 128)), "png", (255, 127, 127)),
    ("CMYK", lambda: Image.new("CMYK", (20, 12), (0, 255, 255, 0)), "tiff", RED),
    ("I;16-mid", lambda: Image.new("I;16", (20, 12), 32768), "png", (128, 128, 128)),
    ("I;16-max", lambda: Image.new("I;16", (20, 12), 65535), "png", WHITE),
    ("I;16-tiff", lambda: Image.new("I;16", (20, 12), 32768), "tiff", (128, 128, 128)),
    ("I-16bit", lambda: Image.new("I", (20, 12), 32768), "tiff", (128, 128, 128)),
    ("I-8bit", lambda: Image.new("I", (20, 12), 100), "tiff", (100, 100, 100)),
    ("F-unit", lambda: Image.new("F", (20, 12), 0.5), "tiff", (128, 128, 128)),
    ("F-8bit", lambda: Image.new("F", (20, 12), 100.0), "tiff", (100, 100, 100)),
]


@pytest.mark.parametrize(
    ("make", "fmt", "expected"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_every_mode_becomes_rgb(tmp_path, make, fmt, expected):
    img = make()
    path = save(img, tmp_path / f"x.{fmt}")
    with Image.open(path) as check:  # The file really stores the mode under test.
        assert check.mode == img.mode or fmt == "gif"
    assert_uniform(load_image(path, S), expected)


def test_i16_is_scaled_where_pillow_convert_clips_to_white(tmp_path):
    path = save(Image.new("I;16", (8, 8), 32768), tmp_path / "grey16.png")
    with Image.open(path) as img:
        assert img.convert("L").getpixel((0, 0)) == 255  # Pillow's plain convert clips.
    assert load_image(path, S)[0, 0].tolist() == [128, 128, 128]


def test_i16_gradient_keeps_its_order(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, S).astype(np.uint16), (S, 1))
    out = load_image(Image.fromarray(ramp), S)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0
    assert row[-1] == 255
    assert np.all(np.diff(row) > 0)


def test_i_beyond_16_bits_is_scaled_by_its_maximum():
    values = np.zeros((8, 8), np.int32)
    values[:, 4:] = 1_000_000
    values[:, :4] = 500_000
    out = load_image(Image.fromarray(values, mode="I"), 8)
    assert out[0, 0, 0] == 128
    assert out[0, 7, 0] == 255


def test_f_with_negative_values_and_nan_maps_into_range():
    values = np.full((8, 8), -1.0, np.float32)
    values[:, 4:] = 1.0
    values[0, 0] = np.nan
    out = load_image(Image.fromarray(values, mode="F"), 8)
    assert_output(out, 8)
    assert out[4, 0, 0] == 0
    assert out[4, 7, 0] == 255


def test_la_premultiplied_mode_is_supported():
    img = Image.new("LA", (8, 8), (50, 255)).convert("La")
    assert_uniform(load_image(img, S), (50, 50, 50))


def test_rgb_png_with_a_transparent_colour_key_becomes_white(tmp_path):
    img = halves(20, 10, left=RED, right=BLUE)
    path = save(img, tmp_path / "key.png", transparency=BLUE)
    out = load_image(path, S)
    assert out[S // 2, 0].tolist() == list(RED)
    assert out[S // 2, -1].tolist() == list(WHITE)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 12), colour) for colour in (RED, BLUE, GREEN)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as check:
        assert check.n_frames == 3
    assert_uniform(load_image(path, S), RED)


# --- Orientation ----------------------------------------------------------------------------


def test_exif_orientation_6_rotates_a_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(halves(60, 40), tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(path, S).astype(int)
    # The left half (red) ends up on top, the right half (blue) at the bottom.
    assert np.abs(out[: S // 2 - 2] - RED).max() < 40
    assert np.abs(out[S // 2 + 2 :] - BLUE).max() < 40
    with Image.open(path) as img:
        img.draft("RGB", (S, S))  # As load_image does: 60x40 decodes at 30x20.
        assert np.abs(out - reference(img)).max() <= 1


def test_exif_orientation_survives_draft_on_a_big_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(halves(1600, 1200), tmp_path / "big.jpg", exif=exif, quality=95)
    out = load_image(path, S).astype(int)
    assert np.abs(out[: S // 2 - 2] - RED).max() < 40
    assert np.abs(out[S // 2 + 2 :] - BLUE).max() < 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(quadrants(40, 24), tmp_path / "q.png", exif=exif)
    out = load_image(path, S).astype(int)
    with Image.open(path) as img:
        expected = reference(img)
    assert np.abs(out - expected).max() <= 2
    if orientation != 1:  # The test image really changes under this orientation.
        assert np.abs(out - reference(quadrants(40, 24))).max() > 100


def test_broken_exif_falls_back_to_no_rotation(tmp_path):
    path = save(halves(60, 40), tmp_path / "badexif.jpg", exif=b"Exif\x00\x00garbage!", quality=95)
    out = load_image(path, S).astype(int)
    assert np.abs(out[:, : S // 2 - 2] - RED).max() < 40  # Left stays left.
    assert np.abs(out[:, S // 2 + 2 :] - BLUE).max() < 40


# --- Draft ------------------------------------------------------------------------------------


def test_draft_is_used_for_jpeg_and_matches_a_full_decode(tmp_path, monkeypatch):
    path = jpeg_file(tmp_path, "big.jpg", size=(2000, 1500))
    calls = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    drafted = load_image(path, 224)
    assert calls == [("RGB", (224, 224), (500, 375))]  # Decoded at 1/4 scale.
    with Image.open(path) as img:
        full = load_image(img, 224)  # A PIL image is never drafted.
    assert len(calls) == 1
    assert_output(drafted, 224)
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 6


def test_draft_never_decodes_below_the_requested_size(tmp_path):
    path = jpeg_file(tmp_path, "wide.jpg", size=(1000, 200))
    with Image.open(path) as img:
        img.draft("RGB", (160, 160))
        assert min(img.size) >= 160
    assert_output(load_image(path, 160), 160)


# --- Bad files --------------------------------------------------------------------------------


def assert_decode_error(excinfo, path: Path | str, reason: str) -> None:
    message = str(excinfo.value)
    assert message.startswith(f"{path}: "), message
    assert reason in message, message
    assert "\n" not in message


def test_truncated_jpeg(tmp_path):
    data = jpeg_file(tmp_path, "full.jpg", size=(200, 150)).read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "truncated image file")


def test_truncated_png(tmp_path):
    data = save(smooth_photo(200, 150), tmp_path / "full.png").read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "truncated image file")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "empty file (0 bytes)")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "not an image (Pillow cannot identify it")


def test_formats_outside_the_list_are_refused(tmp_path):
    path = save(Image.new("RGB", (8, 8)), tmp_path / "x.eps")  # EPS would run Ghostscript.
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "not an image")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "a.jpg"
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "file not found")


def test_directory(tmp_path):
    path = tmp_path / "folder.jpg"
    path.mkdir()
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(str(path), S)
    assert_decode_error(excinfo, path, "is a folder, not a regular file")


def test_permission_denied_simulated(tmp_path, monkeypatch):
    path = jpeg_file(tmp_path)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images.Image, "open", refuse)
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    assert_decode_error(excinfo, path, "permission denied")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_real(tmp_path):
    path = jpeg_file(tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(ImageDecodeError) as excinfo:
            load_image(path, S)
    finally:
        path.chmod(0o644)
    assert_decode_error(excinfo, path, "permission denied")


def test_over_the_pixel_limit(tmp_path):
    path = save(Image.new("RGB", (20, 20)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S, max_pixels=100)
    assert_decode_error(excinfo, path, "image too large (20x20 = 400 pixels; the limit is 100")
    assert_output(load_image(path, S, max_pixels=400))  # The limit is inclusive.


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = jpeg_file(tmp_path)
    loads = []
    real_load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "load", lambda self: loads.append(1) or real_load(self)
    )
    with pytest.raises(ImageDecodeError, match="image too large"):
        load_image(path, S, max_pixels=10)
    assert loads == []


def test_pixel_limit_applies_to_arrays_and_pil_images():
    with pytest.raises(ImageDecodeError, match=r"^<array>: image too large"):
        load_image(np.zeros((20, 20, 3), np.uint8), S, max_pixels=100)
    with pytest.raises(ImageDecodeError, match=r"^<image>: image too large"):
        load_image(Image.new("RGB", (20, 20)), S, max_pixels=100)


def test_pillow_warning_is_replaced_by_our_limit(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (20, 20), RED), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: Pillow would warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_uniform(load_image(path, S), RED)


def test_pillow_bomb_error_becomes_image_decode_error(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (40, 40)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 1600 > 2 * 300: Pillow raises.
    with pytest.raises(ImageDecodeError) as excinfo:
        load_image(path, S)
    # worded as m3trt's own --max-pixels refusal, with Pillow's limit (2 * 300)
    assert_decode_error(excinfo, path, "image too large (1,600 pixels; the limit is 600 pixels")


def test_global_pillow_and_warning_state_is_unchanged(tmp_path):
    path = jpeg_file(tmp_path)
    before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    from PIL import ImageFile

    load_image(path, S)
    with pytest.raises(ImageDecodeError):
        load_image(path, S, max_pixels=10)
    assert (Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decode_error_is_an_input_error():
    assert issubclass(ImageDecodeError, InputError)
    assert issubclass(ImageDecodeError, M3Error)


# --- Inputs -----------------------------------------------------------------------------------


@pytest.fixture
def png_path(tmp_path) -> Path:
    return save(quadrants(40, 24), tmp_path / "q.png")


def test_every_input_kind_gives_the_same_pixels(png_path):
    expected = load_image(png_path, S)
    assert_output(expected)
    data = png_path.read_bytes()
    with Image.open(png_path) as img:
        rgb = np.asarray(img.convert("RGB"))
        sources = [
            str(png_path),
            data,
            bytearray(data),
            memoryview(data),
            io.BytesIO(data),
            img,
            rgb,
            rgb[:, ::-1][:, ::-1],  # A non-contiguous view.
        ]
        for source in sources:
            np.testing.assert_array_equal(load_image(source, S), expected)


def test_open_file_object_is_left_open(png_path):
    with open(png_path, "rb") as fh:
        assert_output(load_image(fh, S))
        assert not fh.closed


def test_grayscale_array():
    grey = np.full((10, 30), 77, np.uint8)
    assert_uniform(load_image(grey, S), (77, 77, 77), tol=0)


def test_result_is_a_fresh_writable_array(png_path):
    out = load_image(png_path, S)
    out[:] = 0  # Training augmentation may work in place.
    assert load_image(png_path, S).any()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((8, 8, 3), np.uint16), "dtype uint8"),
        (np.zeros((8, 8, 4), np.uint8), r"shape \(H, W\) or \(H, W, 3\)"),
        (np.zeros((8,), np.uint8), r"shape \(H, W\) or \(H, W, 3\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(H, W\) or \(H, W, 3\)"),
    ],
)
def test_bad_arrays_raise_value_error(array, message):
    with pytest.raises(ValueError, match=message):
        load_image(array, S)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "16"])
def test_bad_size_raises_value_error(png_path, size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_image(png_path, size)


def test_numpy_integer_size_is_accepted(png_path):
    assert_output(load_image(png_path, np.int64(S)))


def test_unsupported_source_type_raises_type_error():
    with pytest.raises(TypeError, match="not int"):
        load_image(42, S)


def test_error_names_for_non_path_sources():
    with pytest.raises(ImageDecodeError, match=r"^<bytes>: empty file \(0 bytes\)$"):
        load_image(b"", S)
    with pytest.raises(ImageDecodeError, match=r"^upload-17: not an image"):
        load_image(b"hello", S, name="upload-17")
    with pytest.raises(ImageDecodeError, match=r"^<stream>: empty file"):
        load_image(io.BytesIO(), S)


def test_truncated_bytes_use_the_given_name(tmp_path):
    data = jpeg_file(tmp_path, size=(200, 150)).read_bytes()
    with pytest.raises(ImageDecodeError, match=r"^s3://bucket/a.jpg: truncated image file"):
        load_image(data[: len(data) // 2], S, name="s3://bucket/a.jpg")


def test_describe_source(tmp_path):
    path = tmp_path / "a.jpg"
    assert describe_source(path) == str(path)
    assert describe_source("x.png") == "x.png"
    assert describe_source(b"..") == "<bytes>"
    assert describe_source(np.zeros(1)) == "<array>"
    assert describe_source(Image.new("L", (1, 1))) == "<image>"
    assert describe_source(io.BytesIO()) == "<stream>"
    assert describe_source(b"..", "given") == "given"


# --- Sizes and constants ----------------------------------------------------------------------


def test_read_image_size_reads_only_the_header(tmp_path):
    data = jpeg_file(tmp_path, size=(200, 150)).read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])  # Pixels are missing; the header is not.
    assert read_image_size(path) == (200, 150)


def test_read_image_size_errors(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ImageDecodeError) as excinfo:
        read_image_size(path)
    assert_decode_error(excinfo, path, "file not found")


def test_constants():
    assert DEFAULT_MAX_PIXELS == 100_000_000
    assert isinstance(IMAGE_EXTENSIONS, frozenset)
    expected = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
    assert expected == IMAGE_EXTENSIONS
    registered = Image.registered_extensions()
    for ext in IMAGE_EXTENSIONS:  # Every accepted extension is one Pillow may open here.
        assert ext == ext.lower()
        assert registered[ext] in PILLOW_FORMATS


@pytest.mark.parametrize("ext", sorted(IMAGE_EXTENSIONS))
def test_every_accepted_extension_decodes(tmp_path, ext):
    img = Image.new("L", (20, 12), 90) if ext == ".pgm" else Image.new("RGB", (20, 12), RED)
    path = save(img, tmp_path / f"x{ext}")
    expected = (90, 90, 90) if ext == ".pgm" else RED
    assert_uniform(load_image(path, S), expected, tol=3)
