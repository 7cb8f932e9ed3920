"""``m3trt infer --profile``: where the time goes, per stage, and how much the stages overlapped.

Stages: read (file bytes), decode (to the S x S uint8 image), copy in (host to device), compute,
copy out (device to host), write (results, sidecars, report). On the GPU pipeline the copies and
the compute are timed by CUDA events recorded around them on their stream; everything else, and
everything on the CPU path, by wall clocks in the thread that does the work. Decoding runs in
many threads at once, so a stage's busy time can exceed the wall time: ``overlap`` is the sum of
the stages' busy times over the wall time (1.0: one stage at a time; higher: stages ran side by
side). On the GPU, ``gpu.overlap`` is copy in + compute + copy out over the time the GPU had any
of them in flight (1.0: no copy overlapped a compute), from the same events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STAGES = ("read", "decode", "copy_in", "compute", "copy_out", "write")
GPU_STAGES = ("copy_in", "compute", "copy_out")
COPIES = ("copy_in", "copy_out")


class StageProfile:
    """Busy seconds per stage, added from any thread; GPU batches as event intervals."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.totals = dict.fromkeys(STAGES, 0.0)
        self.intervals: list[tuple[float, float]] = []  # GPU batches, seconds from the start
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals[stage] += seconds

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def add_gpu_batch(self, start_ms: float, stage_ms: tuple[float, float, float]) -> None:
        """One batch's copy in, compute and copy out (ms, CUDA events), starting ``start_ms``
        after the pipeline's first event."""
        with self._lock:
            for stage, ms in zip(GPU_STAGES, stage_ms, strict=True):
                self.totals[stage] += ms / 1e3
            self.intervals.append((start_ms / 1e3, (start_ms + sum(stage_ms)) / 1e3))

    def report(self, wall_s: float, images: int) -> dict[str, Any]:
        """The JSON written into ``--summary-json`` under ``profile``."""
        with self._lock:
            totals = dict(self.totals)
            intervals = sorted(self.intervals)
        stages: dict[str, Any] = {}
        for stage in STAGES:
            if stage in COPIES and not self.gpu:
                stages[stage] = None  # no device: nothing is copied
                continue
            seconds = totals[stage]
            stages[stage] = {
                "busy_s": round(seconds, 4),
                "ms_per_image": round(1e3 * seconds / images, 4) if images else None,
            }
        busy = sum(totals.values())
        report: dict[str, Any] = {
            "clock": "cuda events (copies, compute) + wall clocks" if self.gpu else "wall clocks",
            "wall_s": round(wall_s, 4),
            "images": images,
            "stages": stages,
            "overlap": round(busy / wall_s, 3) if wall_s > 0 else None,
            "gpu": None,
        }
        if self.gpu:
            in_flight = _union(intervals)
            gpu_busy = sum(totals[s] for s in GPU_STAGES)
            report["gpu"] = {
                "batches": len(intervals),
                "in_flight_s": round(in_flight, 4),
                "overlap": round(gpu_busy / in_flight, 3) if in_flight > 0 else None,
                "compute_share_of_wall": round(totals["compute"] / wall_s, 3) if wall_s else None,
            }
        return report


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by sorted intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in intervals:
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def profile_lines(report: dict[str, Any]) -> list[str]:
    """The table printed at the end of ``m3trt infer --profile``."""
    lines = [f"profile ({report['clock']}), {report['images']} images in {report['wall_s']:.2f} s:"]
    for stage, value in report["stages"].items():
        if value is None:
            lines.append(f"  {stage:<9} -")
            continue
        per = value["ms_per_image"]
        per_text = f"{per:8.3f} ms/image" if per is not None else ""
        lines.append(f"  {stage:<9} {value['busy_s']:9.3f} s busy {per_text}")
    if report["overlap"] is not None:
        lines.append(f"  overlap   {report['overlap']:.2f} stage-seconds per wall second")
    gpu = report.get("gpu")
    if gpu and gpu["overlap"] is not None:
        lines.append(
            f"  gpu       {gpu['batches']} batches, copies and compute in flight "
            f"{gpu['in_flight_s']:.3f} s, overlap {gpu['overlap']:.2f}, compute "
            f"{100 * (gpu['compute_share_of_wall'] or 0):.0f}% of the wall time"
        )
    return lines
