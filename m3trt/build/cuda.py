"""The CUDA target of ``m3trt build``: onnxruntime-gpu on the bundle's portable graph, FP32 or
FP16 (``export.fp16``: FP32 kept where it changes answers), run with the tuned CUDA provider
settings of ``runtime.engines.ort_engine``.

Each candidate is scored against the FP32 reference on the validation images and, when the CUDA
provider really loads here, timed on the GPU side by side with the FP32 graph; the fastest within
the accuracy budget is kept. Without a usable GPU (a CI machine, a laptop) the bundle is still
built: the FP16 graph's accuracy is checked on the CPU provider, ``--precision auto`` keeps FP16
(tensor cores make it the fast one on every GPU we measured), and the bundle records that no GPU
timing was taken.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from m3trt.build.data import timing_batch, validation_images
from m3trt.build.options import BuildOptions, Candidate, TargetBuild, candidates_table, choose
from m3trt.build.timing import time_engines
from m3trt.calibration.data import ImageSet
from m3trt.calibration.guard import over_budget
from m3trt.errors import InputError
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.progress import Reporter
from m3trt.runtime.bundle import ENGINE, ONNX, REFERENCE
from m3trt.runtime.engines import REGISTRY, open_path
from m3trt.runtime.model_io import ModelInfo

GPU_PRECISIONS = ("fp32", "fp16")


def cuda_precisions(precision: str, has_validation: bool, log) -> list[str]:
    """FP16 first (the fast one on a GPU), then FP32; FP16 only with images to check it on."""
    if precision == "int8":
        raise InputError(
            "int8 on an NVIDIA GPU is the tensorrt target (--target tensorrt); "
            "--target cuda builds fp32 or fp16"
        )
    if precision != "auto":
        return [precision]
    if not has_validation:
        log("precision auto: no --val/--calib images to check FP16 on, so building FP32")
        return ["fp32"]
    return ["fp16", "fp32"]


def write_fp16(reference: Path, out: Path) -> Path:
    import onnx

    from m3trt.export.fp16 import convert_to_fp16

    onnx.save_model(convert_to_fp16(onnx.load(str(reference))), str(out))
    return out


def build_cuda(
    reference: Path, info: ModelInfo, options: BuildOptions, work: Path, reporter: Reporter
) -> TargetBuild:
    if options.engine not in ("auto", "onnxruntime"):
        raise InputError("--target cuda runs on onnxruntime-gpu: use --engine auto or onnxruntime")
    val = validation_images(options, info, reporter)
    precisions = cuda_precisions(options.precision, val is not None, reporter.log)
    gpu, why = REGISTRY["onnxruntime"].availability("cuda")
    reporter.log(
        f"GPU timing: {why}" if gpu else f"no GPU timing on this host ({why}); accuracy on the CPU"
    )
    graphs = {
        p: write_fp16(reference, work / "model.fp16.onnx") if p == "fp16" else reference
        for p in precisions
    }
    candidates = [
        Candidate(p, path, {}, engine="onnxruntime", role=ENGINE if p != "fp32" else REFERENCE)
        for p, path in graphs.items()
    ]
    device = "cuda" if gpu else "cpu"
    if val is not None:
        _score(reference, candidates, val, options, device)
    timings: dict[str, float] = {}
    if gpu:
        images, tags = timing_batch(val, info, options.bench_batch)
        openers = {c.precision: partial(open_path, c.path, device="cuda") for c in candidates}
        timings = time_engines(
            openers, images, tags, options.bench_iterations, reporter, "measure GPU latency"
        )
        for c in candidates:
            c.latency_ms = timings[c.precision]
    chosen = choose(candidates)  # without timings: the first that fits (FP16 before FP32)
    if len(candidates) > 1:
        times = ", ".join(
            f"{c.precision} {c.latency_ms:.2f} ms" if c.latency_ms else f"{c.precision} untimed"
            for c in candidates
        )
        reporter.log(f"candidates: {times}; keeping {chosen.precision}")
    files = {}
    if chosen.precision != "fp32":
        files[ENGINE] = (chosen.path, ONNX, chosen.precision)
    latency: dict[str, Any] = {
        "batch_size": options.bench_batch,
        "gpu_timing": bool(gpu),
        "candidates_ms": {c.precision: c.latency_ms for c in candidates},
        "engine_ms": chosen.latency_ms,
        "reference_fp32_ms": timings.get("fp32"),
        "speedup_vs_reference": (
            timings["fp32"] / chosen.latency_ms if "fp32" in timings and chosen.latency_ms else None
        ),
        "note": "onnxruntime-gpu CUDA provider, host arrays in and out"
        if gpu
        else f"built without a usable GPU: no GPU timing was taken ({why})",
    }
    provenance = {
        "candidates": candidates_table(candidates),
        "cuda_provider_options": _provider_options(),
        "accuracy_device": device,
    }
    runtime = {
        "cuda": {"engine": "onnxruntime", "artifact": chosen.role, "ms": chosen.latency_ms},
        # a CPU runs the FP32 reference: ONNX Runtime's CPU kernels are FP32
        "cpu": {"engine": "onnxruntime", "artifact": REFERENCE, "ms": None},
    }
    if not chosen.accuracy:
        chosen.accuracy = (
            {"note": "FP32 graph: identical to the reference"}
            if chosen.precision == "fp32"
            else {"note": "no validation images given: accuracy not measured"}
        )
    return TargetBuild(chosen, files, provenance, latency, runtime)


def _provider_options() -> dict[str, str]:
    from m3trt.runtime.engines.ort_engine import cuda_provider_options

    return cuda_provider_options()


def _score(
    reference: Path, candidates: list[Candidate], val: ImageSet, options: BuildOptions, device: str
) -> None:
    """Each candidate's agreement with the FP32 reference (run on the CPU, as for every target),
    the candidate run where it will run (the GPU when usable here)."""
    with open_path(reference) as engine:
        ref_out = run_outputs(engine, val.batches(16))
    for c in candidates:
        if c.precision == "fp32" and device == "cpu":
            continue  # the reference itself
        with open_path(c.path, device=device) as engine:
            c.accuracy = compare_outputs(ref_out, run_outputs(engine, val.batches(16)), val.labels)
        c.accuracy["device"] = device
        c.reasons = over_budget(c.accuracy, options.budget)
