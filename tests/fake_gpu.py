"""Strict fakes of TensorRT 11's runtime API and cuda-python's ``cuda.bindings.runtime``.

Strict means: classes have ``__slots__`` (setting an attribute TensorRT does not have raises),
only TensorRT 10/11 names exist (no ``num_bindings``, ``execute_async_v2``, ``get_binding_*``:
removed in 10), a context must have its optimization profile selected before shapes are set,
shapes outside the active profile are refused (``False``, as TensorRT returns), ``execute_async_v3``
returns ``False`` until every input shape and tensor address is set, and every CUDA call returns
``(cudaError_t, *values)`` and can be told to fail. With ``deferred=True`` work queued on a stream
(copies, event records, TensorRT and ONNX Runtime compute) runs only when something waits for it
(``cudaStreamSynchronize``, ``cudaEventSynchronize``), the latest moment a GPU may run it: code that
reads a result before waiting for it, or reuses a buffer the GPU has not finished with, gets wrong
numbers, not lucky ones. Device memory is simulated (bytearrays at fake
addresses, bounds checked); pinned host memory is real (ctypes), so the engine's numpy views over
it work as on a GPU host. The "network" computes outputs from its inputs with numpy
(``reference_outputs``), so the tests check the whole data path, not only the calls.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
from typing import Any

import numpy as np

S, T, C, K = 8, 5, 4, 3  # image side, tags, classes, top-k width of the fake network


def reference_outputs(image: np.ndarray, tags: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake network computes: enough structure that a swapped buffer shows."""
    mean = image.reshape(len(image), -1).astype(np.float32).mean(axis=1) / 255.0
    scores = 1 / (1 + np.exp(-(mean[:, None] + tags.sum(1)[:, None] - np.arange(C) * 0.3)))
    scores = scores.astype(np.float32)
    return {
        "scores": scores,
        "quantity": (1 + scores.sum(1)).astype(np.float32),
        "k": np.clip(np.round(scores.sum(1)), 1, K).astype(np.int32),
        "topk": np.argsort(-scores, axis=1, kind="stable")[:, :K].astype(np.int32),
    }


# ------------------------------------------------------------------------------------ cuda-python
class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600


class MemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class Stream:
    __slots__ = ("alive", "handle", "pending")

    def __init__(self, handle: int) -> None:
        self.handle, self.alive = handle, True
        self.pending: list[Any] = []  # deferred work, in queue order

    def __int__(self) -> int:
        return self.handle


class Event:
    __slots__ = ("alive", "done", "stream", "time", "work")

    def __init__(self) -> None:
        self.alive, self.time, self.stream, self.done, self.work = True, None, None, True, None


