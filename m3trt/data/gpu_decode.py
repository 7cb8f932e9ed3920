"""JPEG decoding on the GPU for ``m3trt infer --decode gpu``: nvImageCodec (NVIDIA's Python
package over nvJPEG, no torch) decodes a batch of JPEGs into device memory with the EXIF
orientation applied, cupy squashes each to S x S with Pillow's bilinear filter
(``resize_weights``: two matrix products), and the small image is copied into the caller's
(pinned) host array. Anything nvImageCodec refuses, or that is not a baseline RGB/grey JPEG it
decodes to three channels, is handed back to the CPU decoder by the caller, per file.

Why cupy matrix products for the resize: they reproduce the CPU decoder's filter (Pillow's
antialiasing triangle) to within one grey level, need no kernel of our own, and cupy is already
on the GPU host (CV-CUDA's wheel is 128 MB; an ONNX Resize on the CUDA provider does not
antialias the way Pillow does). Not yet measured on hardware against the alternatives.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from m3trt.data.resize_weights import squash_resize
from m3trt.errors import InputError
from m3trt.installs import INSTALL_LINES

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """The JPEG start-of-image marker (files go by content, as with Pillow, not by name)."""
    return data[:3] == JPEG_MAGIC


def import_gpu_decoding() -> tuple[Any, Any]:
    """(nvidia.nvimgcodec, cupy), or a one-line InputError saying what to install."""
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise InputError(
            f"GPU decoding needs nvImageCodec ({exc}): {INSTALL_LINES['nvimgcodec']}"
        ) from None
    try:
        import cupy
    except ImportError as exc:
        raise InputError(f"GPU decoding needs cupy ({exc}): {INSTALL_LINES['cupy']}") from None
    return nvimgcodec, cupy


class GpuJpegDecoder:
    """Batches of JPEG bytes -> uint8 (S, S, 3) arrays written into the caller's arrays."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.nvimgcodec, self.cp = import_gpu_decoding()
        nv = self.nvimgcodec
        self.decoder = nv.Decoder()
        self.params = nv.DecodeParams(apply_exif_orientation=True, color_spec=nv.ColorSpec.RGB)

    def image_size(self, data: bytes) -> tuple[int, int] | None:
        """(width, height) from the header without decoding; None if it cannot be parsed."""
        try:
            stream = self.nvimgcodec.CodeStream(data)
            return int(stream.width), int(stream.height)
        except Exception:
            return None

    def decode_into(self, blobs: Sequence[bytes], out: Sequence[np.ndarray]) -> list[str | None]:
        """Decode ``blobs`` on the GPU into ``out[i]`` (uint8 (S, S, 3)); per blob None when
        done, else why the CPU decoder should take it."""
        if not blobs:
            return []
        try:
            images = self.decoder.decode(list(blobs), params=self.params)
        except Exception:  # one bad file can fail a whole batch: retry them one by one
            images = [self._decode_one(b) for b in blobs]
        reasons: list[str | None] = []
        for image, target in zip(images, out, strict=True):
            if image is None:
                reasons.append("nvImageCodec refused it")
                continue
            try:
                pixels = self.cp.asarray(image)
                if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != self.cp.uint8:
                    reasons.append(f"decoded to {tuple(pixels.shape)} {pixels.dtype}")
                    continue
                squash_resize(pixels, self.size, xp=self.cp).get(out=target)
            except Exception as exc:
                reasons.append(f"GPU resize failed ({type(exc).__name__}: {exc})")
                continue
            reasons.append(None)
        return reasons

    def _decode_one(self, data: bytes) -> Any:
        try:
            return self.decoder.decode(data, params=self.params)
        except Exception:
            return None


def probe_gpu_decoder(size: int) -> tuple[GpuJpegDecoder | None, str]:
    """``--decode auto``: a working GPU decoder and why, or None and why not. Working means it
    reads a small JPEG's header made here and decodes it to the expected pixels (within JPEG
    noise)."""
    try:
        decoder = GpuJpegDecoder(size)
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # a driver or library failure at start-up
        return None, f"nvImageCodec did not start ({type(exc).__name__}: {exc})"
    from PIL import Image

    grey = np.full((48, 64, 3), 128, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=95)
    out = np.zeros((size, size, 3), np.uint8)
    if decoder.image_size(buffer.getvalue()) != (64, 48):  # else every file would go to the CPU
        return None, "nvImageCodec could not read a test JPEG's header (CodeStream width/height)"
    try:
        reasons = decoder.decode_into([buffer.getvalue()], [out])
    except Exception as exc:
        return None, f"nvImageCodec failed on a test JPEG ({type(exc).__name__}: {exc})"
    if reasons[0] is not None or abs(int(out.mean()) - 128) > 3:
        return None, f"nvImageCodec failed on a test JPEG ({reasons[0] or 'wrong pixels'})"
    return decoder, "nvImageCodec (nvJPEG) on the GPU, resize with cupy"
