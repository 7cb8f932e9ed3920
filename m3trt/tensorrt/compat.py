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
