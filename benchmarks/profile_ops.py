"""Where an engine spends its time: ONNX Runtime's per-op kernel times, summed by op type.

.venv/bin/python benchmarks/profile_ops.py NAME.m3 [--batch 16] [--runs 6]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from m3trt.runtime.bundle import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=0, help="also list the N slowest nodes")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.enable_profiling = True
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(
            str(bundle.artifact_path("engine")), options, providers=["CPUExecutionProvider"]
        )
        size, rng = bundle.model.image_size, np.random.default_rng(0)
        feeds = {
            "image": rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8),
            "tags": np.zeros((args.batch, bundle.model.num_tags), np.float32),
        }
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        for _ in range(args.runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    per_node: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
            per_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    total = sum(per_op.values())
    print(f"{bundle.name}: {total / args.runs / 1000:.1f} ms of kernels per batch of {args.batch}")
    for op, micros in per_op.most_common(12):
        print(f"  {op:<22} {micros / args.runs / 1000:7.1f} ms  {100 * micros / total:5.1f}%")
    if args.nodes:
        print("slowest nodes:")
    for node, micros in per_node.most_common(args.nodes):
        print(f"  {node[:60]:<60} {micros / args.runs / 1000:7.2f} ms")


if __name__ == "__main__":
    main()
