"""Image decoding shared by training and the runtime: any source in, a square uint8 RGB array out.

Both sides must decode identically (a model sees at run time what it saw in training), and the
runtime annotates millions of photos, so this module is fast (JPEG DCT scaling, orientation applied
to the small image) and turns every bad file into one `ImageDecodeError` line naming the file.
numpy and Pillow only: the runtime never imports torch.
"""

from __future__ import annotations

import io
import operator
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeAlias

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from m3trt.data.native_memory import TRIM_AFTER_BYTES, release_free_memory
from m3trt.data.safe_open import open_regular
from m3trt.errors import ImageDecodeError, InputError

DEFAULT_MAX_PIXELS = 100_000_000
"""Decompression-bomb limit (width * height, read from the header before decoding)."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
"""Lowercase file extensions accepted when scanning folders."""

DEFAULT_DECODE_MEMORY = 1 << 30
"""Bytes of decoder memory all threads together may hold (``DecodeBudget``)."""

PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
"""Formats Pillow may identify. Limiting them keeps untrusted files away from plugins such as EPS,
which runs Ghostscript; a JPEG named .png still decodes, because Pillow goes by content."""

ImageSource: TypeAlias = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)
"""A path, raw bytes, a binary file-like object, a PIL image or a uint8 numpy array."""

TRUNCATED = "truncated image file (the file ends before the image data does)"
_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# The same table as ImageOps.exif_transpose.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DecodeBudget:
    """Decoder memory shared by threads: each decode holds its estimated peak bytes while it runs.

    A 389 KB PNG can declare 100 megapixels and need over a gigabyte to decode; N worker threads
    decoding N of those at once multiply that by N. With a budget, decodes wait for memory the
    way they would wait for a core: many small images run side by side, large ones one by one.
    An image costing more than the whole budget runs alone (``max_pixels`` bounds that case).
    """

    def __init__(self, limit_bytes: int = DEFAULT_DECODE_MEMORY) -> None:
        self.limit = _positive_int(limit_bytes, "decode memory")
        self.in_use = 0
        self.peak = 0  # the most bytes ever held at once (tests and benchmarks read it)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = max(1, min(cost, self.limit))
        with self._cond:
            while self.in_use + cost > self.limit:
                self._cond.wait()
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            if cost >= TRIM_AFTER_BYTES:
                release_free_memory()  # before the next large decode may start
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


def decode_cost(img: Image.Image) -> int:
    """Estimated peak bytes to decode ``img`` (after draft) into RGB and resize it.

    The decoded image itself plus what `_to_rgb` allocates at full size: an RGB copy (3 B/px),
    and for transparent images an RGBA copy too (4 B/px, unless already RGBA); 16-bit and float
    greys go through numpy copies (uint32 or float64). Resizing happens after a reduce, so its
    buffers are small; 1 B/px covers them.
    """
    width, height = img.size
    mode = img.mode
    if mode in ("I", "F"):
        per_pixel = 4 + 3 * 8 + 1 + 3
    elif mode.startswith("I;16"):
        per_pixel = 2 + 2 * 4 + 1 + 3
    else:
        try:
            per_pixel = Image.getmodebands(mode)  # 8-bit bands: one byte each
        except (KeyError, ValueError):
            per_pixel = 4
        if mode in _ALPHA_MODES or "transparency" in img.info:
            per_pixel += (0 if mode == "RGBA" else 4) + 3
        elif mode != "RGB":
            per_pixel += 3
        per_pixel += 1
    return width * height * per_pixel


def load_image(
    source: ImageSource,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode `source` into a writable, C-contiguous uint8 array of shape (size, size, 3), RGB.

    The image is squashed to the square, not cropped: in multi-label annotation objects near the
    edges count. Raises `ImageDecodeError` for a file that cannot be decoded (message starts with
    the path, or `name`), `ValueError` for a bad `size`/`max_pixels` or a numpy array that is not
    uint8 (H, W) or (H, W, 3), and `TypeError` for an unsupported source type.
    """
    size = _positive_int(size, "size")
    max_pixels = _positive_int(max_pixels, "max_pixels")
    where = describe_source(source, name)
    if isinstance(source, np.ndarray):
        return _decode(_image_from_array(source), size, where, max_pixels)
    if isinstance(source, Image.Image):
        # The caller's image: no draft, which would change their object.
        return _decode(source, size, where, max_pixels)
    with _open(source, where) as img:
        return _decode(img, size, where, max_pixels, draft=True, budget=budget)


