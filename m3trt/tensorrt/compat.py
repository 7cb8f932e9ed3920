"""Whether a plan built in one environment may run in another (TensorRT release, GPU).

Nothing here imports TensorRT or CUDA at module level: the policy is plain Python, testable
without a GPU (tests/test_tensorrt_builder.py runs it against fakes shaped like TensorRT).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def check_plan_compatible(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """None if a plan built in ``recorded``'s environment can run in ``current``'s, else why not.

    The rule: a TensorRT plan is tied to the exact TensorRT release it was built with
    (major.minor.patch, and the build number when both sides record one) and, without a
    hardware-compatibility level, to the GPU's compute capability. A plan built with level
    ``AMPERE_PLUS`` runs on any compute capability >= 8.0. A different GPU model with the same
    compute capability runs the plan (its tactics were timed on the other model, so it may be a
    little slower: ``gpu_model_note`` says so); anything else is refused with the reason and the
    way out.
    """
    fix = "rebuild with `m3trt build` on this machine, or use --device cpu (the ONNX fallback)"
    built, here = recorded.get("tensorrt"), current.get("tensorrt")
    if not built:
        return f"the bundle does not record the TensorRT version of its plan: {fix}"
    if _release(built) is None or _release(built) != _release(here):
        return f"plan was built with TensorRT {built}, this host has {here or 'none'}: {fix}"
    if None not in (_build(built), _build(here)) and _build(built) != _build(here):
        return f"plan was built with TensorRT {built}, this host has build {here}: {fix}"
    built_cc, here_cc = recorded.get("compute_capability"), current.get("compute_capability")
    level = str(recorded.get("hardware_compatibility_level") or "NONE").upper()
    if level == "AMPERE_PLUS":
        if _capability(here_cc) is None or _capability(here_cc) < (8, 0):
            return (
                f"plan was built hardware-compatible with Ampere and later GPUs, this GPU is "
                f"compute capability {here_cc} ({current.get('gpu_name', '?')}): {fix}"
            )
        return None
    if not built_cc:
        return f"the bundle does not record the compute capability of its plan: {fix}"
    if str(built_cc) != str(here_cc):
        return (
            f"plan was built for compute capability {built_cc} ({recorded.get('gpu_name', '?')}), "
            f"this GPU is {here_cc} ({current.get('gpu_name', '?')}): {fix}"
        )
    return None


def gpu_model_note(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """A note when a compatible plan runs on another GPU model than the one it was timed on."""
    built, here = recorded.get("gpu_name"), current.get("gpu_name")
    if built and here and built != here:
        return f"plan was tuned on {built}, running on {here}: it may be a little slower"
    return None


def _build(version: Any) -> int | None:
    """The fourth number of "10.3.0.26", if any."""
    match = re.match(r"\s*\d+\.\d+\.\d+\.(\d+)", str(version or ""))
    return int(match.group(1)) if match else None


def _capability(value: Any) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", str(value or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _release(version: Any) -> tuple[int, ...] | None:
    """(major, minor, patch) of a version string; build numbers and suffixes do not matter."""
    if not version:
        return None
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if not match:
        return None
    return tuple(int(x or 0) for x in match.groups())
