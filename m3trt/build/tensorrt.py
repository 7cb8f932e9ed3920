"""The TensorRT target of ``m3trt build``: precision carried by the ONNX graph (FP16 conversion or
symmetric Q/DQ), one strongly typed plan per candidate, timed on the GPU, the fastest kept within
the accuracy budget. Not yet verified on a GPU with TensorRT (none was available to us)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.build.data import calibration_ranges, load_build_data
from m3trt.build.options import BuildOptions, Candidate, TargetBuild, candidates_table, choose
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


def time_plan(plan: Path, batch: int, image_size: int, num_tags: int, iterations: int) -> float:
    """Median ms of ``execute_async_v3`` for one batch (inputs already on the device)."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    def check(result):
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    stream = check(cudart.cudaStreamCreate())
    shapes = {"image": (batch, image_size, image_size, 3), "tags": (batch, num_tags)}
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, shapes[name])
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(context.get_tensor_shape(name))
        nbytes = int(np.prod(shape)) * np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
        pointer = check(cudart.cudaMalloc(max(1, nbytes)))
        check(cudart.cudaMemset(pointer, 0, max(1, nbytes)))
        buffers.append(pointer)
        context.set_tensor_address(name, pointer)
    try:
        times = []
        for i in range(iterations + 3):
            start = time.perf_counter()
            context.execute_async_v3(stream)
            check(cudart.cudaStreamSynchronize(stream))
            if i >= 3:
                times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)
    finally:
        for pointer in buffers:
            cudart.cudaFree(pointer)
        cudart.cudaStreamDestroy(stream)


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
    val = None
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
    for precision, graph in graphs.items():
        plan = work / f"engine.{precision}.plan"
        plan_provenance[precision] = build_plan(
            graph, plan, profiles=profiles, timing_cache_path=timing_cache, log=reporter.log
        )
        accuracy: dict[str, Any] = {}
        if val is not None:
            with open_path(reference) as ref_engine, open_path(graph) as engine:
                ref_out = run_outputs(ref_engine, val.batches(16))
                out = run_outputs(engine, val.batches(16))
            accuracy = compare_outputs(ref_out, out, val.labels)
        candidate = Candidate(precision, plan, accuracy, guards.get(precision), engine="tensorrt")
        candidate.reasons = over_budget(accuracy, options.budget) if accuracy else []
        candidate.latency_ms = time_plan(
            plan, options.bench_batch, info.image_size, info.num_tags, options.bench_iterations
        )
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
        "note": "GPU compute only (execute_async_v3), inputs resident on the device",
    }
    chosen.accuracy = chosen.accuracy or {"note": "no validation images given"}
    runtime = {"cuda": {"engine": "tensorrt", "artifact": ENGINE, "ms": chosen.latency_ms}}
    return TargetBuild(chosen, files, provenance, latency, runtime)
