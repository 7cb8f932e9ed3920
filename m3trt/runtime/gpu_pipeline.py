"""The GPU folder pipeline: keep the GPU busy with the decoders, the copies and the writing around
it, for any engine that runs on a caller's CUDA stream (TensorRT, ONNX Runtime's CUDA provider).

Four kinds of threads, joined by queues in walk order:

- the filler walks the folder in batches: it takes a free slot from the ring of pinned host
  buffers (``HostRing``: it waits while every slot is out, so memory is flat whatever the folder
  size) and hands the slot's files to the decoders (``batch_fill``), which write each image
  straight into the slot's pinned rows (the CPU decoder in worker threads, or nvImageCodec);
- the dispatcher (the calling thread) takes decoded slots in order, packs the good rows
  together, and queues on the next of N CUDA streams (round robin): an event, the host-to-device
  copy of the uint8 images and the tags into that stream's device buffers, an event, the engine's
  compute (its ``StreamRunner`` for that stream), an event, the device-to-host copy of the outputs
  into the slot, an event. Nothing waits: while stream 0 computes batch n, stream 1 copies batch
  n+1 in;
- the writer waits for each slot's last event in the same order, writes its rows, error lines,
  sidecars and report cards through the same ``FolderRun`` as the CPU loop, syncs the files, and
  gives the slot back.

Every CUDA call is checked (``CudaCalls``); a failure stops the run with one line naming the call,
after the batches already written (``--resume`` continues). Ctrl-C stops the walk; batches already
on the GPU are written, the rest are redone by ``--resume``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.errors import InputError
from m3trt.installs import INSTALL_LINES
from m3trt.runtime.batch_fill import CpuFill, GpuFill, Pending
from m3trt.runtime.cuda_calls import CudaCalls, cuda_calls
from m3trt.runtime.decoding import Decoded
from m3trt.runtime.engines.base import StreamRunner, TensorSpec
from m3trt.runtime.host_ring import HostRing, RingClosed, Slot, static_shape
from m3trt.runtime.model_io import IMAGE, TAGS
from m3trt.runtime.walk import Found

_DONE = object()


def ring_slots(streams: int) -> int:
    """Slots: one being decoded ahead per stream, one queued or computing per stream, one being
    written, one spare so the filler never waits on the writer's last release."""
    return 2 * streams + 2


@dataclass
class Lane:
    """One CUDA stream with its own device buffers and its own engine runner."""

    stream: Any
    device: dict[str, int]
    runner: StreamRunner | None = None


@dataclass
class GpuPlan:
    """What ``m3trt infer`` will run on the GPU, decided before anything is written."""

    annotator: Any
    cuda: CudaCalls
    batch_size: int
    streams: int
    decode: str  # "gpu" or "cpu"
    decode_reason: str
    gpu_decoder: Any = None
    max_pixels: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """``pipeline`` in the summary JSON."""
        return {
            "kind": "gpu",
            "streams": self.streams,
            "ring_slots": ring_slots(self.streams),
            "batch_size": self.batch_size,
            "decode": self.decode,
            "decode_reason": self.decode_reason,
            **self.stats,
        }

    def run(
        self,
        run: Any,
        todo: Iterator[Found],
        decode: Callable[[Found], Decoded],
        workers: int,
        tags_for: Callable[[Path], list[str]],
    ) -> None:
        """Annotate ``todo`` into ``run`` (a ``pipeline.FolderRun``)."""
        pool = ThreadPoolExecutor(workers, thread_name_prefix="m3trt-decode")
        if self.gpu_decoder is not None:
            fill: Any = GpuFill(
                pool, decode, self.gpu_decoder, tags_for, self.max_pixels, run.profile
            )
        else:
            fill = CpuFill(pool, decode)
        pipeline = GpuPipeline(self, run, fill)
        try:
            pipeline.run(todo)
        finally:
            fill.close()
            self.stats.update(fill.counts)
            self.stats["max_slots_in_use"] = pipeline.max_slots_in_use


