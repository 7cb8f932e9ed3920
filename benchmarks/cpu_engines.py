"""Side by side, in one run: PyTorch eager FP32, the CPU FP32 bundle and the CPU INT8 bundle.

    .venv/bin/python benchmarks/cpu_engines.py RUN_DIR/resnet18 RUN_DIR/resnet50 \
        --data RUN_DIR/data/manifest.jsonl --out benchmarks/results/cpu_engines

Builds both bundles from each checkpoint with `m3trt build` (the library call), then times the
three engines interleaved, round after round, at batch 1 and 16 (medians; ratios are what hold on
a noisy machine), and scores all three on the test split (O-F1 with the predicted k).
"""

from __future__ import annotations

import os

# torch's OpenMP workers otherwise busy-wait after every call and steal both cores from the
# ONNX Runtime engine timed next (measured: INT8 ResNet-18 at b16 went from 50 to 77 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from m3trt import metrics
from m3trt.build.bundle import build_bundle
from m3trt.build.options import BuildOptions
from m3trt.calibration.data import load_image_set
from m3trt.runtime.engines.ort_engine import cpu_session
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.predict import torch_runner

BATCHES = (1, 16)
# Both ONNX Runtime's and OpenMP's pools busy-wait briefly after a call; without a pause the engine
# timed next shares the cores with them (INT8 ResNet-18 b16: 50 ms alone, 77 ms right after FP32).
COOL_DOWN_S = 0.2


def eager_runner(checkpoint: Path):
    run_eager = torch_runner(checkpoint)

    def run(images: np.ndarray, tags: np.ndarray):
        out = run_eager(images, tags)
        return out["scores"], out["k"]

    return run


def onnx_runner(path: Path):
    session = cpu_session(path)
    names = [i.name for i in session.get_inputs()]

    def run(images: np.ndarray, tags: np.ndarray):
        feeds = {"image": images, "tags": tags}
        scores, _, k, _ = session.run(None, {n: feeds[n] for n in names})
        return scores, k

    return run


def timings(runners: dict, images: np.ndarray, tags: np.ndarray, rounds: int) -> dict:
    for run in runners.values():
        run(images, tags)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(COOL_DOWN_S)  # let the previous engine's worker threads stop spinning
            start = time.perf_counter()
            run(images, tags)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def of1(runner, test) -> float:
    preds = []
    for images, tags in test.batches(32):
        scores, k = runner(images, tags)
        preds.append(metrics.topk_mask(scores, k))
    return metrics.label_metrics(test.labels, np.concatenate(preds))["OF1"]


def bench_model(checkpoint: Path, data: Path, work: Path, rounds: int) -> dict:
    bundles = {}
    for precision in ("fp32", "int8"):
        out = work / f"{checkpoint.name}-{precision}.m3"
        options = BuildOptions(precision=precision, target="cpu", calib=data, overwrite=True)
        bundles[precision] = build_bundle(checkpoint, out, options)
    _, config = load_checkpoint(checkpoint)
    runners = {
        "torch_eager_fp32": eager_runner(checkpoint),
        "bundle_fp32": onnx_runner(bundles["fp32"].artifact_path("engine")),
        "bundle_int8": onnx_runner(bundles["int8"].artifact_path("engine")),
    }
    test = load_image_set(
        data,
        image_size=config.preprocessing.image_size,
        label_names=config.label_names,
        tag_vocab=config.tag_vocab,
        splits=["test"],
    )
    result = {
        "checkpoint": str(checkpoint),
        "backbone": config.model.backbone,
        "image_size": config.preprocessing.image_size,
        "batches": {},
    }
    for batch in BATCHES:
        images, tags = test.images[:batch], test.tags[:batch]
        ms = timings(runners, images, tags, rounds)
        result["batches"][batch] = {
            "median_ms": ms,
            "images_per_s": {k: batch * 1e3 / v for k, v in ms.items()},
            "int8_vs_fp32_bundle": ms["bundle_fp32"] / ms["bundle_int8"],
            "int8_vs_torch_eager": ms["torch_eager_fp32"] / ms["bundle_int8"],
            "fp32_bundle_vs_torch_eager": ms["torch_eager_fp32"] / ms["bundle_fp32"],
        }
    scores = {name: of1(run, test) for name, run in runners.items()}
    result["test_OF1"] = scores
    result["n_test_images"] = len(test)
    result["int8_OF1_drop_points"] = 100 * (scores["bundle_fp32"] - scores["bundle_int8"])
    result["int8_guard"] = bundles["int8"].provenance.get("accuracy_guard")
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | engine | b1 ms | b16 ms | b16 img/s | test O-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for name in ("torch_eager_fp32", "bundle_fp32", "bundle_int8"):
            b1, b16 = r["batches"][1], r["batches"][16]
            lines.append(
                f"| {r['backbone']} M3 {r['image_size']}px | {name} | {b1['median_ms'][name]:.1f} "
                f"| {b16['median_ms'][name]:.1f} | {b16['images_per_s'][name]:.1f} "
                f"| {100 * r['test_OF1'][name]:.1f} |"
            )
    lines.append("")
    for r in results:
        b16 = r["batches"][16]
        lines.append(
            f"- {r['backbone']}: INT8 bundle is {b16['int8_vs_fp32_bundle']:.2f}x the FP32 bundle "
            f"and {b16['int8_vs_torch_eager']:.2f}x PyTorch eager at batch 16 "
            f"(batch 1: {r['batches'][1]['int8_vs_fp32_bundle']:.2f}x / "
            f"{r['batches'][1]['int8_vs_torch_eager']:.2f}x); O-F1 drop "
            f"{r['int8_OF1_drop_points']:.2f} points on {r['n_test_images']} test images"
        )
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="Output path without suffix.")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-bundles"))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    results = [bench_model(c, args.data, args.work, args.rounds) for c in args.checkpoints]
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1) + "\n"
    )
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
