"""Pillow's bilinear resampling as two weight matrices, so a squash resize can run as two matrix
products on any array library (numpy here, cupy on the GPU decoding path).

Pillow's ``Image.resize(..., BILINEAR)`` is a separable triangle filter whose support widens with
the downscale factor (it antialiases), normalised per output pixel; ``weights(n_in, n_out)``
computes exactly its coefficients (``ImagingResample``'s ``precompute_coeffs`` with the box the
whole image). ``out = Wy @ img @ Wx.T`` per channel then matches Pillow's resize to within one
grey level (Pillow rounds to 8 bits between its two passes and uses fixed-point weights).
numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def weights(n_in: int, n_out: int) -> np.ndarray:
    """float32 [n_out, n_in]: row i holds the weights of input pixels for output pixel i."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, not {n_in} -> {n_out}")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle filter's support is 1 at scale 1
    centers = (np.arange(n_out) + 0.5) * scale
    # int() in C truncates toward zero; the clamp to 0 makes that equal to floor here.
    lo = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centers + support + 0.5), n_in).astype(np.int64)
    x = np.arange(n_in)[None, :]
    inside = (x >= lo[:, None]) & (x < hi[:, None])
    w = np.clip(1.0 - np.abs((x - centers[:, None] + 0.5) / filterscale), 0.0, None)
    w = np.where(inside, w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    return w.astype(np.float32)


def squash_resize(image: np.ndarray, size: int, xp=np) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) with Pillow's bilinear filter, on ``xp``
    (numpy or cupy: the weights are built with numpy and moved to ``xp``'s device)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    wy = xp.asarray(weights(height, size))
    wx = xp.asarray(weights(width, size))
    pixels = image.astype(xp.float32)
    rows = xp.tensordot(wy, pixels, axes=(1, 0))  # (size, W, 3)
    out = xp.matmul(wx, rows)  # wx (size, W) broadcast over rows: (size, size, 3)
    return xp.clip(xp.rint(out), 0, 255).astype(xp.uint8)
