"""Latency statistics named and computed as trtexec reports them, so figures compare directly."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (90.0, 95.0, 99.0)


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    """trtexec's rule (sampleReporting.cpp ``findPercentile``): drop the slowest
    floor((1 - p/100) * n) samples and take the slowest of the rest."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], not {p}")
    n = len(sorted_samples)
    if n == 0:
        return math.inf
    # (100 - p) * n / 100 rather than (1 - p/100) * n: in float64 the latter gives 9.999... for
    # p90 of 100 samples, where trtexec's float32 arithmetic gives 10.
    exclude = int((100.0 - p) * n / 100.0 + 1e-9)
    return float(sorted_samples[max(n - 1 - exclude, 0)])


def median(sorted_samples: Sequence[float]) -> float:
    """trtexec's median: the middle sample, or the mean of the two middle ones."""
    n = len(sorted_samples)
    if n == 0:
        return math.inf
    mid = n // 2
    if n % 2:
        return float(sorted_samples[mid])
    return (float(sorted_samples[mid - 1]) + float(sorted_samples[mid])) / 2.0


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """min, max, mean, median, p90, p95, p99 of per-batch latencies in milliseconds."""
    if not samples_ms:
        raise ValueError("no latency samples")
    ordered = sorted(float(x) for x in samples_ms)
    stats = {
        "min": ordered[0],
        "max": ordered[-1],
        "mean": math.fsum(ordered) / len(ordered),
        "median": median(ordered),
    }
    for p in PERCENTILES:
        stats[f"p{p:g}"] = percentile(ordered, p)
    return stats
