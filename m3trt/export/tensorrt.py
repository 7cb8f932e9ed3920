"""Strongly typed TensorRT plan builder (DESIGN §3.4, §4). Not yet verified on a GPU with TensorRT.

TensorRT 10.1 deprecates and TensorRT 11 removes implicit precision (``BuilderFlag.FP16/INT8``,
calibrators), so every network here is *strongly typed*: the ONNX graph alone decides
precision (FP16 from ``fp16.convert_to_fp16``, INT8 from symmetric Q/DQ nodes) and no
precision flag or calibrator is ever set. ``EXPLICIT_BATCH`` is not passed either: it is
ignored (deprecated) in TensorRT 10 and gone in 11, where networks are always explicit-batch.

Only ``build_plan``, ``tensorrt_available``, ``gpu_info`` and their helpers touch TensorRT or
CUDA, and they import them inside the function. Everything they decide (profiles, input
shapes, compatibility, messages) is plain Python below, testable without a GPU.

API calls follow TensorRT 10/11's Python bindings (``python/src/infer/pyCore.cpp``,
``python/src/parsers/pyOnnx.cpp``) and NVIDIA's samples (``samples/python/common.py`` for the
timing cache, ``samples/python/strongly_type_autocast`` for the strongly typed flag).
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from m3trt.errors import InputError, M3Error

DEFAULT_BATCH_SIZES = (1, 8, 32)
# TensorRT's default workspace is the whole GPU; 4 GiB leaves room for other processes and is
# ample for ResNet tactics at batch 32.
DEFAULT_WORKSPACE_BYTES = 4 << 30
MAX_OPTIMIZATION_LEVEL = 5  # TensorRT's builder_optimization_level range is 0..5, default 3
SHOWN_PARSER_ERRORS = 3

INSTALL_TENSORRT = "pip install tensorrt-cu12 (or `tensorrt`, per NVIDIA's TensorRT install guide)"
INSTALL_CUDA_PYTHON = "pip install cuda-python"
CPU_FALLBACK = "`--target cpu` (ONNX Runtime) works on every machine"

Log = Callable[[str], None]


class PlanBuildError(M3Error):
    """TensorRT refused the graph or failed to build it; the message says what and the way out."""


# --------------------------------------------------------------------------------------------------
# Optimisation profiles


@dataclass(frozen=True)
class BatchProfile:
    """One TensorRT optimisation profile: the batches it accepts and the size it is tuned for."""

    min: int
    opt: int
    max: int


def batch_profiles(batch_sizes: Sequence[int], max_batch: int) -> list[BatchProfile]:
    """One profile per batch bucket: bucket i serves batches (size[i-1], size[i]], tuned at size[i].

    [1, 8, 32] -> (1,1,1), (2,8,8), (9,32,32); a ``max_batch`` above the last size adds a last
    bucket (33, 64, 64) for max_batch=64. Why buckets rather than one (1, 32, 32) profile: the
    folder pipeline sends full batches (a partial one only at the end), and tactics timed at the
    exact bucket size are faster than tactics timed at 32 and run at 1. The price is build time
    and plan size, linear in the number of buckets; each execution context binds one profile.
    """
    sizes = _check_batch_sizes(batch_sizes, max_batch)
    if sizes[-1] < max_batch:
        sizes.append(max_batch)
    lows = [1, *(s + 1 for s in sizes[:-1])]
    return [BatchProfile(lo, size, size) for lo, size in zip(lows, sizes, strict=True)]


def _check_batch_sizes(batch_sizes: Sequence[int], max_batch: int) -> list[int]:
    sizes = list(batch_sizes)
    if not _is_count(max_batch):
        raise InputError(f"max batch {max_batch!r} must be a positive integer")
    if not sizes:
        raise InputError("no batch sizes given: pass e.g. --batch-sizes 1,8,32")
    if not all(_is_count(s) for s in sizes):
        raise InputError(
            f"batch sizes {sizes} must be positive integers, e.g. --batch-sizes 1,8,32"
        )
    if any(b <= a for a, b in itertools.pairwise(sizes)):
        raise InputError(f"batch sizes {sizes} must be increasing without repeats, e.g. 1,8,32")
    if sizes[-1] > max_batch:
        raise InputError(f"batch size {sizes[-1]} is above the max batch {max_batch}")
    return sizes


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------------------------------
# Input shapes


def input_shapes_from_onnx(model: Any) -> dict[str, tuple[int, ...]]:
    """Per graph input, its non-batch dims (``image`` -> (S, S, 3), ``tags`` -> (T,)).

    ``model`` is an ``onnx.ModelProto`` or a path. The batch dim must be dynamic and every other
    dim static: the profiles vary the batch only.
    """
    import onnx
    from google.protobuf.message import DecodeError

    source = "ONNX model"
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        try:
            model = onnx.load(source, load_external_data=False)
        except (OSError, DecodeError) as exc:
            raise InputError(f"{source}: cannot read the ONNX model ({exc})") from None
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name not in initializers:
            shapes[value.name] = _non_batch_dims(source, value)
    if not shapes:
        raise InputError(f"{source}: the graph has no inputs")
    return shapes


def _non_batch_dims(source: str, value: Any) -> tuple[int, ...]:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or not tensor.shape.dim:
        raise InputError(
            f"{source}: input '{value.name}' has no shape; re-export with m3trt export"
        )
    dims = list(tensor.shape.dim)
    if dims[0].HasField("dim_value"):
        raise InputError(
            f"{source}: input '{value.name}' has a fixed batch of {dims[0].dim_value}; "
            "re-export with a dynamic batch (m3trt export)"
        )
    out = []
    for axis, dim in enumerate(dims[1:], start=1):
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            name = dim.dim_param or "?"
            raise InputError(
                f"{source}: input '{value.name}' dim {axis} ('{name}') is dynamic; only the "
                "batch may vary: re-export with a fixed image size and tag count"
            )
        out.append(int(dim.dim_value))
    return tuple(out)


ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profile_shapes(
    network_inputs: Sequence[tuple[str, Sequence[int]]],
    input_shapes: Mapping[str, Sequence[int]],
    profiles: Sequence[BatchProfile],
) -> list[ProfileShapes]:
    """Per profile, {input: (min, opt, max) full shapes} for each input with a dynamic batch.

    ``network_inputs`` are (name, shape) as TensorRT parsed them (-1 = dynamic).
    ``input_shapes`` give the non-batch dims; where TensorRT knows a dim statically it must agree.
    """
    if not profiles:
        raise InputError("no optimisation profiles: pass at least one batch size")
    known = {name for name, _ in network_inputs}
    unknown = sorted(set(input_shapes) - known)
    if unknown:
        raise InputError(f"input_shapes names {unknown}, not inputs of the network {sorted(known)}")
    dims = {}
    for name, shape in network_inputs:
        shape = tuple(int(d) for d in shape)
        if shape and shape[0] == -1:
            dims[name] = _merge_dims(name, shape[1:], input_shapes.get(name))
    return [
        {name: ((p.min, *rest), (p.opt, *rest), (p.max, *rest)) for name, rest in dims.items()}
        for p in profiles
    ]


def _merge_dims(name: str, parsed: tuple[int, ...], given: Sequence[int] | None) -> tuple[int, ...]:
    if given is None:
        if any(d < 0 for d in parsed):
            raise InputError(f"input '{name}' has dynamic non-batch dims {parsed}: give its shape")
        return parsed
    given = tuple(int(d) for d in given)
    if len(given) != len(parsed):
        raise InputError(
            f"input '{name}': shape {given} has {len(given)} non-batch dims, the network has "
            f"{len(parsed)} {parsed}"
        )
    agrees = all(p in (-1, g) for p, g in zip(parsed, given, strict=True))
    if not agrees or min(given, default=1) < 1:
        raise InputError(f"input '{name}': shape {given} disagrees with the network's {parsed}")
    return given


# --------------------------------------------------------------------------------------------------
# Availability and environment


def tensorrt_available() -> tuple[bool, str]:
    """Whether ``import tensorrt`` works and CUDA sees a GPU; the reason (with the fix) if not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        return False, f"the tensorrt Python package is not importable ({exc}): {INSTALL_TENSORRT}"
    try:
        cudart = _cudart()
    except (ImportError, OSError) as exc:
        return False, f"cuda-python is not importable ({exc}): {INSTALL_CUDA_PYTHON}"
    err, count = cudart.cudaGetDeviceCount()
    if _failed(cudart, err):
        return False, _cuda_failure(cudart, err)
    if not count:
        return False, "CUDA sees no NVIDIA GPU: check the driver with nvidia-smi"
    return True, f"TensorRT {trt.__version__}, {count} NVIDIA GPU(s)"


