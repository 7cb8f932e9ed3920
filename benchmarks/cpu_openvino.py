"""OpenVINO against ONNX Runtime on the CPU, side by side in one process (issue 9).

    .venv/bin/python benchmarks/cpu_openvino.py runs/bench/resnet18 runs/bench/resnet50 \
        --data runs/bench/data/manifest.jsonl --out benchmarks/results/cpu_openvino

For each checkpoint: `m3trt build` FP32 and INT8 CPU bundles (the library call; INT8 calibrated on
256 training images and guarded on the val split), plus the *plain* Q/DQ graph a user would feed
OpenVINO (the same calibrated ranges and quantized ops, without m3trt's uint8 stem). Then, through
m3trt's engine interface, interleaved round after round with a pause before each call (medians at
batch 1 and 16, 2 threads): ONNX Runtime and OpenVINO on the FP32 graph, m3trt's INT8 engine
(ONNX Runtime on its offline-optimized graph), OpenVINO on m3trt's Q/DQ graph, OpenVINO on the
plain Q/DQ graph. Label-set agreement on the test split against ONNX Runtime FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from m3trt.build.bundle import build_bundle
from m3trt.build.options import BuildOptions
from m3trt.build.timing import measure_latency
from m3trt.calibration.data import load_calibration_images, load_image_set
from m3trt.calibration.qdq import write_qdq
from m3trt.calibration.ranges import CalibrationSettings, calibrate
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.runtime.bundle import sha256_file
from m3trt.runtime.engines import open_path

BATCHES = (1, 16)
COOL_DOWN_S = 0.2  # the previous engine's worker threads stop spinning before the next call
INT8 = ("ort_int8_m3trt", "ov_int8_m3trt")


def plain_qdq(bundle, work: Path, data: Path) -> Path:
    """The Q/DQ graph without m3trt's uint8 stem, from the bundle's own calibrated ranges."""
    reference = bundle.artifact_path("reference")
    info = bundle.model
    calib = load_calibration_images(
        data,
        count=bundle.provenance["calibration"]["image_count"],
        image_size=info.image_size,
        label_names=info.label_names,
        tag_vocab=info.tag_vocab,
    )
    cache = work / "calibration.json"
    cache.write_bytes(bundle.artifact_path("calibration").read_bytes())
    ranges, hit = calibrate(
        reference,
        calib,
        CalibrationSettings(),
        model_sha256=sha256_file(reference),
        cache_path=cache,
    )
    assert hit, "the bundle's calibration cache did not match"
    kept = [n["node"] for n in bundle.provenance.get("accuracy_guard", {}).get("kept_in_float", [])]
    return write_qdq(
        reference, work / "plain.qdq.onnx", ranges, "cpu", nodes_to_exclude=kept, uint8_input=False
    )


def timings(engines: dict, images: np.ndarray, tags: np.ndarray, rounds: int) -> dict:
    return measure_latency(engines, images, tags, rounds, pause_s=COOL_DOWN_S)


def bench_model(checkpoint: Path, data: Path, work: Path, rounds: int, threads: int) -> dict:
    bundles = {}
    for precision in ("fp32", "int8"):
        out = work / f"{checkpoint.name}-{precision}.m3"
        options = BuildOptions(precision=precision, target="cpu", calib=data, overwrite=True)
        bundles[precision] = build_bundle(checkpoint, out, options)
    fp32, int8 = bundles["fp32"], bundles["int8"]
    with tempfile.TemporaryDirectory() as tmp:
        plain = plain_qdq(int8, Path(tmp), data)
        paths = {
            "ort_fp32": ("onnxruntime", fp32.artifact_path("engine")),
            "ov_fp32": ("openvino", fp32.artifact_path("reference")),
            "ort_int8_m3trt": ("onnxruntime", int8.artifact_path("engine")),
            "ov_int8_m3trt": ("openvino", int8.artifact_path("graph")),
            "ov_int8_plain": ("openvino", plain),
        }
        engines = {n: open_path(p, engine=k, threads=threads) for n, (k, p) in paths.items()}
        info = int8.model
        test = load_image_set(
            data,
            image_size=info.image_size,
            label_names=info.label_names,
            tag_vocab=info.tag_vocab,
            splits=["test"],
        )
        result = {
            "checkpoint": str(checkpoint),
            "backbone": info.backbone,
            "image_size": info.image_size,
            "threads": threads,
            "bundle_runtime_choice": int8.runtime,
            "batches": {},
        }
        for batch in BATCHES:
            ms = timings(engines, test.images[:batch], test.tags[:batch], rounds)
            best = min(INT8, key=ms.get)
            result["batches"][batch] = {
                "median_ms": ms,
                "images_per_s": {k: batch * 1e3 / v for k, v in ms.items()},
                "ov_fp32_vs_ort_fp32": ms["ort_fp32"] / ms["ov_fp32"],
                "best_m3trt_int8": best,
                "best_m3trt_int8_vs_ov_int8_plain": ms["ov_int8_plain"] / ms[best],
                "ort_int8_m3trt_vs_ov_int8_plain": ms["ov_int8_plain"] / ms["ort_int8_m3trt"],
            }
        outputs = {n: run_outputs(e, test.batches(16)) for n, e in engines.items()}
        result["label_set_agreement_vs_ort_fp32"] = {
            n: compare_outputs(outputs["ort_fp32"], o, None)["label_set_agreement"]
            for n, o in outputs.items()
        }
        result["ov_vs_ort_int8_label_sets"] = compare_outputs(
            outputs["ort_int8_m3trt"], outputs["ov_int8_m3trt"], None
        )["label_set_agreement"]
        result["n_test_images"] = len(test)
        for engine in engines.values():
            engine.close()
    return result


def markdown(results: list[dict]) -> str:
    names = ("ort_fp32", "ov_fp32", "ort_int8_m3trt", "ov_int8_m3trt", "ov_int8_plain")
    lines = [
        "| model | engine / graph | b1 ms | b16 ms | b16 img/s | label sets = ORT FP32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        b1, b16 = r["batches"]["1"], r["batches"]["16"]
        for n in names:
            lines.append(
                f"| {r['backbone']} M3 {r['image_size']}px | {n} | {b1['median_ms'][n]:.1f} | "
                f"{b16['median_ms'][n]:.1f} | {b16['images_per_s'][n]:.1f} | "
                f"{100 * r['label_set_agreement_vs_ort_fp32'][n]:.1f}% |"
            )
    lines.append("")
    for r in results:
        b1, b16 = r["batches"]["1"], r["batches"]["16"]
        ratio1, ratio16 = (b["best_m3trt_int8_vs_ov_int8_plain"] for b in (b1, b16))
        lines.append(
            f"- {r['backbone']}: OpenVINO FP32 is {b16['ov_fp32_vs_ort_fp32']:.2f}x ONNX Runtime "
            f"FP32 at batch 16 ({b1['ov_fp32_vs_ort_fp32']:.2f}x at batch 1); m3trt's best INT8 "
            f"({b16['best_m3trt_int8']}) is {ratio16:.2f}x OpenVINO on the plain Q/DQ graph at "
            f"batch 16 ({ratio1:.2f}x at batch 1); OpenVINO and ONNX Runtime give the same "
            f"INT8 label sets on "
            f"{100 * r['ov_vs_ort_int8_label_sets']:.1f}% of {r['n_test_images']} test images; "
            f"the bundle's recorded CPU engine: {r['bundle_runtime_choice']['cpu']['engine']}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="Output path without suffix.")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-openvino"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [
        bench_model(c, args.data, args.work, args.rounds, args.threads) for c in args.checkpoints
    ]
    results = json.loads(json.dumps(results))  # batch keys as strings, as in the JSON file
    import onnxruntime
    import openvino

    machine = {
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.machine(),
        ),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.get_version(),
        "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "results": results}, indent=1) + "\n"
    )
    text = markdown(results)
    args.out.with_suffix(".md").write_text(
        f"Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"onnxruntime {machine['onnxruntime']}, openvino "
        f"{machine['openvino']}.\n\n" + text
    )
    print(text)


if __name__ == "__main__":
    main()
