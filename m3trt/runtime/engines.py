"""Engines: one small interface over whatever runs the graph (DESIGN §4, Polygraphy's shape).

An engine has named inputs with their metadata, named outputs, and ``run(feeds) -> outputs``.
The ONNX Runtime engine covers the CPU default and, with onnxruntime-gpu installed, the CUDA and
TensorRT execution providers. onnxruntime-gpu silently falls back to the CPU when the CUDA
libraries are missing, so the providers really in use are read back from the session and
reported, never assumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from m3trt.errors import M3Error
from m3trt.runtime.bundle import ENGINE, REFERENCE, Bundle
from m3trt.runtime.sessions import session_options

DEVICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_INSTALL = (
    "install onnxruntime-gpu in place of onnxruntime (pip uninstall onnxruntime && "
    "pip install onnxruntime-gpu) on a machine with an NVIDIA driver and CUDA 12"
)
_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class Engine(Protocol):
    inputs: list[TensorSpec]
    outputs: list[str]
    description: str

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class DeviceChoice:
    """What will run, on what, and why (printed by ``m3trt infer``)."""

    device: str  # "cpu" | "cuda"
    providers: list[str]
    artifact: str  # bundle artifact role
    reason: str


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_device(bundle: Bundle, device: str, available: list[str]) -> DeviceChoice:
    """Pick the providers and the artifact for ``--device``; a clear error when it cannot be met."""
    if device not in DEVICES:
        raise M3Error(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    has_gpu = CUDA in available
    if device == "cuda" and not has_gpu:
        raise M3Error(
            f"--device cuda: this onnxruntime has no CUDA provider (has: {', '.join(available)}); "
            + GPU_INSTALL
        )
    if device == "cpu" or not has_gpu:
        why = "asked for cpu" if device == "cpu" else "no CUDA provider in this onnxruntime"
        return _cpu_choice(bundle, why)
    providers = [CUDA, CPU]
    if TENSORRT in available and bundle.target == "tensorrt":
        providers = [TENSORRT, *providers]
    role = "graph" if bundle.target == "tensorrt" and "graph" in bundle.artifacts else ENGINE
    if bundle.target == "cpu" and bundle.precision == "int8":
        # CPU Q/DQ kernels (uint8 activations) are not what CUDA runs fast: use the FP32 graph.
        role = REFERENCE
    if role not in bundle.artifacts:
        role = REFERENCE
    why = "asked for cuda" if device == "cuda" else "CUDA provider available"
    return DeviceChoice("cuda", providers, role, why)


def _cpu_choice(bundle: Bundle, why: str) -> DeviceChoice:
    if bundle.target == "cpu":
        return DeviceChoice("cpu", [CPU], ENGINE if ENGINE in bundle.artifacts else REFERENCE, why)
    return DeviceChoice(
        "cpu", [CPU], REFERENCE, f"{why}; a TensorRT bundle runs its FP32 reference on the CPU"
    )


@dataclass
class OnnxRuntimeEngine:
    """An ONNX Runtime session behind the engine interface."""

    path: Path
    providers: list[str]
    threads: int | None = None
    inputs: list[TensorSpec] = field(init=False)
    outputs: list[str] = field(init=False)
    description: str = field(init=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = session_options(self.threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise M3Error(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        self.inputs = [
            TensorSpec(i.name, np.dtype(_ORT_TYPES.get(i.type, np.float32)), tuple(i.shape))
            for i in self.session.get_inputs()
        ]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.active_providers = list(self.session.get_providers())
        self.description = (
            f"onnxruntime {ort.__version__} {'+'.join(self.active_providers)} ({self.path.name})"
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = {spec.name: feeds[spec.name] for spec in self.inputs}
        values = self.session.run(None, wanted)
        return dict(zip(self.outputs, values, strict=True))

    @property
    def device_type(self) -> str:
        return "cuda" if CUDA in self.active_providers else "cpu"

    def run_timed(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
        """``run`` split in three timed steps (ms) with ONNX Runtime's I/O binding, as trtexec
        splits a GPU inference: host-to-device copies, compute, device-to-host copies. On the
        CPU the copies are plain memory copies."""
        import time

        import onnxruntime as ort

        device = self.device_type
        binding = self.session.io_binding()
        t0 = time.perf_counter()
        values = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[s.name]), device, 0)
            for s in self.inputs
        ]
        for spec, value in zip(self.inputs, values, strict=True):
            binding.bind_ortvalue_input(spec.name, value)
        for name in self.outputs:
            binding.bind_output(name, device)
        binding.synchronize_inputs()
        t1 = time.perf_counter()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        t2 = time.perf_counter()
        host = binding.copy_outputs_to_cpu()
        t3 = time.perf_counter()
        outputs = dict(zip(self.outputs, host, strict=True))
        return outputs, ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)


def open_engine(
    bundle: Bundle,
    device: str = "auto",
    *,
    threads: int | None = None,
    available: list[str] | None = None,
) -> tuple[OnnxRuntimeEngine, DeviceChoice]:
    """The engine for ``bundle`` on ``device``, with the choice actually made.

    A GPU session whose CUDA provider did not load (missing CUDA libraries) is an error for
    ``--device cuda`` and a reported fallback to the CPU for ``auto``.
    """
    choice = choose_device(
        bundle, device, available if available is not None else available_providers()
    )
    engine = OnnxRuntimeEngine(bundle.artifact_path(choice.artifact), choice.providers, threads)
    if choice.device == "cuda" and CUDA not in engine.active_providers:
        if device == "cuda":
            raise M3Error(
                "--device cuda: onnxruntime-gpu is installed but its CUDA provider did not load "
                "(CUDA 12 / cuDNN libraries missing or no driver); run with --device cpu"
            )
        choice = _cpu_choice(bundle, "the CUDA provider did not load (CUDA libraries missing)")
        engine = OnnxRuntimeEngine(bundle.artifact_path(choice.artifact), choice.providers, threads)
    return engine, choice


def describe(engine: Any, choice: DeviceChoice) -> str:
    return f"device {choice.device} ({choice.reason}): {engine.description}"