def pillow_pixel_limit() -> int | None:
    """The most pixels Pillow opens (it raises above twice ``Image.MAX_IMAGE_PIXELS``); None if
    the caller switched Pillow's guard off. ``--max-pixels`` above it is refused up front."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return (width, height) as stored in the file's header, without decoding the pixels.

    EXIF orientation is not applied: this is the stored size, as `identify` reports it.
    """
    where = describe_source(path, None)
    with _open(path, where) as img:
        return img.size


def describe_source(source: ImageSource, name: str | None = None) -> str:
    """Name the source for error messages: `name` if given, else the path or a placeholder."""
    if name is not None:
        return name
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<image>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def _positive_int(value: int, what: str) -> int:
    """Accept any integer type (numpy ints included), refuse bools, floats and values below 1."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be a positive integer, not {value!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


@contextmanager
def _open(source: ImageSource, where: str) -> Iterator[Image.Image]:
    """Open lazily: Pillow reads the header (format, mode, size), not the pixels. A path is
    opened as a regular file first: Pillow's own open of a FIFO blocked for ever (a calibration
    folder with a FIFO named .jpg hung ``calibrate``, Ctrl-C included)."""
    if not isinstance(source, str | os.PathLike):
        with _pillow_open(_as_openable(source), source, where) as img:
            yield img
        return
    try:
        f = open_regular(source, "image")
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{where}: {_reason(exc, source)}") from exc
    except InputError as exc:  # "NAME: image is a FIFO ...": said with this call's name
        detail = str(exc).removeprefix(f"{os.fsdecode(source)}: ")
        raise ImageDecodeError(f"{where}: {detail}") from None
    with f, _pillow_open(f, source, where) as img:
        yield img


def _pillow_open(fp: str | os.PathLike | IO[bytes], source: ImageSource, where: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our exact, per-call max_pixels replaces Pillow's global warning; its hard error
            # (above 2 * Image.MAX_IMAGE_PIXELS) still fires and is reported by _reason.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=PILLOW_FORMATS)
    except Exception as exc:
        raise ImageDecodeError(f"{where}: {_reason(exc, source)}") from exc


def _as_openable(source: ImageSource) -> str | os.PathLike | IO[bytes]:
    """What `Image.open` takes: a path or a binary stream (raw bytes are wrapped)."""
    if isinstance(source, str | os.PathLike):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if callable(getattr(source, "read", None)):
        return source
    raise TypeError(
        "image source must be a path, bytes, a binary file object, a PIL image or a numpy "
        f"array, not {type(source).__name__}"
    )


def _check_pixels(img: Image.Image, where: str, max_pixels: int) -> None:
    """Refuse empty images and images over `max_pixels`, from the size in the header."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{where}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{where}: image too large ({width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,} pixels, a guard against decompression bombs)"
        )


