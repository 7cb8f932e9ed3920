"""OpenVINO's thread pinning against m3trt's OpenVINO settings, side by side in one run.

    .venv/bin/python benchmarks/openvino_pinning.py runs/ray224/model.m3/model.int8.qdq.onnx \
        --out benchmarks/results/openvino_pinning

Two layouts, each with both settings, alternated (A B B A per round):
- two processes at once, one engine thread each (Ray's actors with 1 CPU each, or two
  `m3trt infer` runs on one machine): the throughput of both together;
- one process with an engine thread per core (`m3trt infer` alone): its throughput.
"default" is OpenVINO's own pinning (on for Linux); "m3trt" is
`m3trt.runtime.engines.openvino_engine.compile_config`, which turns pinning off for an engine
given fewer threads than the process's cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.bench.machine import describe_machine
from m3trt.runtime.engines.openvino_engine import compile_config, usable_cores


def config_for(setting: str, threads: int) -> dict[str, str]:
    config = compile_config(threads)
    if setting == "default":
        config.pop("ENABLE_CPU_PINNING", None)
    return config


def throughput(graph: str, config: dict[str, str], batch: int, seconds: float) -> float:
    """Batches a second of one compiled model, after one warm-up batch."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(graph), "CPU", config)
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {}
    for port in compiled.inputs:
        shape = [d.get_length() if d.is_static else batch for d in port.get_partial_shape()]
        dtype = np.dtype(port.get_element_type().to_dtype())
        feeds[port.get_any_name()] = rng.random(shape).astype(dtype)
    request.infer(feeds)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        request.infer(feeds)
        n += 1
    return n / (time.perf_counter() - start)


def _child(graph: str, config: dict[str, str], batch: int, seconds: float, out: Any) -> None:
    out.put(throughput(graph, config, batch, seconds))


def measure(graph: str, setting: str, processes: int, batch: int, seconds: float) -> dict:
    """``processes`` processes at once, the cores split among them: images a second in all."""
    threads = max(1, usable_cores() // processes)
    config = config_for(setting, threads)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(graph, config, batch, seconds, queue))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    rates = [queue.get() for _ in children]
    for child in children:
        child.join()
    return {
        "setting": setting,
        "processes": processes,
        "threads_each": threads,
        "pinning": config.get("ENABLE_CPU_PINNING", "OpenVINO's default"),
        "images_per_s_each": [round(r * batch, 1) for r in rates],
        "images_per_s": round(sum(rates) * batch, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "graph", type=Path, help="An ONNX graph, e.g. a bundle's model.int8.qdq.onnx"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/openvino_pinning"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    cores = usable_cores()
    runs = []
    for layout in (cores, 1):
        for r in range(args.rounds):
            for setting in ("default", "m3trt") if r % 2 == 0 else ("m3trt", "default"):
                runs.append(
                    measure(str(args.graph), setting, layout, args.batch_size, args.seconds)
                )
                print(json.dumps(runs[-1]), flush=True)
    medians = {
        f"{layout}x{setting}": statistics.median(
            x["images_per_s"] for x in runs if x["processes"] == layout and x["setting"] == setting
        )
        for layout in (cores, 1)
        for setting in ("default", "m3trt")
    }
    result = {
        "machine": describe_machine(),
        "graph": str(args.graph),
        "batch_size": args.batch_size,
        "seconds_each": args.seconds,
        "runs": runs,
        "median_images_per_s": medians,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, cores))
    print(markdown(result, cores))


def markdown(result: dict[str, Any], cores: int) -> str:
    m = result["median_images_per_s"]
    lines = [
        "# OpenVINO's thread pinning against m3trt's OpenVINO settings",
        "",
        f"Graph `{result['graph']}`, batch {result['batch_size']}, {result['seconds_each']} s "
        f"a measurement. Machine: {result['machine'].get('cpu', '?')}, {cores} cores usable. "
        "Settings alternated in one run.",
        "",
        "| processes x threads | setting | pinning | images/s each | images/s in all |",
        "|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['processes']} x {r['threads_each']} | {r['setting']} | {r['pinning']} | "
            f"{', '.join(map(str, r['images_per_s_each']))} | {r['images_per_s']} |"
        )
    split, alone = f"{cores}x", "1x"
    lines += [
        "",
        f"- {cores} processes of one thread (medians): OpenVINO's default "
        f"{m[split + 'default']} images/s, m3trt's settings {m[split + 'm3trt']} images/s: "
        f"**{m[split + 'm3trt'] / m[split + 'default']:.2f}x**.",
        f"- One process on all cores (medians): default {m[alone + 'default']}, m3trt "
        f"{m[alone + 'm3trt']} images/s: {m[alone + 'm3trt'] / m[alone + 'default']:.2f}x "
        "(both pinned: the same setting, so this row shows the machine's noise).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
