"""``m3trt build``: checkpoint or ONNX -> an engine bundle for the hardware at hand (DESIGN §3.4).

CPU target: ONNX Runtime, FP32 or INT8 (uint8 activations, int8 per-channel weights), each
optimised offline by ONNX Runtime. TensorRT target: a strongly typed plan from the FP16-converted
or symmetric Q/DQ graph. ``--precision auto`` builds the candidates, measures them side by side
and keeps the fastest one within the accuracy budget.

torch is imported only when the source is a checkpoint (export); an .onnx source needs none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.calibration.data import (
    MIN_CALIBRATION_IMAGES,
    ImageSet,
    is_manifest,
    load_calibration_images,
    load_image_set,
    require_images,
)
from m3trt.calibration.guard import (
    AccuracyBudget,
    compare_outputs,
    over_budget,
    quantize_with_guard,
    run_outputs,
)
from m3trt.calibration.ranges import CalibrationSettings, calibrate
from m3trt.errors import InputError, M3Error
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.bundle import (
    ModelInfo,
    load_bundle,
    sha256_file,
    software_versions,
    write_bundle,
)
from m3trt.runtime.sessions import cpu_session

PRECISIONS = ("fp32", "fp16", "int8", "auto")
TARGETS = ("auto", "cpu", "tensorrt")
MIN_VALIDATION_IMAGES = 16


@dataclass
class BuildOptions:
    precision: str = "auto"
    target: str = "auto"
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
    precision: str
    path: Path
    accuracy: dict[str, Any]
    guard: dict[str, Any] | None = None
    latency_ms: float | None = None
    reasons: list[str] = field(default_factory=list)


def resolve_target(target: str, log=lambda _m: None) -> str:
    """``auto`` picks TensorRT only when the library and a GPU are really there."""
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}: choose {', '.join(TARGETS)}")
    if target != "auto":
        return target
    from m3trt.export.tensorrt import tensorrt_available

    ok, why = tensorrt_available()
    log(f"target: {'tensorrt' if ok else 'cpu'} ({why})")
    return "tensorrt" if ok else "cpu"


def prepare_source(source: Path, work: Path, opset: int, reporter: Reporter) -> Path:
    """The FP32 reference graph in ``work``: exported from a checkpoint or copied from .onnx."""
    reference = work / "model.onnx"
    if source.is_dir() and (source / "config.json").is_file():
        from m3trt.export.onnx_export import export_checkpoint

        report = export_checkpoint(source, reference, opset=opset, reporter=reporter)
        reporter.log(report.summary())
    elif source.is_file() and source.suffix == ".onnx":
        ModelInfo.from_onnx_file(source)  # refuses a graph that is not an m3trt export
        shutil.copyfile(source, reference)
    else:
        raise InputError(f"{source}: not a checkpoint folder (with config.json) or an .onnx file")
    return reference


def load_build_data(
    options: BuildOptions, info: ModelInfo, reporter: Reporter
) -> tuple[ImageSet, ImageSet]:
    """Calibration images and held-out validation images, decoded like the runtime does.

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


