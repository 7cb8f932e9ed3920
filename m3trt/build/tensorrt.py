"""The TensorRT target of ``m3trt build``: precision carried by the ONNX graph (FP16 conversion or
symmetric Q/DQ), one strongly typed plan per candidate, timed on the GPU, the fastest kept within
the accuracy budget. Every candidate plan is timed and scored by the runtime's own TensorRT
engine (``runtime.engines.tensorrt_engine``: one context per profile, the profile chosen by batch
size, every call checked), against the FP32 reference run by ONNX Runtime on the CPU.

"fp32" plans: TensorRT may run FP32 convolutions and matrix products on TF32 tensor cores (its
default on Ampere and later). m3trt keeps that default: TF32 keeps FP32's range and ~10 mantissa
bits, which moves scores far less than FP16, and the plan is scored against the FP32 reference
like every other candidate. Not yet verified on a GPU with TensorRT (none was available to us).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3trt.build.data import calibration_ranges, load_build_data, timing_batch, validation_images
from m3trt.build.options import BuildOptions, Candidate, TargetBuild, candidates_table, choose
from m3trt.build.timing import measure_latency
from m3trt.calibration.guard import over_budget, quantize_with_guard
from m3trt.constants import BATCH_BUCKETS, MAX_BATCH
from m3trt.errors import InputError
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.progress import Reporter
from m3trt.runtime.bundle import ENGINE, GRAPH, ONNX, TENSORRT_PLAN
from m3trt.runtime.engines import open_path
from m3trt.runtime.model_io import ModelInfo


def candidate_precisions(precision: str, has_calibration: bool) -> list[str]:
    """What to build: one precision, or for ``auto`` FP16 and (with calibration data) INT8."""
    if precision == "auto":
        return ["fp16", "int8"] if has_calibration else ["fp16"]
    return [precision]


def build_tensorrt(
    reference: Path, info: ModelInfo, options: BuildOptions, work: Path, reporter: Reporter
) -> TargetBuild:
    """Build the TensorRT candidates, time them, keep the fastest within the accuracy budget."""
    import onnx

    from m3trt.export.fp16 import convert_to_fp16
    from m3trt.tensorrt.builder import build_plan
    from m3trt.tensorrt.environment import require_tensorrt
    from m3trt.tensorrt.profiles import batch_profiles

    require_tensorrt()
    precisions = candidate_precisions(options.precision, options.calib is not None)
    val = None if "int8" in precisions else validation_images(options, info, reporter)
    files: dict[str, tuple[Path, str | None, str | None]] = {}
    provenance: dict[str, Any] = {}
    graphs: dict[str, Path] = {}
    guards: dict[str, Any] = {}
    if "int8" in precisions:
        calib, val = load_build_data(options, info, reporter)
        ranges, provenance["calibration"], cache = calibration_ranges(
            reference, calib, options, work, reporter
        )
        files["calibration"] = (cache, "json", None)
        result = quantize_with_guard(
            reference,
            work / "model.int8-sym.onnx",
            ranges,
            "tensorrt",
            val,
            budget=options.budget,
            log=reporter.log,
        )
        graphs["int8"], guards["int8"] = result.path, result.to_json()
    if "fp16" in precisions:
        path = work / "model.fp16.onnx"
        onnx.save_model(convert_to_fp16(onnx.load(str(reference))), str(path))
        graphs["fp16"] = path
    if "fp32" in precisions:
        graphs["fp32"] = reference
    if not graphs:
        raise InputError(f"unknown precision {options.precision!r} for the tensorrt target")

    profiles = batch_profiles(BATCH_BUCKETS, MAX_BATCH)
    timing_cache = work / "timing.cache"
    candidates = []
    plan_provenance: dict[str, Any] = {}
    ref_out = None
    if val is not None:
        with open_path(reference) as ref_engine:
            ref_out = run_outputs(ref_engine, val.batches(16))
    images, tags = timing_batch(val, info, options.bench_batch)
    for precision, graph in graphs.items():
        plan = work / f"engine.{precision}.plan"
        plan_provenance[precision] = build_plan(
            graph, plan, profiles=profiles, timing_cache_path=timing_cache, log=reporter.log
        )
        accuracy: dict[str, Any] = {}
        # the plan itself, run by the runtime's TensorRT engine: its score and its time
        with open_path(plan, engine="tensorrt", device="cuda") as engine:
            if val is not None and ref_out is not None:
                accuracy = compare_outputs(
                    ref_out, run_outputs(engine, val.batches(16)), val.labels
                )
            latency_ms = measure_latency(
                {precision: engine}, images, tags, options.bench_iterations
            )[precision]
        candidate = Candidate(precision, plan, accuracy, guards.get(precision), engine="tensorrt")
        candidate.reasons = over_budget(accuracy, options.budget) if accuracy else []
        candidate.latency_ms = latency_ms
        candidates.append(candidate)
    chosen = choose(candidates)
    files[ENGINE] = (chosen.path, TENSORRT_PLAN, chosen.precision)
    if chosen.precision != "fp32":
        files[GRAPH] = (graphs[chosen.precision], ONNX, chosen.precision)
    files["timing_cache"] = (timing_cache, "binary", None)
    if chosen.precision != "int8":
        files.pop("calibration", None)
        provenance.pop("calibration", None)
    provenance["tensorrt_plan"] = plan_provenance[chosen.precision]
    provenance["candidates"] = candidates_table(candidates)
    latency = {
        "batch_size": options.bench_batch,
        "candidates_ms": {c.precision: c.latency_ms for c in candidates},
        "engine_ms": chosen.latency_ms,
        "speedup_vs_reference": None,
        "note": "TensorRT engine, host arrays in and out (pinned staging, one stream)",
    }
    chosen.accuracy = chosen.accuracy or {"note": "no validation images given"}
    runtime = {"cuda": {"engine": "tensorrt", "artifact": ENGINE, "ms": chosen.latency_ms}}
    return TargetBuild(chosen, files, provenance, latency, runtime)