def plan_gpu(annotator: Any, options: Any, reporter: Any) -> GpuPlan | None:
    """The GPU pipeline for ``annotator``'s engine, or None for the CPU loop; ``--decode gpu``
    that cannot be honoured is a one-line error saying what to install or change."""
    from m3trt.data.gpu_decode import import_gpu_decoding, probe_gpu_decoder

    engine = annotator.engine
    if options.decode == "gpu":
        import_gpu_decoding()  # names the packages to install before anything else
    if not engine.supports_streams:
        if options.decode == "gpu":
            raise InputError(
                "--decode gpu feeds the GPU pipeline, which needs an engine on a CUDA GPU "
                f"(--device cuda with onnxruntime-gpu or TensorRT); this run has {engine.kind} "
                f"on {engine.device}"
            )
        return None
    if options.streams < 1:
        raise InputError(f"--streams must be at least 1, not {options.streams}")
    try:
        cuda = cuda_calls()
    except ImportError as exc:
        if options.decode == "gpu":
            raise InputError(
                f"--decode gpu needs cuda-python ({exc}): {INSTALL_LINES['cuda']}"
            ) from None
        reporter.log(
            f"note: cuda-python is not installed, so the GPU engine runs without the pinned, "
            f"multi-stream pipeline: {INSTALL_LINES['cuda']}"
        )
        return None
    size = annotator.image_size
    gpu_decoder, reason = None, "--decode cpu"
    if options.decode != "cpu":
        gpu_decoder, reason = probe_gpu_decoder(size)
        if gpu_decoder is None and options.decode == "gpu":
            raise InputError(f"--decode gpu: {reason}")
    batch = min(options.batch_size, engine.batch_range[1])
    plan = GpuPlan(
        annotator,
        cuda,
        batch,
        options.streams,
        "gpu" if gpu_decoder is not None else "cpu",
        reason,
        gpu_decoder,
        options.max_pixels,
    )
    where = "on the GPU" if gpu_decoder is not None else "on the CPU"
    reporter.log(
        f"GPU pipeline: {plan.streams} CUDA stream(s), {ring_slots(plan.streams)} pinned "
        f"batch buffers of {batch}; decoding {where} ({reason})"
    )
    return plan


