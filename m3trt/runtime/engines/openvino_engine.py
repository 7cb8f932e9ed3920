"""OpenVINO behind the engine interface: the CPU engine x86 users reach for besides ONNX Runtime.

It reads the bundle's portable ONNX graphs (the FP32 reference, the Q/DQ INT8 graph), never the
graph ONNX Runtime optimized offline for itself. FP32 graphs run at FP32 (the inference-precision
hint is pinned, so a CPU with bf16 units does not silently change the answers); OpenVINO's own
low-precision pass turns Q/DQ pairs into INT8 kernels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.runtime.engines.base import Engine, EngineError, EngineUnavailable, TensorSpec
from m3trt.runtime.model_io import OUTPUT_NAMES

INSTALL = "pip install 'm3trt[cpu]' (or pip install openvino)"
_DEVICES = {"cpu": "CPU"}


def import_openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise EngineUnavailable(f"OpenVINO is not installed ({exc}): {INSTALL}") from None
    return ov


def availability(device: str) -> tuple[bool, str]:
    if device not in _DEVICES:
        return False, f"the OpenVINO engine runs on the CPU only, not {device}"
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return False, f"OpenVINO is not installed: {INSTALL}"
    return True, "OpenVINO CPU plugin"


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


def compile_config(threads: int | None, cores: int | None = None) -> dict[str, str]:
    """Latency mode (one stream: the batch is the parallelism), FP32 kept FP32, our threads.

    OpenVINO pins its threads to cores by default on Linux, each process to the first cores it
    sees: two processes of 1 thread each (Ray's actors, two ``m3trt infer`` runs) then shared
    one core of two, at half the throughput (``benchmarks/results/openvino_pinning.md``). An
    engine given fewer threads than the process's cores is unpinned; one using them all keeps
    OpenVINO's default (one such process measured no different either way)."""
    cores = cores or usable_cores()
    n = threads or cores
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": str(n),
    }
    if n < cores:
        config["ENABLE_CPU_PINNING"] = "NO"
    return config


class OpenVinoEngine(Engine):
    kind = "openvino"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        ok, why = availability(device)
        if not ok:
            raise EngineUnavailable(why)
        ov = import_openvino()
        self.path = Path(path)
        self.device = device
        try:
            core = ov.Core()
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, _DEVICES[device], compile_config(threads))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            raise EngineError(f"{self.path}: OpenVINO cannot load it: {_first_line(exc)}") from exc
        self.request = self.compiled.create_infer_request()
        self.inputs = [_spec(port) for port in self.compiled.inputs]
        self.outputs = [_spec(port, OUTPUT_NAMES) for port in self.compiled.outputs]
        self._ports = list(self.compiled.outputs)
        self.description = f"openvino {ov.get_version().split('-')[0]} CPU ({self.path.name})"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer({name: feeds[name] for name in self.input_names})
        # The request's tensors are reused by the next call: hand out copies.
        return {
            spec.name: np.array(results[port], copy=True)
            for spec, port in zip(self.outputs, self._ports, strict=True)
        }

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _spec(port: Any, preferred: tuple[str, ...] = ()) -> TensorSpec:
    """The port's shape and type, named by the graph's own output name when the port has it
    among its names: OpenVINO fuses an output's producer (e.g. quantity's Mul + Add) and the
    fused port can answer ``get_any_name()`` with an internal name."""
    dims: list[int | None] = []
    for dim in port.get_partial_shape():
        dims.append(dim.get_length() if dim.is_static else None)
    dtype = np.dtype(port.get_element_type().to_dtype())
    names = port.get_names()
    name = next((n for n in preferred if n in names), port.get_any_name())
    return TensorSpec(name, dtype, tuple(dims))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
