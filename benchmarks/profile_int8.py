"""Where INT8 time goes in ONNX Runtime (m3trt's graph) and OpenVINO (plain Q/DQ graph) (issue 9).

    .venv/bin/python benchmarks/profile_int8.py runs/bench-openvino/resnet18-int8.m3 \
        --data runs/bench/data/manifest.jsonl --out benchmarks/results/profile_int8

Both engines' own profilers on the same batch of 16 real images, 2 threads: ONNX Runtime's per-node
kernel times for m3trt's INT8 engine, OpenVINO's per-layer performance counters (with the kernel
each layer ran) for the plain Q/DQ graph a user would feed it and for m3trt's Q/DQ graph. The
split that matters is convolution against everything else: if m3trt's convolutions alone take
longer than 1/1.2 of OpenVINO's whole run, no change outside the convolution kernels (fusion,
layout, the stem, the heads) can make m3trt 1.2x faster; only faster INT8 convolution kernels can.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_openvino import plain_qdq

from m3trt.calibration.data import load_image_set
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.engines.openvino_engine import compile_config
from m3trt.runtime.model_io import IMAGE, TAGS, make_feeds

CONV = {"Conv", "QLinearConv", "Convolution", "FusedConv", "ConvInteger"}


def multiply_accumulates(path: Path) -> int:
    """Multiply-accumulates per image of a graph's convolutions and GEMMs (shapes inferred at
    batch 1): over the time each engine spends in them, the rate its INT8 kernels reach."""
    model = onnx.load(str(path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and w and shapes.get(node.output[0]):
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and w:
            total += int(np.prod(w))
    return total


def cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            wanted = ("avx", "amx", "vnni", "fma")
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
    return []


def profile_ort(path: Path, feeds: dict, runs: int, threads: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        session.run(None, feeds)
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feeds)
            walls.append(time.perf_counter() - start)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    # The first run (warm-up) is in the profile too.
    scale = 1e-3 / (runs + 1)
    return {
        "wall_ms": float(np.median(walls) * 1e3),
        "by_type_ms": {op: us * scale for op, us in per_op.most_common()},
        "kernels": {},
    }


def profile_ov(path: Path, feeds: dict, runs: int, threads: int) -> dict:
    core = ov.Core()
    config = {**compile_config(threads), "PERF_COUNT": "YES"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    names = [port.get_any_name() for port in compiled.inputs]
    inputs = {n: feeds[n] for n in names}
    request.infer(inputs)
    walls = []
    by_type: collections.Counter[str] = collections.Counter()
    kernels: collections.Counter[str] = collections.Counter()
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(inputs)
        walls.append(time.perf_counter() - start)
        for info in request.profiling_info:
            ms = info.real_time.total_seconds() * 1e3
            by_type[info.node_type] += ms
            if info.node_type in CONV:
                kernels[info.exec_type] += ms
    return {
        "wall_ms": float(np.median(walls) * 1e3),
        "by_type_ms": {k: v / runs for k, v in by_type.most_common()},
        "kernels": {k: v / runs for k, v in kernels.most_common()},
    }


def summarize(profile: dict) -> dict:
    total = sum(profile["by_type_ms"].values())
    conv = sum(v for k, v in profile["by_type_ms"].items() if k in CONV)
    return {**profile, "kernel_total_ms": total, "conv_ms": conv, "conv_share": conv / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path, help="a CPU INT8 bundle")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="Output path without suffix.")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    info = bundle.model
    test = load_image_set(
        args.data,
        image_size=info.image_size,
        label_names=info.label_names,
        tag_vocab=info.tag_vocab,
        splits=["test"],
    )
    names = [IMAGE, TAGS] if info.use_tags else [IMAGE]
    feeds = make_feeds(test.images[: args.batch], test.tags[: args.batch], names)
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_qdq(bundle, Path(tmp), args.data)
        profiles = {
            "ort_int8_m3trt": summarize(
                profile_ort(bundle.artifact_path("engine"), feeds, args.runs, args.threads)
            ),
            "ov_int8_plain": summarize(profile_ov(plain, feeds, args.runs, args.threads)),
            "ov_int8_m3trt": summarize(
                profile_ov(bundle.artifact_path("graph"), feeds, args.runs, args.threads)
            ),
        }
    ort_conv = profiles["ort_int8_m3trt"]["conv_ms"]
    macs = multiply_accumulates(bundle.artifact_path("reference")) * args.batch
    for profile in profiles.values():  # INT8 multiply-accumulates per second per thread
        profile["conv_gmac_per_s_per_thread"] = macs / (profile["conv_ms"] * 1e6) / args.threads
    ov_wall = profiles["ov_int8_plain"]["wall_ms"]
    result = {
        "bundle": str(args.bundle),
        "backbone": info.backbone,
        "image_size": info.image_size,
        "batch": args.batch,
        "threads": args.threads,
        "cpu_flags": cpu_flags(),
        "onnxruntime": ort.__version__,
        "openvino": ov.get_version(),
        "load_average_at_end": os.getloadavg(),
        "gmac_per_batch": macs / 1e9,
        "profiles": profiles,
        "measured_ratio": ov_wall / profiles["ort_int8_m3trt"]["wall_ms"],
        "bound_if_only_convs_left": ov_wall / ort_conv,
        "conv_kernels_ratio_ov_plain_over_ort": profiles["ov_int8_plain"]["conv_ms"] / ort_conv,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    lines = [
        f"{r['backbone']} M3 {r['image_size']} px, batch {r['batch']}, {r['threads']} threads; "
        f"CPU flags: {' '.join(r['cpu_flags'])}; onnxruntime {r['onnxruntime']}, "
        f"openvino {r['openvino'].split('-')[0]}.",
        "",
        "| engine / graph | wall ms | kernel ms | convolutions ms | conv share | "
        "conv GMAC/s per thread |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in r["profiles"].items():
        lines.append(
            f"| {name} | {p['wall_ms']:.1f} | {p['kernel_total_ms']:.1f} | {p['conv_ms']:.1f} | "
            f"{100 * p['conv_share']:.1f}% | {p['conv_gmac_per_s_per_thread']:.1f} |"
        )
    lines += [
        "",
        f"{r['gmac_per_batch']:.1f} GMAC per batch in convolutions and GEMMs (from the FP32 "
        "graph's shapes); the last column is that over the convolution time and threads.",
        "",
        "Time by layer type (ms per batch):",
        "",
    ]
    for name, p in r["profiles"].items():
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(p["by_type_ms"].items())[:8])
        lines.append(f"- {name}: {top}")
        if p["kernels"]:
            kernels = ", ".join(f"{k} {v:.1f}" for k, v in p["kernels"].items())
            lines.append(f"  - convolution kernels: {kernels}")
    lines += [
        "",
        f"- m3trt INT8 (ONNX Runtime) against OpenVINO plain Q/DQ, whole run: "
        f"{r['measured_ratio']:.2f}x.",
        f"- Upper bound if everything but m3trt's convolutions took no time: "
        f"{r['bound_if_only_convs_left']:.2f}x (target 1.2x).",
        f"- OpenVINO's convolutions take {r['conv_kernels_ratio_ov_plain_over_ort']:.2f}x the time "
        "of ONNX Runtime's.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
