"""TensorRT behind the engine interface: a bundle's ``engine.plan`` on an NVIDIA GPU.

Written to the TensorRT 10/11 Python API (name-based I/O: ``num_io_tensors``,
``get_tensor_name/mode/dtype/shape``, ``get_tensor_profile_shape``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and cuda-python's ``cuda.bindings.runtime`` for
pinned host buffers, device buffers, the engine's own stream and events, as NVIDIA's current
samples do. Every TensorRT call that can fail (returns None or False) and every CUDA call (returns
an error code) is checked: a failure is one line naming the call, never a silent wrong answer.

At load the plan's recorded TensorRT version and GPU (``bundle.json`` beside the plan) are checked
against this host (``m3trt.tensorrt.compat``); a mismatch raises ``EngineUnavailable`` with the
reason, so ``open_engine`` falls back to the bundle's ONNX graph and prints why (with
``--engine tensorrt`` it refuses instead). One execution context per optimization profile, each
bound to its profile once; a batch runs on the context of the tightest profile that holds it.
Not yet verified with real TensorRT (none can be installed in this workplace): tested against
a strict fake shaped like TensorRT 11 and cuda-python (tests/test_tensorrt_engine.py).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.runtime.cuda_calls import CudaCalls
from m3trt.runtime.engines.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    SplitTiming,
    StreamRunner,
    TensorSpec,
)

BUNDLE_FILE = "bundle.json"


def availability(device: str) -> tuple[bool, str]:
    """TensorRT runs on NVIDIA GPUs only, with tensorrt and cuda-python importable."""
    if device != "cuda":
        return False, f"TensorRT runs on NVIDIA GPUs only, not {device}"
    from m3trt.tensorrt.environment import tensorrt_available

    return tensorrt_available()


def recorded_environment(plan: Path) -> dict[str, Any] | None:
    """The plan's build environment from ``bundle.json`` beside it (None for a bare plan)."""
    manifest = plan.parent / BUNDLE_FILE
    if not manifest.is_file():
        return None
    try:
        provenance = json.loads(manifest.read_text()).get("provenance", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise EngineError(f"{manifest}: cannot read the plan's provenance ({exc})") from None
    recorded = provenance.get("tensorrt_plan") if isinstance(provenance, dict) else None
    return recorded if isinstance(recorded, dict) else {}


@dataclass(frozen=True)
class Profile:
    """One optimization profile: its index and the batch sizes it accepts."""

    index: int
    min_batch: int
    max_batch: int


def choose_profile(profiles: list[Profile], batch: int) -> Profile:
    """The tightest profile that holds ``batch`` (its tactics were timed closest to it)."""
    fits = [p for p in profiles if p.min_batch <= batch <= p.max_batch]
    if not fits:
        ranges = ", ".join(f"{p.min_batch}..{p.max_batch}" for p in profiles)
        raise EngineError(f"batch {batch} fits none of the plan's profiles ({ranges})")
    return min(fits, key=lambda p: (p.max_batch - p.min_batch, p.index))


@dataclass
class _Buffer:
    """A tensor's device buffer and its pinned host mirror, sized for the largest batch."""

    spec: TensorSpec
    nbytes: int  # at the largest batch
    device: int
    host: int
    host_array: np.ndarray  # flat uint8 view over the pinned memory


class TensorRTEngine(Engine):
    kind = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        path: str | Path,
        device: str = "cuda",
        threads: int | None = None,
        *,
        recorded: Mapping[str, Any] | None = None,
    ) -> None:
        ok, why = availability(device)
        if not ok:
            raise EngineUnavailable(why)
        self.path = Path(path)
        self._closed = True  # nothing to free until _open starts
        self._buffers: dict[str, _Buffer] = {}
        self._contexts: list[Any] = []
        self._events: list[Any] = []
        self._stream: Any = None
        self._engine: Any = None
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self._trt = trt
        self._cuda = CudaCalls(cudart)
        self.note = self._check_compatible(recorded)
        self._closed = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------- loading
    def _check_compatible(self, recorded: Mapping[str, Any] | None) -> str | None:
        from m3trt.tensorrt.compat import check_plan_compatible, gpu_model_note
        from m3trt.tensorrt.environment import tensorrt_environment

        if recorded is None:
            recorded = recorded_environment(self.path)
        if recorded is None:  # a bare plan (a build candidate): TensorRT's own check only
            return None
        try:
            current = tensorrt_environment()
        except Exception as exc:
            raise EngineUnavailable(f"cannot query the GPU: {exc}") from None
        reason = check_plan_compatible(recorded, current)
        if reason is not None:
            raise EngineUnavailable(f"{self.path}: {reason}")
        return gpu_model_note(recorded, current)

    def _open(self) -> None:
        trt = self._trt
        if not self.path.is_file():
            raise EngineError(f"{self.path}: TensorRT plan not found")
        self._logger = _logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self._runtime is None:
            raise EngineUnavailable("TensorRT could not create a runtime")
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            errors = "; ".join(self._logger.errors[-2:]) or "no error was logged"
            raise EngineUnavailable(
                f"{self.path}: TensorRT {trt.__version__} cannot load the plan ({errors}); "
                "rebuild it with `m3trt build` on this machine"
            )
        self.inputs, self.outputs = self._io_specs()
        self._profiles = self._read_profiles()
        self.batch_range = (
            min(p.min_batch for p in self._profiles),
            max(p.max_batch for p in self._profiles),
        )
        cuda = self._cuda
        self._stream = cuda("cudaStreamCreateWithFlags", cuda.rt.cudaStreamNonBlocking)
        self._events = [cuda("cudaEventCreate") for _ in range(4)]
        for profile in self._profiles:
            context = self._engine.create_execution_context()
            if context is None:
                raise EngineError(f"TensorRT could not create a context for profile {profile}")
            self._contexts.append(context)
            if not context.set_optimization_profile_async(profile.index, int(self._stream)):
                raise EngineError(f"TensorRT refused optimization profile {profile.index}")
        cuda("cudaStreamSynchronize", self._stream)
        self._allocate()
        self.supports_split_timing = True
        self.supports_streams = True
        self.description = (
            f"tensorrt {trt.__version__} CUDA, {len(self._profiles)} profile(s), batch "
            f"{self.batch_range[0]}..{self.batch_range[1]} ({self.path.name})"
        )

    def _io_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        trt, engine = self._trt, self._engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            dims = tuple(int(d) for d in engine.get_tensor_shape(name))
            shape = tuple(None if d < 0 else d for d in dims)
            spec = TensorSpec(name, dtype, shape)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            else:
                outputs.append(spec)
        if not inputs or not outputs:
            raise EngineError(f"{self.path}: the plan has no inputs or no outputs")
        for spec in inputs:
            if any(d is None for d in spec.shape[1:]):
                raise EngineError(f"{self.path}: input {spec.name!r} has dynamic non-batch dims")
        return inputs, outputs

    def _read_profiles(self) -> list[Profile]:
        """Each profile's batch range, from the inputs' (min, opt, max) shapes; all inputs of a
        profile must agree on it (m3trt's builder varies the batch only)."""
        engine = self._engine
        count = int(engine.num_optimization_profiles)
        if count < 1:
            raise EngineError(f"{self.path}: the plan has no optimization profile")
        profiles = []
        for index in range(count):
            ranges = set()
            for spec in self.inputs:
                low, _opt, high = engine.get_tensor_profile_shape(spec.name, index)
                ranges.add((int(low[0]), int(high[0])))
                if tuple(low[1:]) != tuple(high[1:]) or tuple(high[1:]) != spec.shape[1:]:
                    raise EngineError(
                        f"{self.path}: profile {index} varies {spec.name!r} beyond its batch dim"
                    )
            if len(ranges) != 1:
                raise EngineError(f"{self.path}: profile {index} gives its inputs other batches")
            low, high = ranges.pop()
            if not 1 <= low <= high:
                raise EngineError(f"{self.path}: profile {index} has batch range {low}..{high}")
            profiles.append(Profile(index, low, high))
        return profiles

    def _allocate(self) -> None:
        """Device and pinned host buffers per tensor, sized from the tensor metadata at the
        largest batch of any profile; every batch reuses them (one stream, one run at a time)."""
        largest = max(self._profiles, key=lambda p: p.max_batch)
        context = self._contexts[self._profiles.index(largest)]
        for spec in self.inputs:
            shape = (largest.max_batch, *spec.shape[1:])
            if not context.set_input_shape(spec.name, shape):
                raise EngineError(f"TensorRT refused input shape {shape} for {spec.name!r}")
        for spec in [*self.inputs, *self.outputs]:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise EngineError(
                    f"{self.path}: output {spec.name!r} has a data-dependent shape {shape}"
                )
            nbytes = max(1, int(np.prod(shape)) * spec.dtype.itemsize)
            device = int(self._cuda("cudaMalloc", nbytes))
            self._buffers[spec.name] = _Buffer(spec, nbytes, device, 0, np.empty(0, np.uint8))
            host = int(self._cuda("cudaMallocHost", nbytes))
            array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(host))
            self._buffers[spec.name] = _Buffer(spec, nbytes, device, host, array)
        for context in self._contexts:
            for name, buffer in self._buffers.items():
                if not context.set_tensor_address(name, buffer.device):
                    raise EngineError(f"TensorRT refused the device address of {name!r}")

    # ------------------------------------------------------------------------------- running
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(feeds, timed=False)[0]

    def run_timed(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], SplitTiming]:
        outputs, timing = self._run(feeds, timed=True)
        assert timing is not None
        return outputs, timing

    def _run(
        self, feeds: Mapping[str, np.ndarray], timed: bool
    ) -> tuple[dict[str, np.ndarray], SplitTiming | None]:
        if self._closed:
            raise EngineError(f"{self.description}: the engine is closed")
        self.check_feeds(feeds)
        batch = int(feeds[self.inputs[0].name].shape[0])
        profile = choose_profile(self._profiles, batch)
        context = self._contexts[self._profiles.index(profile)]
        cuda, stream, events = self._cuda, self._stream, self._events
        h2d = cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, buffer in self._buffers.items():  # a stream runner may have bound its own
            if not context.set_tensor_address(name, buffer.device):
                raise EngineError(f"TensorRT refused the device address of {name!r}")
        for spec in self.inputs:
            value = np.ascontiguousarray(feeds[spec.name])
            if not context.set_input_shape(spec.name, value.shape):
                raise EngineError(f"TensorRT refused input shape {value.shape} for {spec.name!r}")
        shapes = {}
        for spec in self.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            if any(d < 0 for d in shape) or nbytes > self._buffers[spec.name].nbytes:
                raise EngineError(f"output {spec.name!r} shape {shape} does not fit its buffer")
            shapes[spec.name] = shape
        cuda("cudaEventRecord", events[0], stream)
        for spec in self.inputs:
            buffer, value = self._buffers[spec.name], np.ascontiguousarray(feeds[spec.name])
            buffer.host_array[: value.nbytes] = value.reshape(-1).view(np.uint8)
            cuda("cudaMemcpyAsync", buffer.device, buffer.host, value.nbytes, h2d, stream)
        cuda("cudaEventRecord", events[1], stream)
        if not context.execute_async_v3(int(stream)):
            raise EngineError(f"TensorRT execute_async_v3 failed at batch {batch}")
        cuda("cudaEventRecord", events[2], stream)
        for spec in self.outputs:
            buffer = self._buffers[spec.name]
            nbytes = int(np.prod(shapes[spec.name])) * spec.dtype.itemsize
            cuda("cudaMemcpyAsync", buffer.host, buffer.device, nbytes, d2h, stream)
        cuda("cudaEventRecord", events[3], stream)
        cuda("cudaStreamSynchronize", stream)
        outputs = {}
        for spec in self.outputs:  # copies: the pinned buffers are reused by the next run
            shape = shapes[spec.name]
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            flat = self._buffers[spec.name].host_array[:nbytes]
            outputs[spec.name] = flat.view(spec.dtype).reshape(shape).copy()
        if not timed:
            return outputs, None
        ms = [float(cuda("cudaEventElapsedTime", events[i], events[i + 1])) for i in range(3)]
        return outputs, SplitTiming(*ms)

    def stream_runner(self, stream: Any, index: int) -> StreamRunner:
        """Contexts computing on the caller's ``stream``. TensorRT lets one context at a time
        hold an optimization profile of a deserialized engine, so runner 0 shares this engine's
        contexts (``run`` re-binds its own buffers each call) and every further runner
        deserializes the plan again for contexts of its own (the weights once more on the GPU)."""
        if self._closed:
            raise EngineError(f"{self.description}: the engine is closed")
        if index == 0:
            return _TensorRTStreamRunner(self, self._contexts, stream, owned=None)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EngineError(f"{self.path}: TensorRT could not deserialize the plan again")
        contexts = []
        for profile in self._profiles:
            context = engine.create_execution_context()
            if context is None:
                raise EngineError(f"TensorRT could not create a context for profile {profile}")
            if not context.set_optimization_profile_async(profile.index, int(stream)):
                raise EngineError(f"TensorRT refused optimization profile {profile.index}")
            contexts.append(context)
        return _TensorRTStreamRunner(self, contexts, stream, owned=engine)

    # ------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Free buffers, events, the stream, contexts and the engine; idempotent. Errors while
        freeing are ignored (the process may be exiting and the driver gone)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        rt = self._cuda.rt
        for buffer in self._buffers.values():
            if buffer.host:
                rt.cudaFreeHost(buffer.host)
            if buffer.device:
                rt.cudaFree(buffer.device)
        self._buffers.clear()
        for event in self._events:
            rt.cudaEventDestroy(event)
        self._events = []
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._contexts.clear()  # contexts before the engine that made them
        self._engine = None


