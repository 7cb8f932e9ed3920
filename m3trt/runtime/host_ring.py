"""The GPU pipeline's ring of pinned host batch buffers.

Each slot holds one batch at the graph's input layout (uint8 [B, S, S, 3] images, float32 [B, T]
tags) and its outputs, all in page-locked memory (``cudaMallocHost``: host-to-device copies from
it run asynchronously and several times faster than from pageable memory), plus the CUDA events
that time and mark its trip through a stream. Decoding threads fill a slot in place; the slot
goes back to the ring only once its results are written. ``acquire`` blocks while every slot is
in use: that is the pipeline's back-pressure, and why its memory is the same for ten images or
ten million.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3trt.runtime.cuda_calls import CudaCalls
from m3trt.runtime.engines.base import EngineError, TensorSpec

EVENTS_PER_SLOT = 4  # before copy in, after copy in, after compute, after copy out


class RingClosed(Exception):
    """The pipeline is stopping: no more slots are handed out."""


def static_shape(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    """``spec``'s shape with ``batch`` rows; every other dim must be a fixed size."""
    rest = spec.shape[1:]
    if any(not isinstance(d, int) or d < 0 for d in rest):
        raise EngineError(f"tensor {spec.name!r} has dynamic dims {spec.shape} beyond the batch")
    return (batch, *rest)


@dataclass
class Slot:
    """One batch's pinned buffers (arrays by tensor name) and events; ``count`` rows are valid."""

    index: int
    arrays: dict[str, np.ndarray]
    addresses: dict[str, int]
    events: list[Any]
    count: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # what the pipeline carries with it


class HostRing:
    """``slots`` pinned batch buffers for ``specs`` (inputs and outputs) at ``batch`` rows."""

    def __init__(self, cuda: CudaCalls, specs: list[TensorSpec], batch: int, slots: int) -> None:
        if slots < 1 or batch < 1:
            raise ValueError(f"a ring needs slots and rows, not {slots} x {batch}")
        self.cuda = cuda
        self.batch = batch
        self.slots: list[Slot] = []
        self._free: list[Slot] = []
        self._cond = threading.Condition()
        self._closed = False
        self.in_use = 0
        self.max_in_use = 0  # the most slots ever out at once (tests, --profile)
        self._pinned: list[int] = []
        self._events: list[Any] = []
        try:
            for index in range(slots):
                arrays, addresses = {}, {}
                for spec in specs:
                    shape = static_shape(spec, batch)
                    nbytes = int(np.prod(shape)) * spec.dtype.itemsize
                    address = int(cuda("cudaMallocHost", nbytes))
                    self._pinned.append(address)
                    raw = (ctypes.c_uint8 * nbytes).from_address(address)
                    arrays[spec.name] = np.frombuffer(raw, spec.dtype).reshape(shape)
                    addresses[spec.name] = address
                events = [cuda("cudaEventCreate") for _ in range(EVENTS_PER_SLOT)]
                self._events.extend(events)
                self.slots.append(Slot(index, arrays, addresses, events))
        except BaseException:
            self.free()
            raise
        self._free = list(reversed(self.slots))

    def acquire(self) -> Slot:
        """A free slot, waiting while all are in use; RingClosed once the pipeline stops."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise RingClosed()
            slot = self._free.pop()
            self.in_use += 1
            self.max_in_use = max(self.max_in_use, self.in_use)
        slot.count, slot.state = 0, {}
        return slot

    def release(self, slot: Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self.in_use -= 1
            self._cond.notify()

    def close(self) -> None:
        """Wake every waiter with RingClosed (the pipeline is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def free(self) -> None:
        """Free pinned memory and events; idempotent; errors ignored (the driver may be gone).
        Only after every copy from or into the ring has finished."""
        self.close()
        rt = self.cuda.rt
        for address in self._pinned:
            rt.cudaFreeHost(address)
        for event in self._events:
            rt.cudaEventDestroy(event)
        self._pinned, self._events = [], []
        for slot in self.slots:
            slot.arrays = {}