def optimize_offline(src: Path, dst: Path) -> Path:
    """ONNX Runtime's graph optimisations (fusions, Q/DQ -> QLinear kernels) applied once at
    build time and saved, so sessions load faster. Level EXTENDED: no CPU-specific layouts."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return dst


def measure_latency(
    paths: dict[str, Path], images: np.ndarray, tags: np.ndarray, iterations: int
) -> dict[str, float]:
    """Median ms per batch of each model, run interleaved so machine noise hits all alike."""
    sessions = {name: cpu_session(path) for name, path in paths.items()}
    feeds_all = {"image": images, "tags": tags.astype(np.float32)}
    feeds = {
        name: {i.name: feeds_all[i.name] for i in s.get_inputs()} for name, s in sessions.items()
    }
    for name, session in sessions.items():
        session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def _calibration(
    reference: Path, calib: ImageSet, options: BuildOptions, work: Path, reporter: Reporter
) -> tuple[Any, dict[str, Any], Path]:
    settings = CalibrationSettings(method=options.calib_method)
    cache = work / "calibration.json"
    if options.calib_cache is not None and Path(options.calib_cache).is_file():
        shutil.copyfile(options.calib_cache, cache)
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


def _build_cpu(
    reference: Path,
    info: ModelInfo,
    options: BuildOptions,
    work: Path,
    reporter: Reporter,
) -> tuple[Candidate, dict[str, Any], dict[str, tuple[Path, str | None, str | None]]]:
    precisions = ["fp32", "int8"] if options.precision == "auto" else [options.precision]
    if "fp16" in precisions:
        raise InputError(
            "fp16 is a TensorRT precision: on the CPU target use --precision fp32 or int8"
        )
    if options.precision == "auto" and options.calib is None:
        reporter.log("precision auto: no --calib given, so INT8 is not tried; building FP32")
        precisions = ["fp32"]
    candidates: list[Candidate] = []
    files: dict[str, tuple[Path, str | None, str | None]] = {}
    provenance: dict[str, Any] = {}
    val: ImageSet | None = None
    if "int8" in precisions:
        calib, val = load_build_data(options, info, reporter)
        ranges, provenance["calibration"], cache = _calibration(
            reference, calib, options, work, reporter
        )
        files["calibration"] = (cache, "json", None)
        qdq = work / "model.int8.qdq.onnx"
        with reporter.task("quantize + accuracy guard", None, unit="step") as bar:
            guard = quantize_with_guard(
                reference, qdq, ranges, "cpu", val, budget=options.budget, log=reporter.log
            )
            bar.advance()
        optimize_offline(qdq, work / "model.int8.onnx")
        candidates.append(
            Candidate("int8", work / "model.int8.onnx", guard.report, guard.to_json())
        )
    if "fp32" in precisions:
        optimize_offline(reference, work / "model.fp32.onnx")
        candidates.append(Candidate("fp32", work / "model.fp32.onnx", {}))

    if val is not None:
        ref_out = run_outputs(cpu_session(reference), val)
        for c in candidates:
            c.accuracy = compare_outputs(ref_out, run_outputs(cpu_session(c.path), val), val.labels)
            c.reasons = over_budget(c.accuracy, options.budget)
        batch = val.subset(np.arange(min(options.bench_batch, len(val))))
        images, tags = batch.images, batch.tags
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(
            0, 256, (options.bench_batch, info.image_size, info.image_size, 3), dtype=np.uint8
        )
        tags = np.zeros((options.bench_batch, info.num_tags), np.float32)
    with reporter.task("measure latency", None, unit="step") as bar:
        timings = measure_latency(
            {"reference": reference, **{c.precision: c.path for c in candidates}},
            images,
            tags,
            options.bench_iterations,
        )
        bar.advance()
    for c in candidates:
        c.latency_ms = timings[c.precision]
    chosen = choose(candidates)
    if len(candidates) > 1:
        reporter.log(
            "precision auto: "
            + ", ".join(f"{c.precision} {c.latency_ms:.1f} ms" for c in candidates)
            + f" at batch {len(images)}; keeping {chosen.precision}"
        )
    latency = {
        "batch_size": len(images),
        "reference_fp32_ms": timings["reference"],
        "candidates_ms": {c.precision: c.latency_ms for c in candidates},
        "engine_ms": chosen.latency_ms,
        "speedup_vs_reference": timings["reference"] / chosen.latency_ms,
        "threads": os.cpu_count(),
    }
    provenance["candidates"] = [
        {"precision": c.precision, "latency_ms": c.latency_ms, "over_budget": c.reasons}
        for c in candidates
    ]
    if chosen.guard is not None:
        provenance["accuracy_guard"] = {
            "kept_in_float": chosen.guard["kept_in_float"],
            "uint8_input": chosen.guard["uint8_input"],
            "attempts": len(chosen.guard["attempts"]),
        }
    if chosen.precision != "int8":
        files.pop("calibration", None)
        provenance.pop("calibration", None)
    files["engine"] = (chosen.path, "onnx", chosen.precision)
    chosen.accuracy = chosen.accuracy or {"note": "FP32 engine: identical graph to the reference"}
    return chosen, {**provenance, "latency": latency}, files


def choose(candidates: list[Candidate]) -> Candidate:
    """The fastest candidate within the accuracy budget (FP32 is always within it)."""
    fits = [c for c in candidates if not c.reasons]
    if not fits:
        raise M3Error("no candidate fits the accuracy budget; use --precision fp32")
    return min(fits, key=lambda c: c.latency_ms if c.latency_ms is not None else float("inf"))


def _source(source: Path) -> dict[str, str]:
    """Where the bundle came from (``m3trt bench --against torch`` finds the checkpoint here)."""
    kind = "checkpoint" if source.is_dir() else "onnx"
    return {"kind": kind, kind: str(source.resolve())}


def build_bundle(
    source: str | Path,
    out: str | Path,
    options: BuildOptions,
    *,
    reporter: Reporter = SILENT,
):
    """Build ``out`` (``NAME.m3``) from a checkpoint folder or an exported .onnx."""
    source, out = Path(source), Path(out)
    if options.precision not in PRECISIONS:
        raise InputError(f"unknown precision {options.precision!r}: choose {', '.join(PRECISIONS)}")
    if out.suffix != ".m3":
        raise InputError(f"{out}: a bundle name must end with .m3 (e.g. {out.name}.m3)")
    if out.exists() and not options.overwrite:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    target = resolve_target(options.target, reporter.log)
    if target == "tensorrt":
        from m3trt.export.tensorrt import require_tensorrt

        require_tensorrt()  # before a long export, not after it
    if options.calib_cache is None and out.exists():
        previous = out / "calibration.json"
        if previous.is_file():
            options.calib_cache = previous  # reused only if model, data and settings match
    with tempfile.TemporaryDirectory(prefix="m3trt-build-") as tmp:
        work = Path(tmp)
        reference = prepare_source(source, work, options.opset, reporter)
        info = ModelInfo.from_onnx_file(reference)
        if target == "tensorrt":
            from m3trt.export.tensorrt_bundle import build_tensorrt

            chosen, provenance, files = build_tensorrt(reference, info, options, work, reporter)
        else:
            chosen, provenance, files = _build_cpu(reference, info, options, work, reporter)
        latency = provenance.pop("latency")
        bundle = write_bundle(
            out,
            model=info,
            target=target,
            precision=chosen.precision,
            files={"reference": (reference, "onnx", "fp32"), **files},
            provenance={**software_versions(), "source": _source(source), **provenance},
            accuracy=chosen.accuracy,
            latency=latency,
            overwrite=options.overwrite,
        )
    return load_bundle(bundle.path)
