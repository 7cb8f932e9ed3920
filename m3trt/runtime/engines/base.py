"""The engine interface: whatever runs a bundle's graph (ONNX Runtime, OpenVINO, TensorRT) looks the
same to the runtime, the benchmarks, the evaluator and the build (Polygraphy's ``BaseRunner``).

An engine knows its input and output specs, the batch sizes it accepts, the device it runs on and
a one-line description; ``run(feeds)`` takes a dict of arrays by input name and returns a dict by
output name; engines that own device or pinned memory free it in ``close()`` (engines are context
managers). ``run_timed`` splits one run into host-to-device, compute and device-to-host times where
the engine can (GPU engines); others say so with ``supports_split_timing = False``.

GPU engines may also run on a caller's CUDA stream over the caller's device buffers
(``supports_streams``, ``stream_runner``): the folder pipeline owns pinned host memory, device
buffers and N streams, and each stream gets its own ``StreamRunner`` (a TensorRT execution
context, an ONNX Runtime session whose CUDA provider computes on that stream). Nothing in a
runner synchronizes: the caller orders copies, compute and events on the stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from m3trt.errors import M3Error

UNBOUNDED = 1 << 31  # the batch limit of an engine with a fully dynamic batch


class EngineError(M3Error):
    """An engine cannot be opened, or was given feeds that do not fit its inputs."""


class EngineUnavailable(EngineError):
    """This engine kind cannot run here (library or device missing); the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: dtype and shape (``None`` or a name for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class SplitTiming(NamedTuple):
    h2d_ms: float
    compute_ms: float
    d2h_ms: float


class StreamRunner(ABC):
    """One engine context bound to one CUDA stream, over device buffers its caller owns."""

    @abstractmethod
    def enqueue(self, batch: int, addresses: Mapping[str, int]) -> None:
        """Queue one batch's compute on the stream: every input and output by name at the
        given device address, sized for ``batch`` rows. Returns without waiting for the GPU."""

    def close(self) -> None:  # noqa: B027 - optional
        """Free what the runner owns (contexts, sessions); idempotent."""


class Engine(ABC):
    """Base of every engine; subclasses set the attributes in their constructor."""

    kind: str  # the registry name: "onnxruntime", "openvino", "tensorrt"
    device: str  # "cpu" or "cuda"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_range: tuple[int, int] = (1, UNBOUNDED)
    description: str = ""
    supports_split_timing: bool = False
    supports_streams: bool = False  # stream_runner works (a GPU engine on a CUDA device)
    parallel_runs: int = 1  # batches the folder pipeline may run at once, from as many threads

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch; ``feeds`` must hold every input (extra keys ignored)."""

    def run_timed(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], SplitTiming]:
        """``run`` with host-to-device, compute and device-to-host timed apart (ms)."""
        raise EngineError(f"{self.kind} engine cannot split its timing (supports_split_timing)")

    def stream_runner(self, stream: Any, index: int) -> StreamRunner:
        """A runner computing on ``stream`` (a ``cudaStream_t``); ``index`` counts the runners
        of one pipeline from 0. Only where ``supports_streams``."""
        raise EngineError(f"{self.kind} engine on {self.device} cannot run on a CUDA stream")

    def allow_parallel(self, runs: int) -> None:
        """Get ready for ``runs`` calls of ``run`` at once from as many threads (sets
        ``parallel_runs``). Only engine kinds whose ``parallel_on`` names the device."""
        raise EngineError(f"{self.kind} engine on {self.device} runs one batch at a time")

    def close(self) -> None:  # noqa: B027 - optional: engines that own nothing keep it
        """Free what the engine owns (sessions, device memory, streams); idempotent."""

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Names, dtypes, static dims and the batch range, checked before the engine sees them:
        a wrong feed is one clear line, not a crash deep inside a runtime."""
        batch = None
        for spec in self.inputs:
            if spec.name not in feeds:
                raise EngineError(f"{self.description}: missing input {spec.name!r}")
            value = feeds[spec.name]
            if value.dtype != spec.dtype:
                raise EngineError(
                    f"input {spec.name!r} is {value.dtype}, the engine takes {spec.dtype}"
                )
            _check_shape(spec, value.shape)
            batch = value.shape[0] if batch is None else batch
            if value.shape[0] != batch:
                raise EngineError(
                    f"inputs disagree on the batch size ({batch} vs {value.shape[0]})"
                )
        low, high = self.batch_range
        if batch is not None and not low <= batch <= high:
            raise EngineError(f"batch {batch} is outside the engine's range {low}..{high}")

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _check_shape(spec: TensorSpec, shape: Sequence[int]) -> None:
    if len(shape) != len(spec.shape):
        raise EngineError(
            f"input {spec.name!r} has {len(shape)} dims {tuple(shape)}, the engine takes "
            f"{len(spec.shape)} {spec.shape}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want >= 0 and want != got:
            raise EngineError(
                f"input {spec.name!r} dim {axis} is {got}, the engine takes {want} "
                f"(shape {spec.shape})"
            )
