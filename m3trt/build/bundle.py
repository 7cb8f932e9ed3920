"""``m3trt build``: checkpoint or ONNX -> an engine bundle for the hardware at hand (DESIGN §3.4).

The orchestration only: the FP32 reference graph (exported, or copied from an .onnx), the target's
build (``cpu``, ``tensorrt``: each returns a ``TargetBuild``), the bundle written crash-safe.
torch is imported only when the source is a checkpoint (export); an .onnx source needs none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from m3trt.atomic import temp_sibling
from m3trt.build.options import BUILD_ENGINES, BUILD_PRECISIONS, BUILD_TARGETS, BuildOptions
from m3trt.calibration.ranges import read_cache
from m3trt.errors import InputError
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.bundle import REFERENCE, Bundle, load_bundle, software_versions
from m3trt.runtime.bundle_writer import write_bundle
from m3trt.runtime.graph_contract import check_source_graph, external_files
from m3trt.runtime.model_io import ModelInfo


def resolve_target(target: str, log=lambda _m: None) -> str:
    """``auto`` picks TensorRT only when the library and a GPU are really there."""
    if target not in BUILD_TARGETS:
        raise InputError(f"unknown target {target!r}: choose {', '.join(BUILD_TARGETS)}")
    if target != "auto":
        return target
    from m3trt.tensorrt.environment import tensorrt_available

    ok, why = tensorrt_available()
    log(f"target: {'tensorrt' if ok else 'cpu'} ({why})")
    return "tensorrt" if ok else "cpu"


def prepare_source(source: Path, work: Path, opset: int, reporter: Reporter) -> Path:
    """The FP32 reference graph in ``work``: exported from a checkpoint or copied from .onnx."""
    reference = work / "model.onnx"
    if source.is_dir() and os.path.lexists(source / "config.json"):  # the export names a FIFO
        from m3trt.export.onnx_export import export_checkpoint

        report = export_checkpoint(source, reference, opset=opset, reporter=reporter)
        reporter.log(report.summary())
    elif source.suffix == ".onnx" and not source.is_dir():
        check_source_graph(source)  # refuses a graph that is not an m3trt export, one line
        _copy_graph(source, reference)
    else:
        raise InputError(f"{source}: not a checkpoint folder (with config.json) or an .onnx file")
    return reference


def _copy_graph(source: Path, reference: Path) -> None:
    """The graph as one file: external data (checked by check_source_graph to be regular files
    in the source's folder) is read in, since the build's work folder has only the .onnx."""
    import onnx

    with open(source, "rb") as f:
        if not external_files(onnx.load(f, load_external_data=False)):
            shutil.copyfile(source, reference)
            return
    model = onnx.load(str(source), load_external_data=True)
    try:
        onnx.save_model(model, str(reference))
    except ValueError as exc:  # over protobuf's 2 GB for one message
        raise InputError(f"{source}: its weights do not fit one ONNX file ({exc})") from None


def _source(source: Path) -> dict[str, str]:
    """Where the bundle came from (``m3trt bench --against torch`` finds the checkpoint here)."""
    kind = "checkpoint" if source.is_dir() else "onnx"
    return {"kind": kind, kind: str(source.resolve())}


def check_options(out: Path, options: BuildOptions, source: Path | None = None) -> None:
    """What ``build_bundle`` refuses before any work; also run by the CLI before it locks ``out``
    (a refused build then leaves no lock file beside a bundle it never made)."""
    if options.precision not in BUILD_PRECISIONS:
        raise InputError(
            f"unknown precision {options.precision!r}: choose {', '.join(BUILD_PRECISIONS)}"
        )
    if options.engine not in BUILD_ENGINES:
        raise InputError(f"unknown engine {options.engine!r}: choose {', '.join(BUILD_ENGINES)}")
    if out.suffix != ".m3":
        raise InputError(f"{out}: a bundle name must end with .m3 (e.g. {out.name}.m3)")
    if out.is_symlink() and not out.exists():  # it failed only at the end, "Not a directory"
        raise InputError(f"{out}: is a dangling symbolic link; choose another -o")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another -o")
    if out.exists() and not options.overwrite:
        raise InputError(f"{out}: already exists; pass --overwrite to replace it")
    _check_inputs_outside(out, options, source)
    if options.calib_cache is not None:
        try:
            read_cache(Path(options.calib_cache), "--calib-cache")
        except FileNotFoundError:
            raise InputError(f"{options.calib_cache}: --calib-cache: no such file") from None


def _check_inputs_outside(out: Path, options: BuildOptions, source: Path | None = None) -> None:
    """``--overwrite`` replaces the whole of ``out``: a checkpoint, graph or manifest kept in
    it was deleted with the old bundle (after a build that said it succeeded)."""
    if not out.is_dir():
        return
    inputs = {"SOURCE": source, "--calib": options.calib, "--val": options.val}
    root = out.resolve()
    for what, path in inputs.items():
        if path is not None and Path(path).resolve().is_relative_to(root):
            raise InputError(
                f"{path}: {what} is inside -o {out}, which the build replaces whole; move it "
                "out of the bundle or choose another -o"
            )


def check_target_options(target: str, options: BuildOptions) -> None:
    """What the target refuses, before the export (13 s for the quickstart model, minutes for a
    big one) rather than after it; the targets' own checks stay for the library's callers."""
    if target == "tensorrt":
        from m3trt.tensorrt.environment import require_tensorrt

        require_tensorrt()
        if options.engine not in ("auto", "tensorrt"):
            raise InputError("--engine chooses among CPU engines; the tensorrt target has one")
    elif target == "cuda":
        from m3trt.build.cuda import cuda_precisions

        if options.engine not in ("auto", "onnxruntime"):
            raise InputError(
                "--target cuda runs on onnxruntime-gpu: use --engine auto or onnxruntime"
            )
        cuda_precisions(options.precision, True, lambda _m: None)  # refuses int8
    else:
        from m3trt.build.cpu import cpu_engine_kinds

        if options.precision == "fp16":
            raise InputError(
                "fp16 is a GPU precision: on the CPU target use --precision fp32 or int8"
            )
        if options.engine != "auto":
            cpu_engine_kinds(options.engine, lambda _m: None)  # installed and usable here
    if options.precision == "int8" and options.calib is None:
        raise InputError("INT8 needs calibration images: pass --calib DATA (a manifest or folder)")


def _is_cache(path: Path) -> bool:
    """A bundle being replaced: its calibration is reused when it is a sound cache, and
    otherwise ignored (it goes with the old bundle), never an error."""
    try:
        read_cache(path)
    except (OSError, InputError):
        return False
    return True


def build_bundle(
    source: str | Path,
    out: str | Path,
    options: BuildOptions,
    *,
    reporter: Reporter = SILENT,
    before_swap: Callable[[Path], object] | None = None,
) -> Bundle:
    """Build ``out`` (``NAME.m3``) from a checkpoint folder or an exported .onnx.
    ``before_swap`` gets the finished bundle before it replaces ``out`` (``--sign-key``)."""
    source, out = Path(source), Path(out)
    check_options(out, options, source)
    target = resolve_target(options.target, reporter.log)
    check_target_options(target, options)
    if options.calib_cache is None and out.exists():
        previous = out / "calibration.json"
        if _is_cache(previous):
            options.calib_cache = previous  # reused only if model, data and settings match
    # The work folder (hundreds of MB) is a hidden sibling of ``out``, not in $TMPDIR: a killed
    # build's is then cleared by the next build of ``out`` (``clear_leftovers``), and the
    # artifacts move into the bundle by hard link.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = temp_sibling(out, "tmp")
    work.mkdir()
    try:
        reference = prepare_source(source, work, options.opset, reporter)
        info = ModelInfo.from_onnx_file(reference)
        if target == "tensorrt":
            from m3trt.build.tensorrt import build_tensorrt

            built = build_tensorrt(reference, info, options, work, reporter)
        elif target == "cuda":
            from m3trt.build.cuda import build_cuda

            built = build_cuda(reference, info, options, work, reporter)
        else:
            from m3trt.build.cpu import build_cpu

            built = build_cpu(reference, info, options, work, reporter)
        bundle = write_bundle(
            out,
            model=info,
            target=target,
            precision=built.chosen.precision,
            files={REFERENCE: (reference, "onnx", "fp32"), **built.files},
            provenance={**software_versions(), "source": _source(source), **built.provenance},
            accuracy=built.chosen.accuracy,
            latency=built.latency,
            runtime=built.runtime,
            overwrite=options.overwrite,
            before_swap=before_swap,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_bundle(bundle.path)
