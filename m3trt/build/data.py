"""The images a build needs: calibration images and held-out validation images, decoded as the
runtime decodes them, and the calibration step (ranges, cached) shared by the INT8 targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from m3trt.build.options import MIN_VALIDATION_IMAGES, BuildOptions
from m3trt.calibration.data import (
    MIN_CALIBRATION_IMAGES,
    ImageSet,
    is_manifest,
    load_calibration_images,
    load_image_set,
    require_images,
)
from m3trt.calibration.ranges import MAX_CACHE_BYTES, CalibrationSettings, calibrate
from m3trt.data.safe_open import read_regular
from m3trt.errors import InputError
from m3trt.progress import Reporter
from m3trt.runtime.bundle import sha256_file
from m3trt.runtime.model_io import ModelInfo


def load_build_data(
    options: BuildOptions, info: ModelInfo, reporter: Reporter
) -> tuple[ImageSet, ImageSet]:
    """Calibration images and held-out validation images.

    A manifest calibrates on its train split and validates on val (or test); a folder without
    ``--val`` is split, a seeded quarter held out for validation.
    """
    if options.calib is None:
        raise InputError("INT8 needs calibration images: pass --calib DATA (a manifest or folder)")
    kw = dict(image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab)
    calib_src = Path(options.calib)
    with reporter.task("decode calibration", None) as bar:
        if is_manifest(calib_src):
            calib = load_calibration_images(calib_src, count=options.calib_count, **kw)
            val = None
            if options.val is None:
                for split in ("val", "test"):
                    val = load_image_set(calib_src, count=options.val_count, splits=[split], **kw)
                    if len(val):
                        break
        else:
            calib = load_image_set(calib_src, count=options.calib_count + options.val_count, **kw)
            val = None
            if options.val is None and len(calib) >= MIN_CALIBRATION_IMAGES:
                order = np.random.default_rng(0).permutation(len(calib))
                n_val = max(MIN_VALIDATION_IMAGES, len(calib) // 4)
                val, calib = (
                    calib.subset(np.sort(order[:n_val])),
                    calib.subset(np.sort(order[n_val:])),
                )
        if options.val is not None:
            val = load_image_set(Path(options.val), count=options.val_count, **kw)
        bar.advance(len(calib) + (len(val) if val is not None else 0))
    require_images(calib, MIN_CALIBRATION_IMAGES, "calibration")
    if val is None or len(val) == 0:
        raise InputError(f"{calib_src}: no held-out images to check accuracy on; pass --val DATA")
    require_images(val, MIN_VALIDATION_IMAGES, "the accuracy check")
    return calib, val


def calibration_ranges(
    reference: Path, calib: ImageSet, options: BuildOptions, work: Path, reporter: Reporter
) -> tuple[Any, dict[str, Any], Path]:
    """Activation ranges of ``reference`` (reused from a matching cache), their provenance and
    the cache file written into ``work``."""
    settings = CalibrationSettings(method=options.calib_method)
    cache = work / "calibration.json"
    if options.calib_cache is not None:  # checked by check_options: a cache of ours, capped
        cache.write_bytes(read_regular(options.calib_cache, "--calib-cache", MAX_CACHE_BYTES))
    with reporter.task(f"calibrate ({settings.method})", len(calib)) as bar:
        ranges, hit = calibrate(
            reference,
            calib,
            settings,
            model_sha256=sha256_file(reference),
            cache_path=cache,
            on_batch=bar.advance,
        )
    reporter.log(
        f"calibration: {len(calib)} images, {settings.method}, "
        f"{'reused cached ranges' if hit else 'ranges computed'}"
    )
    meta = {
        "method": settings.method,
        "image_count": len(calib),
        "data_sha256": calib.sha256,
        "source": calib.source,
        "cache_hit": hit,
    }
    return ranges, meta, cache


def timing_batch(
    val: ImageSet | None, info: ModelInfo, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Real validation images when there are some, else seeded random pixels: latency does not
    depend on content."""
    if val is not None:
        subset = val.subset(np.arange(min(batch, len(val))))
        return subset.images, subset.tags
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, info.image_size, info.image_size, 3), dtype=np.uint8)
    return images, np.zeros((batch, info.num_tags), np.float32)


def validation_images(
    options: BuildOptions, info: ModelInfo, reporter: Reporter
) -> ImageSet | None:
    """Held-out images for a GPU precision's accuracy check: ``--val``, else the held-out part
    of ``--calib``; None when neither is given (the caller decides what that allows)."""
    if options.val is not None:
        kw = dict(
            image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab
        )
        with reporter.task("decode validation", None) as bar:
            val = load_image_set(Path(options.val), count=options.val_count, **kw)
            bar.advance(len(val))
        require_images(val, MIN_VALIDATION_IMAGES, "the accuracy check")
        return val
    if options.calib is not None:
        return load_build_data(options, info, reporter)[1]
    return None
