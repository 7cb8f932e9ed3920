"""ONNX Runtime behind the engine interface: the CPU provider everywhere, the CUDA provider with
onnxruntime-gpu. onnxruntime-gpu silently falls back to the CPU when the CUDA libraries are
missing, so the providers really in use are read back from the session, never assumed.
"""

from __future__ import annotations

import queue
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
    StreamRunner,
    TensorSpec,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INSTALL_CPU = "pip install 'm3trt[cpu]' (onnxruntime)"
INSTALL_GPU = (
    "pip uninstall onnxruntime && pip install 'm3trt[gpu]' (onnxruntime-gpu) on a machine with an "
    "NVIDIA driver and the CUDA / cuDNN libraries"
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
    """CUDA provider settings for convolution nets, measured on an H200 (shared/gpu/README.md):
    the NHWC layout preference (FP16 b256 1.49x PyTorch's FP16 CUDA graph), cuDNN's exhaustive
    algorithm search (b1 1.33 -> 1.28 ms), cuDNN's full workspace. CUDA graph capture
    (``enable_cuda_graph``) is not on: the exported graph keeps a host-side batch-size value
    that ONNX Runtime copies to the CPU, which capture refuses (benchmarks/gpu_engines.py
    reports whether it works on a given graph)."""
    return {
        "prefer_nhwc": "1",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
    }


MAX_BOUND_BATCHES = 4  # batch sizes whose device buffers stay allocated (least recently used out)


class OnnxRuntimeEngine(Engine):
    """An ONNX Runtime session on the CPU or the CUDA provider."""

    kind = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        *,
        bind_io: bool | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        self.threads = threads
        # GPU: inputs and outputs bound to preallocated device buffers per batch size (copies in
        # place, no per-call allocation); ``bind_io=True`` takes the same path on the CPU (tests)
        self.bind_io = device == "cuda" if bind_io is None else bind_io
        self._bound: dict[int, tuple[Any, list[Any], list[Any]]] = {}
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
        self.supports_streams = device == "cuda"
        self.description = (
            f"onnxruntime {ort.__version__} {'+'.join(self.active_providers)} ({self.path.name})"
        )
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()  # sessions not running now
        self._free.put(self.session)

    def allow_parallel(self, runs: int) -> None:
        """One session per run, each with this engine's threads: runs sharing one session would
        share its one intra-op pool (cores / N threads for all of them on a many-core host)."""
        if self.bind_io or self.device != "cpu":
            super().allow_parallel(runs)
        ort = import_onnxruntime()
        for _ in range(runs - 1):
            options = session_options(self.threads)
            try:
                session = ort.InferenceSession(str(self.path), options, providers=[CPU])
            except Exception as exc:  # out of memory for one more copy, most likely
                raise EngineError(f"{self.path}: onnxruntime cannot load a session: {exc}") from exc
            self._free.put(session)
        self.parallel_runs = runs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.bind_io:
            return self._run_bound(feeds)
        if self.session is None:  # closed: its queue is empty, and get() would wait forever
            raise EngineError(f"{self.path}: the engine is closed")
        named = {name: feeds[name] for name in self.input_names}
        session = self._free.get()  # waits while every session is running
        try:
            values = session.run(None, named)
        finally:
            self._free.put(session)
        return dict(zip(self.output_names, values, strict=True))

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run through I/O binding on buffers kept per batch size: inputs copied in place
        (host to device), outputs copied back once; no allocation on the steady path."""
        batch = int(feeds[self.input_names[0]].shape[0])
        entry = self._bound.pop(batch, None) or self._bind(batch, feeds)
        self._bound[batch] = entry  # most recently used last
        while len(self._bound) > MAX_BOUND_BATCHES:
            self._bound.pop(next(iter(self._bound)))
        binding, inputs, outputs = entry
        for name, value in zip(self.input_names, inputs, strict=True):
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        self.session.run_with_iobinding(binding)
        # The bound buffers are reused by the next run: hand out copies, never views of them.
        return {
            name: np.array(value.numpy(), copy=True)
            for name, value in zip(self.output_names, outputs, strict=True)
        }

    def _bind(
        self, batch: int, feeds: Mapping[str, np.ndarray]
    ) -> tuple[Any, list[Any], list[Any]]:
        ort = import_onnxruntime()
        binding = self.session.io_binding()
        inputs = []
        for name in self.input_names:
            value = np.ascontiguousarray(feeds[name])
            ort_value = ort.OrtValue.ortvalue_from_shape_and_type(
                value.shape, value.dtype, self.device, 0
            )
            binding.bind_ortvalue_input(name, ort_value)
            inputs.append(ort_value)
        outputs = []
        for spec in self.outputs:
            shape = [batch if not isinstance(d, int) else d for d in spec.shape]
            if any(not isinstance(d, int) or d < 0 for d in shape[1:]):
                raise EngineError(
                    f"{self.path}: output {spec.name!r} has dynamic dims {spec.shape}"
                )
            ort_value = ort.OrtValue.ortvalue_from_shape_and_type(shape, spec.dtype, self.device, 0)
            binding.bind_ortvalue_output(spec.name, ort_value)
            outputs.append(ort_value)
        return binding, inputs, outputs

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

    def stream_runner(self, stream: Any, index: int) -> StreamRunner:
        """A session of its own whose CUDA provider computes on ``stream``
        (``user_compute_stream``; ONNX Runtime binds a session to one stream when it is made)."""
        if not self.supports_streams:
            return super().stream_runner(stream, index)
        return _OrtStreamRunner(self, stream)

    def close(self) -> None:
        self._bound.clear()
        self.session = None
        self._free = queue.SimpleQueue()


# ONNX Runtime synchronizes the CUDA stream at the end of every run unless told not to; the
# pipeline orders the copies and the compute on the stream itself and waits on events.
NO_SYNC = "disable_synchronize_execution_providers"


class _OrtStreamRunner(StreamRunner):
    """An ONNX Runtime session on the CUDA provider whose compute stream is the caller's; I/O
    bound to the caller's device buffers by address (``IOBinding.bind_input/bind_output``)."""

    def __init__(self, engine: OnnxRuntimeEngine, stream: Any) -> None:
        ort = import_onnxruntime()
        self._engine = engine
        options = {**cuda_provider_options(), "user_compute_stream": str(int(stream))}
        try:
            self.session = ort.InferenceSession(
                str(engine.path), session_options(engine.threads), providers=[(CUDA, options)]
            )
        except Exception as exc:
            raise EngineError(f"{engine.path}: onnxruntime cannot load it: {exc}") from exc
        if CUDA not in self.session.get_providers():
            raise EngineUnavailable("onnxruntime's CUDA provider did not load for a stream")
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry(NO_SYNC, "1")

    def enqueue(self, batch: int, addresses: Mapping[str, int]) -> None:
        if self.session is None:
            raise EngineError(f"{self._engine.path}: the stream runner is closed")
        binding = self.session.io_binding()
        for spec in self._engine.inputs:
            shape = _batch_shape(spec, batch)
            binding.bind_input(spec.name, "cuda", 0, spec.dtype, shape, int(addresses[spec.name]))
        for spec in self._engine.outputs:
            shape = _batch_shape(spec, batch)
            binding.bind_output(spec.name, "cuda", 0, spec.dtype, shape, int(addresses[spec.name]))
        try:
            self.session.run_with_iobinding(binding, self.run_options)
        except Exception as exc:  # onnxruntime raises its own Fail types
            raise EngineError(f"onnxruntime failed at batch {batch}: {exc}") from exc

    def close(self) -> None:
        self.session = None


def _batch_shape(spec: TensorSpec, batch: int) -> list[int]:
    """``spec``'s shape at ``batch`` rows; other dims must be static."""
    rest = list(spec.shape[1:])
    if any(not isinstance(d, int) or d < 0 for d in rest):
        raise EngineError(f"{spec.name!r} has dynamic dims {spec.shape} beyond the batch")
    return [batch, *rest]


def _spec(value: Any) -> TensorSpec:
    return TensorSpec(
        value.name, np.dtype(_ORT_TYPES.get(value.type, np.float32)), tuple(value.shape)
    )
