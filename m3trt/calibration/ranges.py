"""Activation ranges, computed once from real images and cached in ``calibration.json``.

The cache key is the FP32 model's sha256, the calibration images' hash and the settings: the
ranges are reused only when all three match. The ranges themselves are ONNX Runtime's
``TensorsData``, stored in its own JSON form inside ours.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.atomic import write_json
from m3trt.calibration.data import ImageSet
from m3trt.data.safe_open import NotJSON, read_json
from m3trt.errors import InputError

METHODS = ("entropy", "percentile", "minmax")
CACHE_FORMAT = 1
MAX_CACHE_BYTES = 64 << 20  # ranges of a ResNet-18 graph: 17 kB; far more is not a cache of ours
COLLECT_CHUNK = 16
# Ops whose outputs feed quantized ops in our graphs (convs, GEMMs, residual adds, pools).
CALIBRATED_OPS = ("Conv", "Gemm", "MatMul", "Add", "MaxPool", "GlobalAveragePool", "Relu")


@dataclass(frozen=True)
class CalibrationSettings:
    method: str = "percentile"
    percentile: float = 99.999
    num_bins: int = 2048
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(
                f"unknown calibration method {self.method!r}: use {', '.join(METHODS)}"
            )


class ImageSetReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over an ``ImageSet``."""

    def __init__(
        self,
        data: ImageSet,
        input_names: list[str],
        batch_size: int = 8,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.data, self.input_names, self.batch_size = data, input_names, batch_size
        self.on_batch = on_batch
        self.rewind()

    def rewind(self) -> None:
        self._batches = self.data.batches(self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        images, tags = batch
        if self.on_batch:
            self.on_batch(len(images))
        if len(images) < self.batch_size:
            # ONNX Runtime's histogram collectors stack a call's batches into one array, so a
            # short last batch crashed percentile and entropy calibration ("inhomogeneous
            # shape") for any image count that is not a multiple of the batch size; it is
            # filled up with its own images again (at most batch_size - 1 repeats).
            again = np.arange(self.batch_size) % len(images)
            images, tags = images[again], tags[again]
        feeds = {"image": images, "tags": tags.astype(np.float32)}
        return {name: feeds[name] for name in self.input_names}

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)


def _ort_method(settings: CalibrationSettings):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[settings.method]


def _extra_options(settings: CalibrationSettings) -> dict[str, Any]:
    if settings.method == "percentile":
        return {"percentile": settings.percentile, "num_bins": settings.num_bins}
    if settings.method == "entropy":
        return {"num_bins": settings.num_bins}
    return {}


def model_inputs(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [i.name for i in model.graph.input]


def collect_ranges(
    model_path: Path,
    data: ImageSet,
    settings: CalibrationSettings,
    on_batch: Callable[[int], None] | None = None,
):
    """Run the FP32 model over the images and compute per-tensor ranges."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="m3trt-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            list(CALIBRATED_OPS),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_ort_method(settings),
            providers=["CPUExecutionProvider"],
            extra_options=_extra_options(settings),
        )
        names = model_inputs(model_path)
        # ONNX Runtime keeps every intermediate output of one collect_data call in memory
        # (a ResNet at 224 px: ~15 MB per image); chunks keep it flat, histograms merge.
        for start in range(0, len(data), COLLECT_CHUNK):
            chunk = data.subset(range(start, min(start + COLLECT_CHUNK, len(data))))
            with contextlib.redirect_stdout(io.StringIO()):  # its print()s would break our bars
                calibrator.collect_data(ImageSetReader(chunk, names, settings.batch_size, on_batch))
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = calibrator.compute_data()
        del calibrator
    return ranges


def cache_key(model_sha256: str, data: ImageSet, settings: CalibrationSettings) -> dict[str, Any]:
    return {
        "model_sha256": model_sha256,
        "data_sha256": data.sha256,
        "n_images": len(data),
        "settings": asdict(settings),
    }


def _ranges_to_json(ranges) -> dict[str, Any]:
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, path)
        return json.loads(path.read_text())


def ranges_from_json(payload: dict[str, Any]):
    from onnxruntime.quantization.calibrate import load_tensors_data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranges.json"
        path.write_text(json.dumps(payload))
        return load_tensors_data(path)


def save_cache(path: Path, key: dict[str, Any], ranges, data: ImageSet) -> None:
    document = {
        "format": CACHE_FORMAT,
        "key": key,
        "images": {
            "source": data.source,
            "splits": None if data.splits is None else list(data.splits),
            "count": len(data),
            "failed": len(data.failed),
        },
        "ranges": _ranges_to_json(ranges),
    }
    write_json(path, document, indent=1, sort_keys=True)


def read_cache(path: Path, what: str = "calibration cache") -> dict[str, Any]:
    """The cache document at ``path``, read as any input is (a regular file, size-capped: a path
    may be a FIFO or huge). FileNotFoundError when it is absent; InputError when it is not a cache
    ``m3trt calibrate`` wrote, so that no other file is taken for one (or replaced as one)."""
    try:
        document = read_json(path, what, MAX_CACHE_BYTES)
    except NotJSON:
        document = None
    if not (
        isinstance(document, dict)
        and document.get("format") == CACHE_FORMAT
        and isinstance(document.get("key"), dict)
        and isinstance(document.get("ranges"), dict)
    ):
        raise InputError(f"{path}: {what} is not a calibration cache written by m3trt")
    return document


def load_cache(path: Path, key: dict[str, Any]):
    """The cached ranges when ``path`` holds ranges for exactly this key, else None."""
    try:
        document = read_cache(path)
    except FileNotFoundError:
        return None
    if document["key"] != key:
        return None
    try:
        return ranges_from_json(document["ranges"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: calibration cache has malformed ranges ({exc})") from None


class StaleCache(InputError):
    """The cache holds ranges for another model, image set or method, and may not be replaced."""


def calibrate(
    model_path: Path,
    data: ImageSet,
    settings: CalibrationSettings,
    *,
    model_sha256: str,
    cache_path: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
    replace: bool = True,
) -> tuple[Any, bool]:
    """Ranges for (model, images, settings): from the cache when it matches, else computed and
    cached. Returns (ranges, cache_hit). With ``replace`` off, a cache of other ranges raises
    StaleCache before any work instead of being replaced."""
    key = cache_key(model_sha256, data, settings)
    if cache_path is not None:
        try:
            cached = load_cache(cache_path, key)
        except InputError:  # not a cache of ours (the CLI has said what may be replaced)
            if not replace:
                raise
            cached = None
        if cached is not None:
            return cached, True
        if not replace and os.path.lexists(cache_path):
            raise StaleCache(f"{cache_path}: holds ranges for another model, image set or method")
    ranges = collect_ranges(model_path, data, settings, on_batch)
    if cache_path is not None:
        save_cache(cache_path, key, ranges, data)
    return ranges, False