def require_tensorrt() -> None:
    """Raise a one-line ``M3Error`` naming what is missing and how to get it."""
    ok, reason = tensorrt_available()
    if not ok:
        raise M3Error(f"TensorRT target unavailable: {reason}; {CPU_FALLBACK}")


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability ("9.0") and memory of one GPU, via cuda.bindings.runtime."""
    try:
        cudart = _cudart()
    except (ImportError, OSError) as exc:
        raise M3Error(f"cuda-python is not importable ({exc}): {INSTALL_CUDA_PYTHON}") from None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if _failed(cudart, err):
        raise M3Error(f"cannot query GPU {device}: {_cuda_failure(cudart, err)}; {CPU_FALLBACK}")
    return {
        "gpu_name": _c_string(prop.name),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "gpu_memory_bytes": int(prop.totalGlobalMem),
    }


def tensorrt_environment(device: int = 0) -> dict[str, Any]:
    """What a plan depends on, as recorded in bundle provenance: TensorRT version + the GPU."""
    import tensorrt as trt

    return {"tensorrt": trt.__version__, **gpu_info(device)}


def _cudart() -> Any:
    from cuda.bindings import runtime as cudart

    return cudart


def _failed(cudart: Any, err: Any) -> bool:
    return err != cudart.cudaError_t.cudaSuccess


def _cuda_failure(cudart: Any, err: Any) -> str:
    name = getattr(err, "name", str(err))
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        return f"no NVIDIA driver, or one too old for this CUDA ({name}): install or update it"
    if err == cudart.cudaError_t.cudaErrorNoDevice:
        return f"CUDA sees no NVIDIA GPU ({name}): check the driver with nvidia-smi"
    return f"CUDA error {name}: check the NVIDIA driver with nvidia-smi"


def _c_string(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.split("\x00", 1)[0].strip()


# --------------------------------------------------------------------------------------------------
# Plan compatibility


def check_plan_compatible(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None if a plan built in ``recorded``'s environment can run in ``current``'s, else why not.

    The rule: a TensorRT plan is tied to the exact TensorRT release it was built with
    (major.minor.patch) and, by default (no hardware-compatibility level, which we do not
    use), to the GPU's compute capability. A different GPU model with the same compute
    capability runs the plan (its tactics were timed on the other model, so it may be a little
    slower); anything else is refused with the reason and the way out.
    """
    fix = "rebuild with `m3trt build` on this machine, or use --device cpu (the ONNX fallback)"
    built, here = recorded.get("tensorrt"), current.get("tensorrt")
    if not built:
        return f"the bundle does not record the TensorRT version of its plan: {fix}"
    if _release(built) is None or _release(built) != _release(here):
        return f"plan was built with TensorRT {built}, this host has {here or 'none'}: {fix}"
    built_cc, here_cc = recorded.get("compute_capability"), current.get("compute_capability")
    if not built_cc:
        return f"the bundle does not record the compute capability of its plan: {fix}"
    if str(built_cc) != str(here_cc):
        return (
            f"plan was built for compute capability {built_cc} ({recorded.get('gpu_name', '?')}), "
            f"this GPU is {here_cc} ({current.get('gpu_name', '?')}): {fix}"
        )
    return None


