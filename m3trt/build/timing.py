"""Timing build candidates side by side, through the engine interface."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from m3trt.progress import Reporter
from m3trt.runtime.engines import Engine
from m3trt.runtime.model_io import make_feeds


def time_engines(
    openers: Mapping[str, Callable[[], Engine]],
    images: np.ndarray,
    tags: np.ndarray,
    iterations: int,
    reporter: Reporter,
    task: str = "measure latency",
) -> dict[str, float]:
    """Open every candidate's engine, time them side by side, and close them all, also when one
    fails to open or to run (GPU engines hold device memory)."""
    engines: dict[str, Engine] = {}
    try:
        for name, opener in openers.items():
            engines[name] = opener()
        with reporter.task(task, None, unit="step") as bar:
            timings = measure_latency(engines, images, tags, iterations)
            bar.advance()
    finally:
        for engine in engines.values():
            engine.close()
    return timings


def measure_latency(
    engines: Mapping[str, Engine],
    images: np.ndarray,
    tags: np.ndarray,
    iterations: int,
    pause_s: float = 0.05,
) -> dict[str, float]:
    """Median ms per batch of each engine, run interleaved so machine noise hits all alike; a
    short pause before each call keeps one engine's spinning threads off the next one's time."""
    feeds = {name: make_feeds(images, tags, e.input_names) for name, e in engines.items()}
    for name, engine in engines.items():
        engine.run(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(iterations):
        for name, engine in engines.items():
            time.sleep(pause_s)
            start = time.perf_counter()
            engine.run(feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}