class FakeCudaRuntime:
    """``cuda.bindings.runtime``: device memory simulated, pinned memory real."""

    def __init__(
        self,
        *,
        fail: dict[str, CudaError] | None = None,
        devices: int = 1,
        deferred: bool = False,
    ) -> None:
        self.fail = dict(fail or {})
        self.deferred = deferred
        self.log: list[tuple[str, int]] = []  # (what, stream handle) as work is queued
        self.waiters: list[str] = []  # the thread of each cudaEventSynchronize
        self.devices = devices
        self.device_memory: dict[int, bytearray] = {}
        self.host_memory: dict[int, Any] = {}
        self.streams: list[Stream] = []
        self.events: list[Event] = []
        self.malloc_sizes: list[int] = []
        self.clock = 0.0
        self._next = 0x7F00_0000_0000

    def module(self) -> types.ModuleType:
        rt = types.ModuleType("cuda.bindings.runtime")
        rt.cudaError_t = CudaError
        rt.cudaMemcpyKind = MemcpyKind
        rt.cudaStreamNonBlocking = 1
        for name in (
            "cudaGetDeviceCount",
            "cudaGetDeviceProperties",
            "cudaRuntimeGetVersion",
            "cudaDriverGetVersion",
            "cudaMalloc",
            "cudaMallocHost",
            "cudaFree",
            "cudaFreeHost",
            "cudaMemcpyAsync",
            "cudaStreamCreateWithFlags",
            "cudaStreamSynchronize",
            "cudaStreamDestroy",
            "cudaEventCreate",
            "cudaEventRecord",
            "cudaEventElapsedTime",
            "cudaEventSynchronize",
            "cudaEventDestroy",
        ):
            setattr(rt, name, self._wrap(name, getattr(self, "_" + name)))
        return rt

    def install(self, monkeypatch) -> None:
        rt = self.module()
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = rt
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)

    RETURNS_VALUE = frozenset(
        {
            "cudaGetDeviceCount",
            "cudaGetDeviceProperties",
            "cudaRuntimeGetVersion",
            "cudaDriverGetVersion",
            "cudaMalloc",
            "cudaMallocHost",
            "cudaStreamCreateWithFlags",
            "cudaEventCreate",
            "cudaEventElapsedTime",
        }
    )

    def _wrap(self, name, fn):
        def call(*args):
            if name in self.fail:  # as cuda-python: (err, None) or (err,)
                return (self.fail[name], None) if name in self.RETURNS_VALUE else (self.fail[name],)
            return getattr(self, "_" + name)(*args)  # looked up per call: tests may wrap it

        return call

    def stream_by_handle(self, handle: int) -> Stream | None:
        return next((s for s in self.streams if s.alive and s.handle == handle), None)

    def enqueue(self, stream: Stream, what: str, work) -> None:
        """Queue ``work`` on ``stream`` (deferred) or run it now."""
        self.log.append((what, stream.handle))
        if self.deferred:
            stream.pending.append(work)
        else:
            work()

    def _drain(self, stream: Stream, until=None) -> None:
        """Run the stream's queued work in order, up to and including ``until``."""
        while stream.pending:
            work = stream.pending.pop(0)
            work()
            if until is not None and work is until:
                return

    def outstanding(self) -> dict[str, int]:
        return {
            "device": len(self.device_memory),
            "host": len(self.host_memory),
            "streams": sum(s.alive for s in self.streams),
            "events": sum(e.alive for e in self.events),
        }

    # devices
    def _cudaGetDeviceCount(self):
        return (CudaError.cudaSuccess, self.devices)

    def _cudaGetDeviceProperties(self, device):
        if not 0 <= device < self.devices:
            return (CudaError.cudaErrorInvalidValue, None)
        prop = types.SimpleNamespace(
            name=b"NVIDIA H200\x00", major=9, minor=0, totalGlobalMem=150 << 30
        )
        return (CudaError.cudaSuccess, prop)

    def _cudaRuntimeGetVersion(self):
        return (CudaError.cudaSuccess, 13000)

    def _cudaDriverGetVersion(self):
        return (CudaError.cudaSuccess, 13000)

    # memory
    def _cudaMalloc(self, size):
        if not isinstance(size, int) or size <= 0:
            return (CudaError.cudaErrorInvalidValue, 0)
        address, self._next = self._next, self._next + size + 256
        self.device_memory[address] = bytearray(size)
        self.malloc_sizes.append(size)
        return (CudaError.cudaSuccess, address)

    def _cudaMallocHost(self, size):
        if not isinstance(size, int) or size <= 0:
            return (CudaError.cudaErrorInvalidValue, 0)
        buffer = ctypes.create_string_buffer(size)
        address = ctypes.addressof(buffer)
        self.host_memory[address] = buffer
        return (CudaError.cudaSuccess, address)

    def _cudaFree(self, address):
        if self.device_memory.pop(address, None) is None:
            return (CudaError.cudaErrorInvalidValue,)
        return (CudaError.cudaSuccess,)

    def _cudaFreeHost(self, address):
        if self.host_memory.pop(address, None) is None:
            return (CudaError.cudaErrorInvalidValue,)
        return (CudaError.cudaSuccess,)

    def _device_span(self, address: int, count: int) -> tuple[bytearray, int] | None:
        for base, memory in self.device_memory.items():
            if base <= address and address + count <= base + len(memory):
                return memory, address - base
        return None

    def _host_ok(self, address: int, count: int) -> bool:
        return any(
            base <= address and address + count <= base + ctypes.sizeof(buf)
            for base, buf in self.host_memory.items()
        )

    def read_device(self, address: int, count: int) -> bytes | None:
        span = self._device_span(address, count)
        return None if span is None else bytes(span[0][span[1] : span[1] + count])

    def write_device(self, address: int, data: bytes) -> bool:
        span = self._device_span(address, len(data))
        if span is None:
            return False
        span[0][span[1] : span[1] + len(data)] = data
        return True

    def _cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if not self._stream_ok(stream):
            return (CudaError.cudaErrorInvalidResourceHandle,)
        if not all(isinstance(v, int) for v in (dst, src, count)) or count < 0:
            return (CudaError.cudaErrorInvalidValue,)
        if kind == MemcpyKind.cudaMemcpyHostToDevice:
            if not self._host_ok(src, count) or self._device_span(dst, count) is None:
                return (CudaError.cudaErrorInvalidValue,)

            def work():
                self.write_device(dst, ctypes.string_at(src, count))
                self.clock += 0.25

        elif kind == MemcpyKind.cudaMemcpyDeviceToHost:
            if self._device_span(src, count) is None or not self._host_ok(dst, count):
                return (CudaError.cudaErrorInvalidValue,)

            def work():
                ctypes.memmove(dst, self.read_device(src, count), count)
                self.clock += 0.25

        else:
            return (CudaError.cudaErrorInvalidValue,)
        self.enqueue(stream, "h2d" if kind == MemcpyKind.cudaMemcpyHostToDevice else "d2h", work)
        return (CudaError.cudaSuccess,)

    # streams and events
    def _stream_ok(self, stream) -> bool:
        return isinstance(stream, Stream) and stream.alive and stream in self.streams

    def _cudaStreamCreateWithFlags(self, flags):
        stream = Stream(0x5000 + len(self.streams))
        self.streams.append(stream)
        return (CudaError.cudaSuccess, stream)

    def _cudaStreamSynchronize(self, stream):
        if not self._stream_ok(stream):
            return (CudaError.cudaErrorInvalidResourceHandle,)
        self._drain(stream)
        return (CudaError.cudaSuccess,)

    def _cudaStreamDestroy(self, stream):
        if not self._stream_ok(stream):
            return (CudaError.cudaErrorInvalidResourceHandle,)
        stream.alive = False
        return (CudaError.cudaSuccess,)

    def _cudaEventCreate(self):
        event = Event()
        self.events.append(event)
        return (CudaError.cudaSuccess, event)

    def _cudaEventRecord(self, event, stream):
        if not (isinstance(event, Event) and event.alive and self._stream_ok(stream)):
            return (CudaError.cudaErrorInvalidResourceHandle,)
        event.stream, event.done = stream, False

        def work():
            event.time, event.done = self.clock, True

        event.work = work
        self.enqueue(stream, "event", work)
        return (CudaError.cudaSuccess,)

    def _cudaEventSynchronize(self, event):
        if not (isinstance(event, Event) and event.alive):
            return (CudaError.cudaErrorInvalidResourceHandle,)
        if event.stream is not None:
            self.log.append(("wait", event.stream.handle))
            self.waiters.append(threading.current_thread().name)
        if not event.done and event.stream is not None:
            self._drain(event.stream, until=event.work)
        return (CudaError.cudaSuccess,)

    def _cudaEventElapsedTime(self, start, end):
        if not (isinstance(start, Event) and isinstance(end, Event)):
            return (CudaError.cudaErrorInvalidResourceHandle, 0.0)
        if start.time is None or end.time is None or not (start.done and end.done):
            return (CudaError.cudaErrorNotReady, 0.0)
        return (CudaError.cudaSuccess, end.time - start.time)

    def _cudaEventDestroy(self, event):
        if not event.alive:
            return (CudaError.cudaErrorInvalidResourceHandle,)
        event.alive = False
        return (CudaError.cudaSuccess,)


