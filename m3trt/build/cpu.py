"""The CPU target of ``m3trt build``: FP32 or INT8 (uint8 activations, int8 per-channel weights),
each run by the engine kinds installed here (ONNX Runtime on its offline-optimized graph, OpenVINO
on the portable graph), timed side by side; the fastest (precision, engine) within the accuracy
budget is recorded as the bundle's CPU runtime choice.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from m3trt.build.data import calibration_ranges, load_build_data, timing_batch
from m3trt.build.options import (
    BuildOptions,
    Candidate,
    Files,
    TargetBuild,
    candidates_table,
    choose,
)
from m3trt.build.timing import time_engines
from m3trt.calibration.data import ImageSet
from m3trt.calibration.guard import OverBudget, over_budget, quantize_with_guard
from m3trt.errors import InputError
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.progress import Reporter
from m3trt.runtime.bundle import ENGINE, GRAPH, ONNX, ONNX_ORT_CPU, REFERENCE
from m3trt.runtime.engines import REGISTRY, open_path
from m3trt.runtime.model_io import ModelInfo

ENGINE_AGREEMENT_SLACK = 0.02


def optimize_offline(src: Path, dst: Path) -> Path:
    """ONNX Runtime's graph optimisations (fusions, Q/DQ -> QLinear kernels) applied once at
    build time and saved, so sessions load faster. Level EXTENDED: no CPU-specific layouts."""
    from m3trt.runtime.engines.ort_engine import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def cpu_engine_kinds(requested: str, log) -> list[str]:
    """The engine kinds to time: the one asked for, or every CPU kind installed here."""
    kinds = (
        [requested]
        if requested != "auto"
        else [n for n, k in REGISTRY.items() if "cpu" in k.devices]
    )
    usable = []
    for name in kinds:
        ok, why = REGISTRY[name].availability("cpu")
        if ok:
            usable.append(name)
        elif requested != "auto":
            raise InputError(f"--engine {name}: {why}")
        else:
            log(f"engine {name} not timed: {why}")
    return usable


def build_cpu(
    reference: Path, info: ModelInfo, options: BuildOptions, work: Path, reporter: Reporter
) -> TargetBuild:
    precisions = ["fp32", "int8"] if options.precision == "auto" else [options.precision]
    if "fp16" in precisions:
        raise InputError("fp16 is a GPU precision: on the CPU target use --precision fp32 or int8")
    if options.precision == "auto" and options.calib is None:
        reporter.log("precision auto: no --calib given, so INT8 is not tried; building FP32")
        precisions = ["fp32"]
    kinds = cpu_engine_kinds(options.engine, reporter.log)
    files: Files = {}
    provenance: dict[str, Any] = {}
    graphs: dict[str, tuple[Path, Path]] = {}  # precision -> (portable graph, ORT-optimized)
    guards: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, dict[str, Any]] = {}
    val: ImageSet | None = None
    if "int8" in precisions:
        calib, val = load_build_data(options, info, reporter)
        ranges, provenance["calibration"], cache = calibration_ranges(
            reference, calib, options, work, reporter
        )
        files["calibration"] = (cache, "json", None)
        qdq = work / "model.int8.qdq.onnx"
        try:
            with reporter.task("quantize + accuracy guard", None, unit="step") as bar:
                guard = quantize_with_guard(
                    reference, qdq, ranges, "cpu", val, budget=options.budget, log=reporter.log
                )
                bar.advance()
        except OverBudget as exc:
            if options.precision != "auto":
                raise
            reporter.log(f"precision auto: {exc}; building FP32")
            provenance["int8_not_kept"] = str(exc)
            del files["calibration"]
        else:
            graphs["int8"] = (qdq, optimize_offline(qdq, work / "model.int8.onnx"))
            guards["int8"] = guard.to_json()
            accuracy["int8"] = guard.report
    if "fp32" in precisions:
        graphs["fp32"] = (reference, optimize_offline(reference, work / "model.fp32.onnx"))
        accuracy["fp32"] = {}

    candidates = []
    for precision, (portable, optimized) in graphs.items():
        for kind in kinds:
            path, role = (optimized, ENGINE) if kind == "onnxruntime" else (portable, GRAPH)
            if precision == "fp32" and kind != "onnxruntime":
                role = REFERENCE  # the FP32 portable graph is the reference itself
            candidates.append(
                Candidate(
                    precision,
                    path,
                    dict(accuracy[precision]),
                    guards.get(precision),
                    None,
                    [],
                    kind,
                    role,
                )
            )
    if val is not None:
        _score(reference, candidates, val, options)
    images, tags = timing_batch(val, info, options.bench_batch)
    openers = {"reference": partial(open_path, reference, engine="onnxruntime")}
    openers |= {
        f"{c.precision}/{c.engine}": partial(open_path, c.path, engine=c.engine) for c in candidates
    }
    timings = time_engines(openers, images, tags, options.bench_iterations, reporter)
    for c in candidates:
        c.latency_ms = timings[f"{c.precision}/{c.engine}"]
    chosen = choose(candidates)
    if len(candidates) > 1:
        reporter.log(
            "candidates: "
            + ", ".join(f"{c.precision}/{c.engine} {c.latency_ms:.1f} ms" for c in candidates)
            + f" at batch {len(images)}; keeping {chosen.precision}/{chosen.engine}"
        )
    provenance["candidates"] = candidates_table(candidates)
    if chosen.guard is not None:
        provenance["accuracy_guard"] = {
            "kept_in_float": chosen.guard["kept_in_float"],
            "uint8_input": chosen.guard["uint8_input"],
            "attempts": len(chosen.guard["attempts"]),
        }
    if chosen.precision != "int8":
        files.pop("calibration", None)
        provenance.pop("calibration", None)
    portable, optimized = graphs[chosen.precision]
    files[ENGINE] = (optimized, ONNX_ORT_CPU, chosen.precision)
    if chosen.precision != "fp32":
        files[GRAPH] = (portable, ONNX, chosen.precision)
    same_precision = [c for c in candidates if c.precision == chosen.precision]
    latency = {
        "batch_size": len(images),
        "reference_fp32_ms": timings["reference"],
        "candidates_ms": {f"{c.precision}/{c.engine}": c.latency_ms for c in candidates},
        "engine_ms": chosen.latency_ms,
        "speedup_vs_reference": timings["reference"] / chosen.latency_ms,
        "threads": os.cpu_count(),
    }
    runtime = {
        "cpu": {
            "engine": chosen.engine,
            "artifact": chosen.role,
            "ms": chosen.latency_ms,
            "engines_ms": {c.engine: c.latency_ms for c in same_precision},
        }
    }
    chosen.accuracy = chosen.accuracy or {"note": "FP32 engine: identical graph to the reference"}
    return TargetBuild(chosen, files, provenance, latency, runtime)


def _score(
    reference: Path, candidates: list[Candidate], val: ImageSet, options: BuildOptions
) -> None:
    """Each candidate's agreement with the FP32 reference on the validation images, run by the
    engine that will run it (OpenVINO and ONNX Runtime may round differently)."""
    with open_path(reference, engine="onnxruntime") as engine:
        ref_out = run_outputs(engine, val.batches(16))
    for c in candidates:
        with open_path(c.path, engine=c.engine) as engine:
            c.accuracy = compare_outputs(ref_out, run_outputs(engine, val.batches(16)), val.labels)
        c.reasons = over_budget(c.accuracy, options.budget)
    _hold_alternatives_to_onnxruntime(candidates)


def _hold_alternatives_to_onnxruntime(candidates: list[Candidate]) -> None:
    """Another engine may replace ONNX Runtime for a precision only when it answers as closely:
    label sets agreeing with FP32 within ``ENGINE_AGREEMENT_SLACK`` of ONNX Runtime's. Measured
    on an AVX2 host, OpenVINO's INT8 kernels changed 45 % of a small model's label sets at the
    same O-F1, which the O-F1 budget alone would let through."""
    baseline = {c.precision: c for c in candidates if c.engine == "onnxruntime"}
    for c in candidates:
        ort = baseline.get(c.precision)
        if ort is None or c is ort or "label_set_agreement" not in c.accuracy:
            continue
        mine, theirs = c.accuracy["label_set_agreement"], ort.accuracy["label_set_agreement"]
        if mine < theirs - ENGINE_AGREEMENT_SLACK:
            c.reasons.append(
                f"{c.engine} keeps {100 * mine:.1f}% of FP32's label sets, onnxruntime "
                f"{100 * theirs:.1f}% (allowed {100 * ENGINE_AGREEMENT_SLACK:g} points less)"
            )
