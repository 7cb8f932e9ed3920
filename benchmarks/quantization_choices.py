"""Which calibration method and which quantization scope keep INT8 closest to FP32?

    .venv/bin/python benchmarks/quantization_choices.py model.onnx --data manifest.jsonl \
        --out benchmarks/results/quantization_choices

For each calibration method (percentile, min-max, entropy) and scope (the convolutional trunk,
m3trt's default; trunk + GEMMs), quantizes the FP32 graph for the CPU target without the accuracy
guard and compares it with FP32 on the manifest's val split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from m3trt.calibration.data import load_image_set
from m3trt.calibration.qdq import QUANTIZED_OPS, write_qdq
from m3trt.calibration.ranges import METHODS, CalibrationSettings, calibrate
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.runtime.bundle import sha256_file
from m3trt.runtime.engines import open_path
from m3trt.runtime.model_io import ModelInfo

SCOPES = {"trunk": QUANTIZED_OPS, "trunk+gemm": (*QUANTIZED_OPS, "Gemm", "MatMul")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    info = ModelInfo.from_onnx_file(args.model)
    kw = dict(image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab)
    calib = load_image_set(args.data, count=256, splits=["train"], **kw)
    val = load_image_set(args.data, splits=["val"], **kw)
    reference = run_outputs(open_path(args.model), val.batches(16))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            ranges, _ = calibrate(
                args.model,
                calib,
                CalibrationSettings(method=method),
                model_sha256=sha256_file(args.model),
            )
            for scope, ops in SCOPES.items():
                path = write_qdq(args.model, Path(tmp) / "q.onnx", ranges, "cpu", op_types=ops)
                report = compare_outputs(
                    reference, run_outputs(open_path(path), val.batches(16)), val.labels
                )
                rows.append({"method": method, "scope": scope, **report})
    lines = [
        "| method | scope | label-set agreement | k agreement | O-F1 drop (points) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['scope']} | {100 * r['label_set_agreement']:.1f}% "
        f"| {100 * r['k_agreement']:.1f}% | {100 * r['of1_drop']:.2f} |"
        for r in rows
    ]
    text = (
        f"{info.backbone} M3 at {info.image_size} px, {len(calib)} calibration and "
        f"{len(val)} validation images\n\n" + "\n".join(lines) + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