class GpuPipeline:
    """One run of the pipeline described in the module docstring."""

    def __init__(self, plan: GpuPlan, run: Any, fill: Any) -> None:
        self.plan, self.run_, self.fill = plan, run, fill
        self.cuda = plan.cuda
        self.engine = plan.annotator.engine
        self.lanes: list[Lane] = []
        self.ring: HostRing | None = None
        self.start_event: Any = None
        self.max_slots_in_use = 0
        self._ready: queue.Queue[Any] = queue.Queue()
        self._done: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._writer_error: BaseException | None = None

    # ------------------------------------------------------------------------------ set-up
    def _open(self) -> None:
        cuda, engine, batch = self.cuda, self.engine, self.plan.batch_size
        specs: list[TensorSpec] = [*engine.inputs, *engine.outputs]
        self.ring = HostRing(cuda, specs, batch, ring_slots(self.plan.streams))
        for index in range(self.plan.streams):
            stream = cuda("cudaStreamCreateWithFlags", cuda.rt.cudaStreamNonBlocking)
            lane = Lane(stream, {})
            self.lanes.append(lane)
            for spec in specs:
                nbytes = int(np.prod(static_shape(spec, batch))) * spec.dtype.itemsize
                lane.device[spec.name] = int(cuda("cudaMalloc", nbytes))
            lane.runner = engine.stream_runner(stream, index)
        self.start_event = cuda("cudaEventCreate")
        cuda("cudaEventRecord", self.start_event, self.lanes[0].stream)

    def _close(self) -> None:
        """Wait for the streams, then free everything; errors ignored (the first one has been
        raised, and the driver may be gone)."""
        rt = self.cuda.rt
        for lane in self.lanes:
            rt.cudaStreamSynchronize(lane.stream)
        for lane in self.lanes:
            if lane.runner is not None:
                lane.runner.close()
            for address in lane.device.values():
                rt.cudaFree(address)
            rt.cudaStreamDestroy(lane.stream)
        self.lanes = []
        if self.start_event is not None:
            rt.cudaEventDestroy(self.start_event)
            self.start_event = None
        if self.ring is not None:
            self.max_slots_in_use = self.ring.max_in_use
            self.ring.free()

    # ------------------------------------------------------------------------------ running
    def run(self, todo: Iterator[Found]) -> None:
        filler = writer = None
        try:
            self._open()
            filler = threading.Thread(target=self._fill, args=(todo,), name="m3trt-fill")
            writer = threading.Thread(target=self._write, name="m3trt-write")
            writer.start()
            filler.start()
            number = 0
            while True:
                item = self._ready.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._raise_writer_error()
                self._dispatch(number, *item)
                number += 1
        finally:
            self._stop.set()
            if self.ring is not None:
                self.ring.close()
            self._drain_ready()
            if filler is not None:
                filler.join()
                self._drain_ready()
            self._done.put(_DONE)
            if writer is not None:
                writer.join()
            self.fill.close()  # no decoder writes into a slot after this
            self._close()
        self._raise_writer_error()

    def _drain_ready(self) -> None:
        """Slots decoded but never dispatched: cancel their work (Ctrl-C or an error)."""
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                item[1].cancel()

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise error

    def _fill(self, todo: Iterator[Found]) -> None:
        """Walk in batches: a free slot (waiting for one: back-pressure), then its decoding."""
        assert self.ring is not None
        try:
            while not self._stop.is_set():
                items = list(islice(todo, self.plan.batch_size))
                if not items:
                    break
                slot = self.ring.acquire()
                self._ready.put((slot, self.fill.submit(slot, items)))
            self._ready.put(_DONE)
        except RingClosed:
            pass
        except BaseException as exc:  # a walk failure ends the run in the dispatcher
            self._ready.put(exc)

    def _dispatch(self, number: int, slot: Slot, pending: Pending) -> None:
        """Pack the slot's good rows, then queue copy in, compute, copy out on a stream."""
        results = pending.wait()
        good = [i for i, item in enumerate(results) if item.error is None]
        images = slot.arrays[IMAGE]
        for row, position in enumerate(good):
            if row != position:
                images[row] = images[position]
        count = len(good)
        annotator = self.plan.annotator
        if count and TAGS in slot.arrays:
            slot.arrays[TAGS][:count] = annotator.encode_tags([results[i].tags for i in good])
        slot.count = count
        slot.state = {"results": results, "good": good, "lane": None}
        if count:
            lane = self.lanes[number % len(self.lanes)]
            self._enqueue(slot, lane, count)
            slot.state["lane"] = lane
        self._done.put(slot)

    def _enqueue(self, slot: Slot, lane: Lane, count: int) -> None:
        cuda, stream = self.cuda, lane.stream
        start, copied_in, computed, done = slot.events
        cuda("cudaEventRecord", start, stream)
        for spec in self.engine.inputs:
            nbytes = count * slot.arrays[spec.name][0].nbytes
            cuda("cudaMemcpyAsync", lane.device[spec.name], slot.addresses[spec.name], nbytes,
                 cuda.h2d, stream)  # fmt: skip
        cuda("cudaEventRecord", copied_in, stream)
        assert lane.runner is not None
        lane.runner.enqueue(count, lane.device)
        cuda("cudaEventRecord", computed, stream)
        for spec in self.engine.outputs:
            nbytes = count * slot.arrays[spec.name][0].nbytes
            cuda("cudaMemcpyAsync", slot.addresses[spec.name], lane.device[spec.name], nbytes,
                 cuda.d2h, stream)  # fmt: skip
        cuda("cudaEventRecord", done, stream)

    def _write(self) -> None:
        """In walk order: wait for the slot's outputs, write them, give the slot back. After a
        failure it only gives slots back, so no thread waits for one forever."""
        assert self.ring is not None
        while True:
            slot = self._done.get()
            if slot is _DONE:
                return
            try:
                if self._writer_error is None:
                    self._write_slot(slot)
            except BaseException as exc:
                self._writer_error = exc
            finally:
                self.ring.release(slot)

    def _write_slot(self, slot: Slot) -> None:
        run, cuda = self.run_, self.cuda
        results, good = slot.state["results"], slot.state["good"]
        if slot.count:
            cuda("cudaEventSynchronize", slot.events[3])
            if run.profile is not None:
                self._profile(slot)
        with run.timing("write"):
            for item in results:
                if item.error is not None:
                    run.fail(item.path, item.error)
            if slot.count:
                outputs = {s.name: slot.arrays[s.name][: slot.count] for s in self.engine.outputs}
                paths = [results[i].path for i in good]
                run.write_batch(paths, slot.arrays[IMAGE][: slot.count], outputs)
            run.end_batch(len(results))

    def _profile(self, slot: Slot) -> None:
        cuda = self.cuda
        events = slot.events
        ms = [float(cuda("cudaEventElapsedTime", events[i], events[i + 1])) for i in range(3)]
        offset = float(cuda("cudaEventElapsedTime", self.start_event, events[0]))
        self.run_.profile.add_gpu_batch(offset, (ms[0], ms[1], ms[2]))