# --------------------------------------------------------------------------------------- TensorRT
class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


_NP = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}

# name -> (mode, dtype, shape with -1 for the batch)
IO = {
    "image": (TensorIOMode.INPUT, DataType.UINT8, (-1, S, S, 3)),
    "tags": (TensorIOMode.INPUT, DataType.FLOAT, (-1, T)),
    "scores": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1, C)),
    "quantity": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1,)),
    "k": (TensorIOMode.OUTPUT, DataType.INT32, (-1,)),
    "topk": (TensorIOMode.OUTPUT, DataType.INT32, (-1, K)),
}


class FakeTensorRT11:
    """The ``tensorrt`` module's runtime side, version 11, over a ``FakeCudaRuntime``."""

    def __init__(
        self,
        cuda: FakeCudaRuntime,
        *,
        profiles=((1, 1), (2, 8), (9, 32), (33, 64)),
        version: str = "11.4.0",
        plan: bytes = b"FAKE-PLAN",
        context_ok: bool = True,
        profile_select_ok: bool = True,
        execute_ok: bool = True,
        io: dict[str, tuple] | None = None,
        compute=None,
    ) -> None:
        self.io = dict(io or IO)
        self.compute = compute or reference_outputs
        self.cuda = cuda
        self.profiles = list(profiles)
        self.version = version
        self.plan = plan
        self.context_ok = context_ok
        self.profile_select_ok = profile_select_ok
        self.execute_ok = execute_ok
        self.contexts: list[Any] = []
        self.executed: list[tuple[int, int]] = []  # (profile, batch) per execute_async_v3

    def install(self, monkeypatch) -> types.ModuleType:
        trt = self.module()
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    def module(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = fake.version

        class ILogger:
            def __init__(self):
                pass

        class Logger(ILogger):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class Runtime:
            __slots__ = ("logger",)

            def __init__(self, logger):
                if not isinstance(logger, ILogger):
                    raise TypeError("Runtime(logger: tensorrt.ILogger)")
                self.logger = logger

            def deserialize_cuda_engine(self, serialized_engine):
                if bytes(serialized_engine) != fake.plan:
                    self.logger.log(Logger.ERROR, "Serialization assertion magicTag failed")
                    return None
                return Engine()

        class Engine:
            __slots__ = ()

            @property
            def num_io_tensors(self):
                return len(fake.io)

            @property
            def num_optimization_profiles(self):
                return len(fake.profiles)

            def get_tensor_name(self, index):
                return list(fake.io)[index]

            def get_tensor_mode(self, name):
                return fake.io[name][0] if name in fake.io else TensorIOMode.NONE

            def get_tensor_dtype(self, name):
                return fake.io[name][1]

            def get_tensor_shape(self, name):
                return fake.io[name][2]

            def get_tensor_profile_shape(self, name, profile_index):
                if fake.io[name][0] != TensorIOMode.INPUT or not 0 <= profile_index < len(
                    fake.profiles
                ):
                    raise RuntimeError("get_tensor_profile_shape: invalid arguments")
                lo, hi = fake.profiles[profile_index]
                rest = fake.io[name][2][1:]
                return [(lo, *rest), (hi, *rest), (hi, *rest)]

            def create_execution_context(self):
                if not fake.context_ok:
                    return None
                context = Context(self)
                fake.contexts.append(context)
                return context

        class Context:
            __slots__ = ("addresses", "owner", "profile", "shapes")

            def __init__(self, owner=None):
                self.profile, self.shapes, self.addresses = None, {}, {}
                self.owner = owner  # the deserialized engine: profiles are exclusive per engine

            def set_optimization_profile_async(self, profile_index, stream_handle):
                if not isinstance(stream_handle, int):
                    raise TypeError("stream_handle must be an int")
                if not fake.profile_select_ok or not 0 <= profile_index < len(fake.profiles):
                    return False
                held = (c for c in fake.contexts if c is not self and c.owner is self.owner)
                if any(c.profile == profile_index for c in held):
                    return False  # TensorRT: a profile is used by one context at a time
                self.profile, self.shapes = profile_index, {}
                return True

            def set_input_shape(self, name, shape):
                if (
                    self.profile is None
                    or name not in fake.io
                    or fake.io[name][0] != TensorIOMode.INPUT
                ):
                    return False
                shape = tuple(int(d) for d in shape)
                lo, hi = fake.profiles[self.profile]
                if shape[1:] != fake.io[name][2][1:] or not lo <= shape[0] <= hi:
                    return False
                self.shapes[name] = shape
                return True

            def get_tensor_shape(self, name):
                if fake.io[name][0] == TensorIOMode.INPUT:
                    return self.shapes.get(name, fake.io[name][2])
                batches = {
                    self.shapes.get(n, (-1,))[0] for n in fake.io if fake.io[n][0].name == "INPUT"
                }
                batch = batches.pop() if len(batches) == 1 else -1
                return (batch, *fake.io[name][2][1:])

            def set_tensor_address(self, name, memory):
                if name not in fake.io or not isinstance(memory, int):
                    return False
                self.addresses[name] = memory
                return True

            def execute_async_v3(self, stream_handle):
                if not isinstance(stream_handle, int):
                    raise TypeError("stream_handle must be an int")
                inputs = [n for n in fake.io if fake.io[n][0] == TensorIOMode.INPUT]
                if (
                    not fake.execute_ok
                    or self.profile is None
                    or any(n not in self.shapes for n in inputs)
                    or any(n not in self.addresses for n in fake.io)
                ):
                    return False
                batch = self.shapes["image"][0]
                if self.shapes["tags"][0] != batch:
                    return False
                stream = fake.cuda.stream_by_handle(stream_handle)
                if stream is None:
                    return False  # not a live stream: TensorRT would fail the launch
                shapes, addresses, profile = dict(self.shapes), dict(self.addresses), self.profile
                for name in inputs:  # bindings too small: TensorRT would fault
                    nbytes = int(np.prod(shapes[name])) * np.dtype(_NP[fake.io[name][1]]).itemsize
                    if fake.cuda.read_device(addresses[name], nbytes) is None:
                        return False
                for name in fake.io:
                    if fake.io[name][0] == TensorIOMode.OUTPUT:
                        shape = (batch, *fake.io[name][2][1:])
                        nbytes = int(np.prod(shape)) * np.dtype(_NP[fake.io[name][1]]).itemsize
                        if fake.cuda.read_device(addresses[name], nbytes) is None:
                            return False

                def work():  # runs when the stream gets to it (deferred) or now
                    arrays = {}
                    for name in inputs:
                        dtype = np.dtype(_NP[fake.io[name][1]])
                        shape = shapes[name]
                        data = fake.cuda.read_device(
                            addresses[name], int(np.prod(shape)) * dtype.itemsize
                        )
                        arrays[name] = np.frombuffer(data, dtype).reshape(shape)
                    outputs = fake.compute(arrays["image"], arrays["tags"])
                    for name, value in outputs.items():
                        fake.cuda.write_device(addresses[name], value.tobytes())
                    fake.executed.append((profile, batch))
                    fake.cuda.clock += 1.0

                fake.cuda.enqueue(stream, "compute", work)
                return True

        trt.ILogger, trt.Logger, trt.Runtime = ILogger, Logger, Runtime
        trt.TensorIOMode, trt.DataType = TensorIOMode, DataType
        trt.nptype = lambda dtype: _NP[dtype]
        return trt


# ------------------------------------------------------------------------------ ONNX Runtime (GPU)
_ORT_TYPE = {
    np.dtype(np.uint8): "tensor(uint8)",
    np.dtype(np.float32): "tensor(float)",
    np.dtype(np.int32): "tensor(int32)",
}


class FakeOnnxRuntimeGpu:
    """onnxruntime-gpu's Python surface that m3trt's CUDA paths touch, over a FakeCudaRuntime.

    Strict: provider options must be str -> str (as ONNX Runtime requires), ``user_compute_stream``
    must name a live stream, ``IOBinding.bind_input/bind_output`` take (name, device_type,
    device_id, element_type, shape, buffer_ptr) with the graph's dtype and static dims and a
    device buffer big enough, and a run on a user stream synchronizes it unless the run option
    ``disable_synchronize_execution_providers`` is "1" (then the compute waits in the stream).
    The graph is the same fake network as the TensorRT fake's (``IO``, ``reference_outputs``).
    """

    def __init__(self, cuda: FakeCudaRuntime, *, version: str = "1.31.1", compute=None) -> None:
        self.cuda = cuda
        self.version = version
        self.compute = compute or reference_outputs
        self.sessions: list[Any] = []
        self.runs: list[tuple[int | None, int]] = []  # (stream handle, batch) per bound run

    def install(self, monkeypatch) -> types.ModuleType:
        ort = self.module()
        monkeypatch.setitem(sys.modules, "onnxruntime", ort)
        return ort

    def module(self) -> types.ModuleType:
        fake = self
        ort = types.ModuleType("onnxruntime")
        ort.__version__ = fake.version
        providers_here = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        ort.get_available_providers = lambda: list(providers_here)

        class SessionOptions:
            __slots__ = ("intra_op_num_threads", "log_severity_level")

            def __init__(self):
                self.intra_op_num_threads, self.log_severity_level = 0, 2

        class RunOptions:
            __slots__ = ("entries",)

            def __init__(self):
                self.entries = {}

            def add_run_config_entry(self, key, value):
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError("add_run_config_entry(key: str, value: str)")
                self.entries[key] = value

        class NodeArg:
            __slots__ = ("name", "shape", "type")

            def __init__(self, name):
                _mode, dtype, shape = IO[name]
                self.name = name
                self.type = _ORT_TYPE[np.dtype(_NP[dtype])]
                self.shape = ["batch" if d < 0 else d for d in shape]

        class IOBinding:
            __slots__ = ("bound", "session")

            def __init__(self, session):
                self.session, self.bound = session, {}

            def _bind(self, name, device_type, device_id, element_type, shape, buffer_ptr):
                if name not in IO:
                    raise RuntimeError(f"bind: unknown name {name!r}")
                if device_type != "cuda" or not isinstance(device_id, int):
                    raise TypeError("bind: device_type 'cuda' and an int device_id expected")
                if np.dtype(element_type) != np.dtype(_NP[IO[name][1]]):
                    raise RuntimeError(f"bind: {name!r} is not {np.dtype(element_type)}")
                if not isinstance(buffer_ptr, int) or isinstance(buffer_ptr, bool):
                    raise TypeError("bind: buffer_ptr must be an int device address")
                shape = tuple(shape)
                if not all(isinstance(d, int) and d > 0 for d in shape):
                    raise TypeError(f"bind: shape {shape} must be positive ints")
                if shape[1:] != IO[name][2][1:]:
                    raise RuntimeError(f"bind: {name!r} shape {shape} does not fit the graph")
                nbytes = int(np.prod(shape)) * np.dtype(element_type).itemsize
                if fake.cuda.read_device(buffer_ptr, nbytes) is None:
                    raise RuntimeError(f"bind: {name!r} buffer is not {nbytes} device bytes")
                self.bound[name] = (shape, buffer_ptr)

            def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
                if IO.get(name, (None,))[0] != TensorIOMode.INPUT:
                    raise RuntimeError(f"bind_input: {name!r} is not an input")
                self._bind(name, device_type, device_id, element_type, shape, buffer_ptr)

            def bind_output(
                self,
                name,
                device_type="cpu",
                device_id=0,
                element_type=None,
                shape=None,
                buffer_ptr=None,
            ):
                if IO.get(name, (None,))[0] != TensorIOMode.OUTPUT:
                    raise RuntimeError(f"bind_output: {name!r} is not an output")
                self._bind(name, device_type, device_id, element_type, shape, buffer_ptr)

        class InferenceSession:
            __slots__ = ("options", "path", "providers", "stream")

            def __init__(self, path, sess_options=None, providers=None):
                if not isinstance(path, str):
                    raise TypeError("InferenceSession(path: str, ...)")
                self.path, self.options, self.stream = path, sess_options, None
                names = []
                for entry in providers or ["CPUExecutionProvider"]:
                    name, options = (entry, {}) if isinstance(entry, str) else entry
                    if not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
                    ):
                        raise TypeError(f"{name} options must be str -> str")
                    if name == "CUDAExecutionProvider" and "user_compute_stream" in options:
                        stream = fake.cuda.stream_by_handle(int(options["user_compute_stream"]))
                        if stream is None:
                            raise RuntimeError("user_compute_stream is not a live CUDA stream")
                        self.stream = stream
                    names.append(name)
                self.providers = names
                fake.sessions.append(self)

            def get_providers(self):
                return list(self.providers)

            def get_inputs(self):
                return [NodeArg(n) for n in IO if IO[n][0] == TensorIOMode.INPUT]

            def get_outputs(self):
                return [NodeArg(n) for n in IO if IO[n][0] == TensorIOMode.OUTPUT]

            def io_binding(self):
                return IOBinding(self)

            def run(self, output_names, feeds):
                out = fake.compute(feeds["image"], feeds["tags"])
                return [out[n] for n in output_names or [o.name for o in self.get_outputs()]]

            def run_with_iobinding(self, iobinding, run_options=None):
                if set(iobinding.bound) != set(IO):
                    raise RuntimeError("run_with_iobinding: not every input and output is bound")
                batches = {shape[0] for shape, _ in iobinding.bound.values()}
                if len(batches) != 1:
                    raise RuntimeError("run_with_iobinding: bound shapes disagree on the batch")
                batch = batches.pop()
                bound = dict(iobinding.bound)

                def work():
                    arrays = {}
                    for name in ("image", "tags"):
                        shape, address = bound[name]
                        dtype = np.dtype(_NP[IO[name][1]])
                        data = fake.cuda.read_device(address, int(np.prod(shape)) * dtype.itemsize)
                        arrays[name] = np.frombuffer(data, dtype).reshape(shape)
                    for name, value in fake.compute(arrays["image"], arrays["tags"]).items():
                        fake.cuda.write_device(bound[name][1], value.tobytes())
                    fake.cuda.clock += 1.0

                no_sync = (
                    run_options is not None
                    and run_options.entries.get("disable_synchronize_execution_providers") == "1"
                )
                fake.runs.append((None if self.stream is None else self.stream.handle, batch))
                if self.stream is None:
                    work()
                    return
                fake.cuda.enqueue(self.stream, "compute", work)
                if not no_sync:
                    fake.cuda._drain(self.stream)

        ort.SessionOptions, ort.RunOptions, ort.InferenceSession = (
            SessionOptions,
            RunOptions,
            InferenceSession,
        )
        return ort
