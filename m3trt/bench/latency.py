"""``m3trt bench``: latency and throughput of a bundle, engine alone or end to end over a folder,
optionally against a reference run in the same process.

Contenders are timed in alternating blocks (about ``BLOCK_S`` each, the first call of a block
discarded), so machine noise hits all of them alike and one engine's spinning worker threads do not
bill the next; ratios of medians are what hold on a noisy shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.bench.machine import describe_machine
from m3trt.bench.stats import latency_stats
from m3trt.errors import InputError, M3Error
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import REFERENCE, load_bundle
from m3trt.runtime.engines import open_path
from m3trt.runtime.model_io import make_feeds

BLOCK_S = 0.25
Runner = Callable[[np.ndarray, np.ndarray], Any]


@dataclass
class BenchOptions:
    batch_sizes: Sequence[int] = (1, 8, 32)
    warmup_s: float = 1.0
    duration_s: float = 3.0
    iterations: int = 10
    folder: Path | None = None
    against: str | None = None  # "torch" | "onnx-fp32" | a bundle path
    checkpoint: Path | None = None  # for --against torch
    device: str = "cpu"
    engine: str = "auto"
    threads: int | None = None
    seed: int = 0
    transfers: bool | None = None  # time H2D / compute / D2H apart; None: on for GPU engines


def _annotator_runner(annotator: Annotator) -> Runner:
    return lambda images, tags: annotator.run(images, tags)


def reference_runner(
    against: str, annotator: Annotator, options: BenchOptions
) -> tuple[str, Runner]:
    """The in-process reference: the bundle's own FP32 graph, another bundle, or PyTorch eager."""
    bundle = annotator.bundle
    if against == "onnx-fp32":
        engine = open_path(
            bundle.artifact_path(REFERENCE), engine="onnxruntime", threads=options.threads
        )
        ref = Annotator(bundle, engine, annotator.choice, annotator.decoding)
        return "onnx-fp32", _annotator_runner(ref)
    if against == "torch":
        checkpoint = options.checkpoint or _source_checkpoint(bundle)
        from m3trt.train.predict import torch_runner  # torch only on this explicit request

        return "torch", torch_runner(checkpoint, options.threads)
    other = Path(against)
    if not other.exists():
        raise InputError(f"--against {against}: use torch, onnx-fp32 or the path of a bundle")
    other_bundle = load_bundle(other)
    if other_bundle.model.image_size != bundle.model.image_size:
        raise InputError(f"{other}: image size differs from {bundle.path}; cannot run both")
    ref = Annotator.load(
        other_bundle, device=options.device, engine=options.engine, threads=options.threads
    )
    return other_bundle.name, _annotator_runner(ref)


def _source_checkpoint(bundle) -> Path:
    source = (bundle.provenance or {}).get("source", {})
    path = source.get("checkpoint") if isinstance(source, dict) else None
    if not path or not Path(path).is_dir():
        raise InputError(
            f"{bundle.path}: --against torch needs the checkpoint it was built from; "
            "pass --checkpoint CKPT"
        )
    return Path(path)


