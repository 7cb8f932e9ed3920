"""Strongly typed TensorRT plan builder. Not yet verified on a GPU with TensorRT.

TensorRT 10.1 deprecates and TensorRT 11 removes implicit precision (``BuilderFlag.FP16/INT8``,
calibrators), so every network here is *strongly typed*: the ONNX graph alone decides
precision (FP16 from ``fp16.convert_to_fp16``, INT8 from symmetric Q/DQ nodes) and no
precision flag or calibrator is ever set. ``EXPLICIT_BATCH`` is not passed either: it is
ignored (deprecated) in TensorRT 10 and gone in 11, where networks are always explicit-batch.

API calls follow TensorRT 10/11's Python bindings (``python/src/infer/pyCore.cpp``,
``python/src/parsers/pyOnnx.cpp``) and NVIDIA's samples (``samples/python/common.py`` for the
timing cache, ``samples/python/strongly_type_autocast`` for the strongly typed flag). TensorRT
is imported inside ``build_plan`` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from m3trt.atomic import write_bytes
from m3trt.errors import InputError, M3Error
from m3trt.tensorrt.environment import CPU_FALLBACK, require_tensorrt, tensorrt_environment
from m3trt.tensorrt.parser_errors import ParserIssue, format_parser_errors, one_line
from m3trt.tensorrt.profiles import (
    BatchProfile,
    ProfileShapes,
    input_shapes_from_onnx,
    is_count,
    profile_shapes,
)

# TensorRT's default workspace is the whole GPU; 4 GiB leaves room for other processes and is
# ample for ResNet tactics at batch 32.
DEFAULT_WORKSPACE_BYTES = 4 << 30
MAX_OPTIMIZATION_LEVEL = 5  # TensorRT's builder_optimization_level range is 0..5, default 3

Log = Callable[[str], None]


class PlanBuildError(M3Error):
    """TensorRT refused the graph or failed to build it; the message says what and the way out."""


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    profiles: Sequence[BatchProfile],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    timing_cache_path: str | Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    builder_optimization_level: int = 3,
    log: Log | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Build a strongly typed plan from ``onnx_path`` into ``plan_path``; returns its provenance.

    ``input_shapes``: non-batch dims per input (default: read from the ONNX file). The timing
    cache at ``timing_cache_path`` is used if present and written back (updated) after the
    build. ``verify`` deserializes the plan once to prove it loads on this GPU.
    """
    say = log or (lambda _msg: None)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: ONNX model not found")
    _check_build_options(workspace_bytes, builder_optimization_level)
    shapes = input_shapes if input_shapes is not None else input_shapes_from_onnx(onnx_path)
    require_tensorrt()
    import tensorrt as trt

    environment = tensorrt_environment()
    logger = _make_logger(trt, say)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path} (strongly typed)")
    _parse(parser, onnx_path, trt.__version__)
    per_profile = profile_shapes(_network_inputs(network), shapes, profiles)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = builder_optimization_level
    _add_profiles(builder, config, per_profile)
    cache_state = _attach_timing_cache(config, timing_cache_path, say)

    say(f"building with {len(per_profile)} profile(s); this takes minutes")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise PlanBuildError(_build_failure(onnx_path, trt.__version__, logger.errors))
    if verify:
        _verify_plan(trt, logger, serialized, len(per_profile))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(plan_path, memoryview(serialized))
    if timing_cache_path is not None:
        Path(timing_cache_path).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(Path(timing_cache_path), memoryview(config.get_timing_cache().serialize()))
    say(f"wrote {plan_path} in {seconds:.0f} s")
    return {
        **environment,
        "strongly_typed": True,
        "profiles": [asdict(p) for p in profiles],
        "input_shapes": {name: list(dims) for name, dims in _first_shapes(per_profile).items()},
        "builder_optimization_level": builder_optimization_level,
        "workspace_bytes": workspace_bytes,
        "timing_cache": cache_state,
        "build_seconds": round(seconds, 3),
        "plan_bytes": plan_path.stat().st_size,
    }


def _check_build_options(workspace_bytes: int, level: int) -> None:
    if not is_count(workspace_bytes):
        raise InputError(f"workspace {workspace_bytes!r} must be a positive number of bytes")
    if not isinstance(level, int) or not 0 <= level <= MAX_OPTIMIZATION_LEVEL:
        raise InputError(
            f"builder optimization level {level!r} must be 0..{MAX_OPTIMIZATION_LEVEL}"
        )


def _network_flags(trt: Any) -> int:
    """STRONGLY_TYPED (TensorRT 10); TensorRT 11 keeps the flag but ignores it (always on)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _make_logger(trt: Any, say: Log) -> Any:
    """A TensorRT logger that forwards warnings to ``say`` and keeps errors for our message."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:  # called from C++: must not raise
            try:
                if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR):
                    self.errors.append(one_line(msg))
                if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR, trt.Logger.WARNING):
                    say(f"TensorRT: {msg}")
            except Exception:
                pass

    return Logger()


def _parse(parser: Any, onnx_path: Path, version: str) -> None:
    ok = parser.parse_from_file(str(onnx_path))
    if ok and parser.num_errors == 0:
        return
    issues = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        issues.append(
            ParserIssue(
                node=int(error.node()),
                node_name=str(error.node_name()),
                operator=str(error.node_operator()),
                code=str(error.code()),
                desc=str(error.desc()),
            )
        )
    raise PlanBuildError(format_parser_errors(onnx_path, version, issues))


def _network_inputs(network: Any) -> list[tuple[str, tuple[int, ...]]]:
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tensor.shape
        inputs.append((tensor.name, tuple(int(shape[d]) for d in range(len(shape)))))
    return inputs


def _add_profiles(builder: Any, config: Any, per_profile: Sequence[ProfileShapes]) -> None:
    for shapes in per_profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise PlanBuildError(f"TensorRT rejected the optimisation profile {shapes}")


def _attach_timing_cache(config: Any, path: str | Path | None, say: Log) -> str | None:
    """Load the cache at ``path`` if any; a cache from another GPU/TensorRT is replaced, since
    NVIDIA warns that a mismatched cache may give functional or performance bugs."""
    if path is None:
        return None
    path = Path(path)
    blob, state = (path.read_bytes(), "loaded") if path.is_file() else (b"", "new")
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return state
    say(f"{path}: timing cache made for another GPU or TensorRT version; starting a new one")
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return "replaced"


def _build_failure(onnx_path: Path, version: str, errors: Sequence[str]) -> str:
    reason = errors[-1] if errors else "no error was logged"
    return (
        f"{onnx_path}: TensorRT {version} failed to build a plan ({reason}); try a larger "
        f"workspace, a smaller max batch, or {CPU_FALLBACK}"
    )


def _verify_plan(trt: Any, logger: Any, serialized: Any, n_profiles: int) -> None:
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise PlanBuildError("TensorRT built a plan that it cannot load back on this GPU")
    if engine.num_optimization_profiles != n_profiles:
        raise PlanBuildError(
            f"the plan has {engine.num_optimization_profiles} profiles, expected {n_profiles}"
        )


def _first_shapes(per_profile: Sequence[ProfileShapes]) -> dict[str, tuple[int, ...]]:
    return {name: shapes[0][1:] for name, shapes in per_profile[0].items()}