class _TensorRTStreamRunner(StreamRunner):
    """One context per profile, each batch on the tightest profile, enqueued on one stream."""

    def __init__(self, owner: TensorRTEngine, contexts: list[Any], stream: Any, owned: Any):
        self._owner, self._contexts, self._stream = owner, contexts, stream
        self._engine = owned  # a deserialized copy this runner frees (None: the owner's)

    def enqueue(self, batch: int, addresses: Mapping[str, int]) -> None:
        owner = self._owner
        if owner._closed or self._contexts is None:
            raise EngineError(f"{owner.description}: the engine is closed")
        profile = choose_profile(owner._profiles, batch)
        context = self._contexts[owner._profiles.index(profile)]
        for spec in owner.inputs:
            shape = (batch, *spec.shape[1:])
            if not context.set_input_shape(spec.name, shape):
                raise EngineError(f"TensorRT refused input shape {shape} for {spec.name!r}")
        for spec in [*owner.inputs, *owner.outputs]:
            if not context.set_tensor_address(spec.name, int(addresses[spec.name])):
                raise EngineError(f"TensorRT refused the device address of {spec.name!r}")
        if not context.execute_async_v3(int(self._stream)):
            raise EngineError(f"TensorRT execute_async_v3 failed at batch {batch}")

    def close(self) -> None:
        if self._engine is not None:
            self._contexts = None  # contexts before the engine that made them
            self._engine = None


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors for our messages (it must never raise)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            try:
                if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR):
                    self.errors.append(" ".join(str(msg).split()))
            except Exception:
                pass

    return Logger()
