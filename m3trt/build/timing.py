"""Timing build candidates side by side, through the engine interface."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from m3trt.runtime.engines import Engine
from m3trt.runtime.model_io import make_feeds


def measure_latency(
    engines: Mapping[str, Engine], images: np.ndarray, tags: np.ndarray, iterations: int
) -> dict[str, float]:
    """Median ms per batch of each engine, run interleaved so machine noise hits all alike; a
    short pause before each call keeps one engine's spinning threads off the next one's time."""
    feeds = {name: make_feeds(images, tags, e.input_names) for name, e in engines.items()}
    for name, engine in engines.items():
        engine.run(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(iterations):
        for name, engine in engines.items():
            time.sleep(0.05)
            start = time.perf_counter()
            engine.run(feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}
