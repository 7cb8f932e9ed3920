"""What every ``m3trt build`` target shares: the options, a candidate engine, the choice among
candidates, and the result each target returns (the same type whatever the target)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3trt.calibration.guard import AccuracyBudget
from m3trt.constants import PRECISIONS
from m3trt.errors import M3Error

BUILD_PRECISIONS = (*PRECISIONS, "auto")
BUILD_TARGETS = ("auto", "cpu", "cuda", "tensorrt")
BUILD_ENGINES = ("auto", "onnxruntime", "openvino", "tensorrt")
MIN_VALIDATION_IMAGES = 16

# role -> (file, format, precision), as ``write_bundle`` takes them
Files = dict[str, tuple[Path, str | None, str | None]]


@dataclass
class BuildOptions:
    precision: str = "auto"
    target: str = "auto"
    engine: str = "auto"  # CPU target: which engine kinds may be kept
    calib: Path | None = None
    val: Path | None = None
    calib_count: int = 256
    calib_method: str = "percentile"
    calib_cache: Path | None = None
    val_count: int = 500
    budget: AccuracyBudget = field(default_factory=AccuracyBudget)
    bench_batch: int = 16
    bench_iterations: int = 10
    overwrite: bool = False
    opset: int = 18


@dataclass
class Candidate:
    """One engine the build could keep: a precision, its artifact, and how it ran."""

    precision: str
    path: Path
    accuracy: dict[str, Any]
    guard: dict[str, Any] | None = None
    latency_ms: float | None = None
    reasons: list[str] = field(default_factory=list)  # why it is over the accuracy budget
    engine: str = "onnxruntime"  # the engine kind that timed it
    role: str = "engine"  # the bundle artifact it runs


@dataclass
class TargetBuild:
    """What a target hands back to ``build_bundle`` to write the bundle."""

    chosen: Candidate
    files: Files
    provenance: dict[str, Any]
    latency: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)


def choose(candidates: list[Candidate]) -> Candidate:
    """The fastest candidate within the accuracy budget (FP32 is always within it)."""
    fits = [c for c in candidates if not c.reasons]
    if not fits:
        raise M3Error("no candidate fits the accuracy budget; use --precision fp32")
    return min(fits, key=lambda c: c.latency_ms if c.latency_ms is not None else float("inf"))


def candidates_table(candidates: list[Candidate]) -> list[dict[str, Any]]:
    return [
        {
            "precision": c.precision,
            "engine": c.engine,
            "latency_ms": c.latency_ms,
            "over_budget": c.reasons,
        }
        for c in candidates
    ]
