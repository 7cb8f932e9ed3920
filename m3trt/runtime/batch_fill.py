"""How a ring slot gets its images: decoding threads write each decoded image straight into the
slot's pinned rows (CPU decoding), or the GPU decodes the slot's JPEGs and the CPU decoder takes
every file the GPU path does not (GPU decoding). Either way ``submit`` returns at once with a
``Pending`` whose ``wait`` gives the slot's ``Decoded`` items in walk order (``image`` left None:
the pixels are in the slot)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3trt.data.safe_open import open_regular
from m3trt.runtime.decoding import Decoded
from m3trt.runtime.host_ring import Slot
from m3trt.runtime.model_io import IMAGE
from m3trt.runtime.profile import StageProfile
from m3trt.runtime.walk import Found

GPU_BATCH_PIXELS = 256_000_000  # decoded pixels per nvImageCodec call (GPU memory per call)


@dataclass
class Pending:
    """A slot being decoded: ``wait`` for its items, ``cancel`` what has not started."""

    futures: list[Future[Any]]
    wait: Callable[[], list[Decoded]]

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


def _into(slot: Slot, position: int, decoded: Decoded) -> Decoded:
    """Move a decoded image into the slot's row ``position`` (pinned memory, no extra copy)."""
    if decoded.image is not None:
        slot.arrays[IMAGE][position] = decoded.image
        decoded.image = None
    return decoded


class CpuFill:
    """The CPU decoder in ``pool``'s threads, each image written into its row of the slot."""

    kind = "cpu"

    def __init__(self, pool: ThreadPoolExecutor, decode: Callable[[Found], Decoded]) -> None:
        self.pool, self.decode = pool, decode
        self.counts = {"cpu_decoded": 0}

    def submit(self, slot: Slot, items: list[Found]) -> Pending:
        def job(position: int, found: Found) -> Decoded:
            return _into(slot, position, self.decode(found))

        futures = [self.pool.submit(job, i, found) for i, found in enumerate(items)]

        def wait() -> list[Decoded]:
            results = [f.result() for f in futures]
            self.counts["cpu_decoded"] += sum(d.error is None for d in results)
            return results

        return Pending(futures, wait)

    def close(self) -> None:
        """Cancel queued decodes and wait for running ones (they write into slots)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


class GpuFill:
    """Files read in ``pool``'s threads, JPEGs decoded by nvImageCodec in one thread of its
    own, everything else (other formats, refused or oversized files, read errors) through the
    CPU decoder ``decode`` in the pool, per file."""

    kind = "gpu"

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        decode: Callable[[Found], Decoded],
        gpu_decoder: Any,
        tags_for: Callable[[Path], list[str]],
        max_pixels: int,
        profile: StageProfile | None = None,
    ) -> None:
        from m3trt.data.gpu_decode import is_jpeg

        self.pool, self.decode, self.gpu = pool, decode, gpu_decoder
        self.tags_for, self.max_pixels, self.profile = tags_for, max_pixels, profile
        self.is_jpeg = is_jpeg
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="m3trt-gpu-decode")
        self.counts = {"gpu_decoded": 0, "cpu_decoded": 0}

    def submit(self, slot: Slot, items: list[Found]) -> Pending:
        reads = [self.pool.submit(self._read, found) for found in items]
        future = self.thread.submit(self._decode_slot, slot, items, reads)
        return Pending([*reads, future], future.result)

    def close(self) -> None:
        """Cancel queued work and wait for running work (it writes into slots)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.thread.shutdown(wait=True, cancel_futures=True)

    def _read(self, found: Found) -> tuple[bytes, list[str]] | None:
        """The file's bytes and tags; None sends it to the CPU decoder, which says what is
        wrong in the CPU path's own words."""
        if found.error is not None:
            return None
        try:
            with open_regular(found.path, "image") as f:
                if self.profile is None:
                    data = f.read()
                else:
                    with self.profile.time("read"):
                        data = f.read()
            return data, self.tags_for(Path(found.path))
        except Exception:
            return None

    def _decode_slot(
        self, slot: Slot, items: list[Found], reads: list[Future[Any]]
    ) -> list[Decoded]:
        results: list[Decoded | None] = [None] * len(items)
        jpegs: list[tuple[int, bytes, list[str], int]] = []
        for position, read in enumerate(reads):
            got = read.result()
            if got is None or not self.is_jpeg(got[0]):
                continue
            size = self.gpu.image_size(got[0])
            if size is None or size[0] * size[1] > self.max_pixels or min(size) < 1:
                continue  # the CPU decoder gives the exact reason (or decodes it)
            jpegs.append((position, got[0], got[1], size[0] * size[1]))
        images = slot.arrays[IMAGE]
        for group in _groups(jpegs, GPU_BATCH_PIXELS):
            with self.profile.time("decode") if self.profile is not None else nullcontext():
                reasons = self.gpu.decode_into(
                    [data for _, data, _, _ in group], [images[p] for p, _, _, _ in group]
                )
            for (position, _, tags, _), reason in zip(group, reasons, strict=True):
                if reason is None:
                    results[position] = Decoded(items[position].path, None, tags)
        self.counts["gpu_decoded"] += sum(r is not None for r in results)
        fallback = [i for i, r in enumerate(results) if r is None]
        futures = {
            i: self.pool.submit(lambda i=i: _into(slot, i, self.decode(items[i]))) for i in fallback
        }
        for i, future in futures.items():
            results[i] = future.result()
        done = [r for r in results if r is not None]
        self.counts["cpu_decoded"] += sum(results[i].error is None for i in fallback)  # type: ignore[union-attr]
        return done


def _groups(
    jpegs: list[tuple[int, bytes, list[str], int]], limit: int
) -> list[list[tuple[int, bytes, list[str], int]]]:
    """Consecutive groups of at most ``limit`` decoded pixels (at least one file each)."""
    groups: list[list[tuple[int, bytes, list[str], int]]] = []
    current: list[tuple[int, bytes, list[str], int]] = []
    pixels = 0
    for item in jpegs:
        if current and pixels + item[3] > limit:
            groups.append(current)
            current, pixels = [], 0
        current.append(item)
        pixels += item[3]
    if current:
        groups.append(current)
    return groups
