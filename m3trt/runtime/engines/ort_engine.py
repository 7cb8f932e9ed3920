"""ONNX Runtime behind the engine interface: the CPU provider everywhere, the CUDA provider with
onnxruntime-gpu. onnxruntime-gpu silently falls back to the CPU when the CUDA libraries are
missing, so the providers really in use are read back from the session, never assumed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.runtime.engines.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    SplitTiming,
    TensorSpec,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INSTALL_CPU = "pip install 'm3trt[cpu]' (onnxruntime)"
INSTALL_GPU = (
    "pip uninstall onnxruntime && pip install 'm3trt[gpu]' (onnxruntime-gpu) on a machine with an "
    "NVIDIA driver and CUDA 12"
)
_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def import_onnxruntime() -> Any:
    """``onnxruntime`` (either flavour), or a one-line error saying how to install one."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineUnavailable(
            f"no ONNX Runtime is installed ({exc}): {INSTALL_CPU}, or {INSTALL_GPU}"
        ) from None
    return ort


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def availability(device: str) -> tuple[bool, str]:
    """Whether this engine kind can run on ``device`` here, and why (not)."""
    try:
        providers = available_providers()
    except EngineUnavailable as exc:
        return False, str(exc)
    if device == "cpu":
        return True, "onnxruntime CPU provider"
    if CUDA in providers:
        return True, "onnxruntime CUDA provider"
    return (
        False,
        f"this onnxruntime has no CUDA provider (has: {', '.join(providers)}); {INSTALL_GPU}",
    )


def session_options(threads: int | None = None) -> Any:
    """m3trt's ONNX Runtime settings: one intra-op thread per core unless told, quiet logs."""
    import os

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    return options


def cpu_session(model: Any, threads: int | None = None) -> Any:
    """A CPUExecutionProvider session from a path or an ``onnx.ModelProto`` (build-time tools)."""
    ort = import_onnxruntime()
    source = str(model) if isinstance(model, str | Path) else model.SerializeToString()
    return ort.InferenceSession(source, session_options(threads), providers=[CPU])


def cuda_provider_options() -> dict[str, str]:
    """CUDA provider settings for convolution nets (measured on an H200, shared/gpu/README.md:
    NHWC preference 1.5x at batch 256 in FP16)."""
    return {"prefer_nhwc": "1", "cudnn_conv_use_max_workspace": "1"}


class OnnxRuntimeEngine(Engine):
    """An ONNX Runtime session on the CPU or the CUDA provider."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if device == "cuda":
            providers: list[Any] = [(CUDA, cuda_provider_options()), CPU]
        elif device == "cpu":
            providers = [CPU]
        else:
            raise EngineError(f"onnxruntime engine: unknown device {device!r}")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EngineError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        self.active_providers = list(self.session.get_providers())
        if device == "cuda" and CUDA not in self.active_providers:
            raise EngineUnavailable(
                "onnxruntime-gpu is installed but its CUDA provider did not load (CUDA / cuDNN "
                "libraries missing or no driver)"
            )
        self.device = device
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self.supports_split_timing = True
        self.description = (
            f"onnxruntime {ort.__version__} {'+'.join(self.active_providers)} ({self.path.name})"
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def run_timed(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], SplitTiming]:
        """The three steps of a GPU inference timed apart with ONNX Runtime's I/O binding, as
        trtexec splits them; on the CPU the copies are plain memory copies."""
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        t0 = time.perf_counter()
        values = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[name]), self.device, 0)
            for name in self.input_names
        ]
        for name, value in zip(self.input_names, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device)
        binding.synchronize_inputs()
        t1 = time.perf_counter()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        t2 = time.perf_counter()
        host = binding.copy_outputs_to_cpu()
        t3 = time.perf_counter()
        outputs = dict(zip(self.output_names, host, strict=True))
        return outputs, SplitTiming((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def close(self) -> None:
        self.session = None


def _spec(value: Any) -> TensorSpec:
    return TensorSpec(
        value.name, np.dtype(_ORT_TYPES.get(value.type, np.float32)), tuple(value.shape)
    )