def _decode(
    img: Image.Image,
    size: int,
    where: str,
    max_pixels: int,
    *,
    draft: bool = False,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Check the size, then decode, convert and resize; Pillow failures become one-line errors."""
    _check_pixels(img, where, max_pixels)
    try:
        if draft and img.format in _DRAFT_FORMATS:
            # DCT scaling: decode at 1/2, 1/4 or 1/8 scale, never below the requested size.
            img.draft("RGB", (size, size))
        with budget.hold(decode_cost(img)) if budget is not None else _no_hold():
            img.load()
            transpose = _orientation(img)
            rgb = _to_rgb(img)
            small = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            del rgb
            if draft:  # our own image: drop its full-size pixels before handing the budget back
                img.im = None
    except Exception as exc:
        raise ImageDecodeError(f"{where}: {_reason(exc, None)}") from exc
    if transpose is not None:
        # Rotating the small square gives the same pixels as rotating the big original first.
        small = small.transpose(transpose)
    return np.array(small, dtype=np.uint8, order="C")


@contextmanager
def _no_hold() -> Iterator[None]:
    yield


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The transpose that the EXIF orientation tag asks for; None if absent, invalid or broken."""
    try:
        return _ORIENTATION.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return None  # Broken EXIF must not cost the image: keep it as stored.


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB: alpha over white, wide greys scaled, everything else by Pillow."""
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(img).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        if mode == "La":  # Pillow converts premultiplied La only to LA.
            img = img.convert("LA")
        return _over_white(img if mode == "RGBA" else img.convert("RGBA"))
    if mode == "RGB":
        return img
    return img.convert("RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite over white: transparent areas of logos and icons are white, not black."""
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit and float grey to 8 bits; Pillow's own convert clips them to white."""
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = (values.astype(np.uint32) + 128) // 257  # round(v / 257): 65535 -> 255
    else:
        lo, hi = _value_range(values, is_float=img.mode == "F")
        clean = np.nan_to_num(values.astype(np.float64), nan=lo, posinf=hi, neginf=lo)
        scaled = np.rint(np.clip((clean - lo) * (255.0 / (hi - lo)), 0.0, 255.0))
    return Image.fromarray(scaled.astype(np.uint8))


def _value_range(values: np.ndarray, *, is_float: bool) -> tuple[float, float]:
    """The range to map onto 0..255: from 0 (or the minimum, if negative) to the smallest of
    1.0 (floats only), 255 and 65535 that holds the maximum, else the maximum itself.

    A standard range keeps absolute brightness (a 16-bit mid-grey stays mid-grey, a dark
    photo stays dark); only data beyond 16 bits is stretched by its actual maximum.
    """
    finite = values[np.isfinite(values)] if is_float else values
    if finite.size == 0:
        return 0.0, 1.0
    lo = min(0.0, float(finite.min()))
    peak = float(finite.max())
    limits = (1.0, 255.0, 65535.0) if is_float else (255.0, 65535.0)
    hi = next((limit for limit in limits if peak <= limit), peak)
    return lo, hi


def _image_from_array(array: np.ndarray) -> Image.Image:
    """Wrap a uint8 (H, W) grey or (H, W, 3) RGB array; anything else is the caller's bug."""
    if array.dtype != np.uint8:
        raise ValueError(f"image array must have dtype uint8, not {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3):
        return Image.fromarray(array)
    raise ValueError(f"image array must have shape (H, W) or (H, W, 3), not {tuple(array.shape)}")


def _reason(exc: BaseException, source: ImageSource | None) -> str:
    """One short line saying why Pillow failed, phrased for the person who owns the file."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason(exc, source)
    if "truncated" in str(exc).lower():
        return TRUNCATED
    detail = " ".join(str(exc).split()) or "no details"
    return f"cannot decode the image ({type(exc).__name__}: {detail})"


def _unidentified(_exc: BaseException, source: ImageSource | None) -> str:
    if _is_empty(source):
        return "empty file (0 bytes)"
    formats = ", ".join(PILLOW_FORMATS)
    return f"not an image (Pillow cannot identify it as one of {formats})"


def _too_big_for_pillow(exc: BaseException, _source: ImageSource | None) -> str:
    """Worded as ``_check_pixels`` words the limit it sets: Pillow refuses such a header itself,
    before m3trt's own check sees it."""
    numbers = re.findall(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(exc))
    if not numbers:
        detail = " ".join(str(exc).split())
        return f"image too large for Pillow's decompression-bomb guard ({detail})"
    size, limit = (int(n) for n in numbers[0])
    return (
        f"image too large ({size:,} pixels; the limit is {limit:,} pixels, Pillow's own, above "
        "any --max-pixels: a guard against decompression bombs)"
    )


def _permission(_exc: BaseException, source: ImageSource | None) -> str:
    # Windows reports a directory opened as a file as PermissionError.
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        return "is a directory, not an image file"
    return "permission denied (the file is not readable by this user)"


_REASONS: tuple[tuple[type[BaseException], Callable[..., str]], ...] = (
    (Image.DecompressionBombError, _too_big_for_pillow),
    (FileNotFoundError, lambda _e, _s: "file not found"),
    (IsADirectoryError, lambda _e, _s: "is a directory, not an image file"),
    (PermissionError, _permission),
    (UnidentifiedImageError, _unidentified),
    (EOFError, lambda _e, _s: TRUNCATED),
)


def _is_empty(source: ImageSource | None) -> bool:
    """True if the source holds no bytes at all; only asked after Pillow has failed."""
    try:
        if isinstance(source, str | os.PathLike):
            return os.path.getsize(source) == 0
        if isinstance(source, bytes | bytearray | memoryview):
            return len(source) == 0
        if source is not None and callable(getattr(source, "seek", None)):
            return source.seek(0, io.SEEK_END) == 0
    except (OSError, ValueError):
        pass
    return False