def synthetic_batch(annotator: Annotator, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels and a sparse tag vector: latency does not depend on content."""
    rng = np.random.default_rng(seed)
    size = annotator.image_size
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tags = (rng.random((batch, annotator.info.num_tags)) < 0.05).astype(np.float32)
    return images, tags


def time_interleaved(
    runners: dict[str, Runner],
    images: np.ndarray,
    tags: np.ndarray,
    warmup_s: float,
    duration_s: float,
    min_iterations: int,
    advance: Callable[[float], None] = lambda _x: None,
) -> dict[str, list[float]]:
    """Per-call milliseconds of each runner, in alternating blocks; see the module docstring."""
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        for run in runners.values():
            run(images, tags)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    timed = 0.0
    while timed < duration_s or min(len(s) for s in samples.values()) < min_iterations:
        for name, run in runners.items():
            block_start = time.perf_counter()
            run(images, tags)  # the block's first call absorbs the previous runner's threads
            first = True
            while first or time.perf_counter() - block_start < BLOCK_S:
                first = False
                t0 = time.perf_counter()
                run(images, tags)
                samples[name].append((time.perf_counter() - t0) * 1e3)
            elapsed = time.perf_counter() - block_start
            timed += elapsed / len(runners)
            advance(elapsed / len(runners))
    return samples


def folder_batches(
    annotator: Annotator,
    folder: Path,
    batch: int,
    workers: int | None,
    left_out: list[tuple[str, str]] | None = None,
):
    """Decoded batches of the folder's images, decoding overlapped as in ``m3trt infer``; the
    files that could not be decoded go to ``left_out`` as (path, reason)."""
    import os

    from m3trt.runtime.pipeline import batches, decode_ahead, decoder
    from m3trt.runtime.walk import check_roots, iter_images

    roots = check_roots([folder])
    decode = decoder(annotator.image_size, 100_000_000, lambda _p: [])
    n_workers = workers or os.cpu_count() or 1
    stream = decode_ahead(iter_images(roots), decode, n_workers, window=2 * batch + n_workers)
    with closing(stream):  # its decoding threads stop here, not in a garbage collection
        for good, bad in batches(stream, batch):
            if left_out is not None:
                left_out.extend((item.path, item.error or "") for item in bad)
            if good:
                yield np.stack([item.image for item in good])


def time_folder(
    annotator: Annotator,
    folder: Path,
    batch: int,
    duration_s: float,
    min_iterations: int,
    left_out: list[tuple[str, str]] | None = None,
) -> tuple[list[float], int]:
    """End to end: per-batch ms from one finished batch to the next (decoding included), over
    the folder once and again until ``duration_s`` and ``min_iterations`` are reached; the
    files of the first pass that could not be decoded go to ``left_out``."""
    samples: list[float] = []
    images_done = 0
    start = time.perf_counter()
    first_pass = True
    while time.perf_counter() - start < duration_s or len(samples) < min_iterations:
        last = time.perf_counter()
        count = 0
        failures = left_out if first_pass else None
        first_pass = False
        with closing(folder_batches(annotator, folder, batch, None, failures)) as stream:
            for images in stream:
                annotator.run(images, None)
                now = time.perf_counter()
                samples.append((now - last) * 1e3)
                images_done += len(images)
                last = now
                count += 1
        if count == 0:
            raise InputError(f"{folder}: no decodable images to benchmark with")
    return samples, images_done


def time_transfers(
    annotator: Annotator, images: np.ndarray, tags: np.ndarray, duration_s: float, minimum: int
) -> dict[str, dict[str, float]]:
    """Host-to-device, compute and device-to-host ms of the bundle's engine, apart (I/O binding)."""
    engine = annotator.engine
    if not engine.supports_split_timing:
        raise M3Error(f"--transfers: the {engine.kind} engine cannot time its steps apart")
    feeds = make_feeds(images, tags, engine.input_names)
    parts: tuple[list[float], list[float], list[float]] = ([], [], [])
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s or len(parts[0]) < minimum:
        _, times = engine.run_timed(feeds)
        for part, value in zip(parts, times, strict=True):
            part.append(value)
    return {
        name: latency_stats(values)
        for name, values in zip(("h2d_ms", "compute_ms", "d2h_ms"), parts, strict=True)
    }


def _result(
    batch: int,
    samples: list[float],
    images: int | None = None,
    transfers: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    stats = latency_stats(samples)
    total_s = sum(samples) / 1e3
    n_images = images if images is not None else batch * len(samples)
    # Without --transfers, host/device times are not split: session.run does it all.
    split = transfers or {"h2d_ms": None, "compute_ms": None, "d2h_ms": None}
    return {
        "batch_size": batch,
        "iterations": len(samples),
        "throughput_qps": len(samples) / total_s,
        "images_per_s": n_images / total_s,
        "latency_ms": stats,
        **split,
        "samples_ms": [round(s, 4) for s in samples],
    }


def run_bench(
    bundle: str | Path, options: BenchOptions, reporter: Reporter = SILENT
) -> dict[str, Any]:
    """Everything ``m3trt bench --json`` writes (DESIGN §5)."""
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise InputError("--batch-sizes must be positive integers, e.g. 1,8,32")
    annotator = Annotator.load(
        bundle, device=options.device, engine=options.engine, threads=options.threads
    )
    reporter.log(annotator.description)
    ref_name, ref_run = (None, None)
    if options.against:
        if options.folder is not None:
            raise InputError("--against compares engines alone; it cannot be used with --folder")
        ref_name, ref_run = reference_runner(options.against, annotator, options)
    results, reference_results, ratios = [], [], {}
    per_size = options.warmup_s + options.duration_s
    with reporter.task("bench", per_size * len(options.batch_sizes), unit="s") as bar:
        for batch in options.batch_sizes:
            if options.folder is not None:
                warm_images, warm_tags = synthetic_batch(annotator, batch, options.seed)
                time_interleaved(  # warm-up only: the engine's first calls are slow
                    {"bundle": _annotator_runner(annotator)},
                    warm_images,
                    warm_tags,
                    options.warmup_s,
                    0.0,
                    0,
                )
                left_out: list[tuple[str, str]] = []
                samples, n = time_folder(
                    annotator,
                    options.folder,
                    batch,
                    options.duration_s,
                    options.iterations,
                    left_out,
                )
                if left_out and batch == options.batch_sizes[0]:  # said once, not per size
                    path, reason = left_out[0]
                    reporter.log(
                        f"note: {len(left_out)} files in {options.folder} could not be decoded "
                        f"and are left out (first: {path}: {reason})"
                    )
                if samples and n / len(samples) < batch - 0.5:  # a small folder: short calls
                    reporter.log(
                        f"note: batch {batch}: calls held {n / len(samples):.1f} images on "
                        f"average, the folder's images not filling {batch}"
                    )
                results.append(_result(batch, samples, n))
                bar.advance(per_size)
                continue
            images, tags = synthetic_batch(annotator, batch, options.seed)
            runners = {"bundle": _annotator_runner(annotator)}
            if ref_run is not None:
                runners["reference"] = ref_run
            bar.advance(options.warmup_s)
            timed = time_interleaved(
                runners,
                images,
                tags,
                options.warmup_s,
                options.duration_s,
                options.iterations,
                bar.advance,
            )
            transfers = None
            if options.transfers or (
                options.transfers is None and annotator.choice.device == "cuda"
            ):
                transfers = time_transfers(
                    annotator, images, tags, options.duration_s / 2, options.iterations
                )
            results.append(_result(batch, timed["bundle"], transfers=transfers))
            if ref_run is not None:
                reference_results.append(_result(batch, timed["reference"]))
                ratios[str(batch)] = float(
                    np.median(timed["reference"]) / np.median(timed["bundle"])
                )
    report: dict[str, Any] = {
        "machine": describe_machine(),
        "bundle": {
            "name": annotator.bundle.name,
            "target": annotator.bundle.target,
            "precision": annotator.bundle.precision,
            "engine": annotator.description,
        },
        "mode": "folder" if options.folder is not None else "engine",
        "settings": {
            "warmup_s": options.warmup_s,
            "duration_s": options.duration_s,
            "iterations": options.iterations,
            "threads": options.threads,
            "folder": str(options.folder) if options.folder else None,
        },
        "results": results,
    }
    if ref_name is not None:
        report["reference"] = {"name": ref_name, "results": reference_results}
        report["ratios"] = ratios
    return report


def compare_speed(
    current: dict[str, Any], baseline: dict[str, Any], max_slowdown: float
) -> list[str]:
    """One line per batch size whose ratio against the in-process reference fell by more than
    ``max_slowdown`` (a ratio, e.g. 1.1) from the baseline's. Absolute times are never compared."""
    if "ratios" not in current:
        raise M3Error("--baseline compares speed ratios: run with --against REFERENCE")
    if "ratios" not in baseline:
        raise M3Error("the baseline has no ratios: record it with --against and --json")
    ref_now = current.get("reference", {}).get("name")
    ref_then = baseline.get("reference", {}).get("name")
    if ref_now != ref_then:
        raise M3Error(
            f"the baseline was measured against {ref_then!r}, this run against {ref_now!r}"
        )
    shared = sorted(set(current["ratios"]) & set(baseline["ratios"]), key=int)
    if not shared:
        raise M3Error("no batch size in common with the baseline")
    regressions = []
    for batch in shared:
        now, then = current["ratios"][batch], baseline["ratios"][batch]
        slowdown = then / now
        if slowdown > max_slowdown:
            regressions.append(
                f"batch {batch}: {now:.2f}x the {ref_now} reference, baseline {then:.2f}x: "
                f"{slowdown:.2f}x slower (allowed {max_slowdown:.2f}x)"
            )
    return regressions