def _release(version: Any) -> tuple[int, ...] | None:
    """(major, minor, patch) of a version string; build numbers and suffixes do not matter."""
    if not version:
        return None
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not match:
        return None
    return tuple(int(x or 0) for x in match.groups())


# --------------------------------------------------------------------------------------------------
# Parser errors


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX parser error, copied out of TensorRT's ``ParserError``."""

    node: int
    node_name: str
    operator: str
    code: str
    desc: str


def format_parser_errors(onnx_path: str | Path, version: str, issues: Sequence[ParserIssue]) -> str:
    """One line: which nodes TensorRT could not parse, why, and what to do."""
    shown = []
    for issue in issues[:SHOWN_PARSER_ERRORS]:
        where = f"node '{issue.node_name}' ({issue.operator})" if issue.node_name else "the graph"
        shown.append(f"{where}: {issue.code}: {_one_line(issue.desc)}")
    more = len(issues) - len(shown)
    detail = "; ".join(shown) or "no details reported"
    if more > 0:
        detail += f"; and {more} more"
    return (
        f"{onnx_path}: TensorRT {version} cannot parse the graph: {detail}; "
        f"try a newer TensorRT, or {CPU_FALLBACK}"
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------
# The build (the only part that needs TensorRT)


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
    _write_atomic(plan_path, memoryview(serialized))
    if timing_cache_path is not None:
        _write_atomic(Path(timing_cache_path), memoryview(config.get_timing_cache().serialize()))
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
    if not _is_count(workspace_bytes):
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
                    self.errors.append(_one_line(msg))
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


def _write_atomic(path: Path, data: memoryview | bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
