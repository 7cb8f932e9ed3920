"""Optimization profiles: batch buckets and the input shapes TensorRT needs for each.

Nothing here imports TensorRT or CUDA at module level: the policy is plain Python, testable
without a GPU (tests/test_tensorrt_builder.py runs it against fakes shaped like TensorRT).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from m3trt.constants import BATCH_BUCKETS
from m3trt.errors import InputError

DEFAULT_BATCH_SIZES = BATCH_BUCKETS


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
    if not is_count(max_batch):
        raise InputError(f"max batch {max_batch!r} must be a positive integer")
    if not sizes:
        raise InputError("no batch sizes given: pass e.g. --batch-sizes 1,8,32")
    if not all(is_count(s) for s in sizes):
        raise InputError(
            f"batch sizes {sizes} must be positive integers, e.g. --batch-sizes 1,8,32"
        )
    if any(b <= a for a, b in itertools.pairwise(sizes)):
        raise InputError(f"batch sizes {sizes} must be increasing without repeats, e.g. 1,8,32")
    if sizes[-1] > max_batch:
        raise InputError(f"batch size {sizes[-1]} is above the max batch {max_batch}")
    return sizes


def is_count(value: object) -> bool:
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
