#!/usr/bin/env bash
# `m3trt bench` against benchmarks/cpu_engines.py (same bundles, same machine), and the speed-ratio
# baselines of this machine. Needs the bundles cpu_engines.py leaves in runs/bench-bundles/.
#   bash benchmarks/bench_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
M3=${M3:-.venv/bin/m3trt}
B=runs/bench-bundles
OUT=benchmarks/results/bench
mkdir -p "$OUT" benchmarks/baselines
for model in resnet18 resnet50; do
  # Ratio baselines: INT8 bundle against its own FP32 reference graph, in one process.
  $M3 -q bench "$B/$model-int8.m3" --batch-sizes 1,16 --warmup 1 --duration 6 \
    --against onnx-fp32 --json "benchmarks/baselines/speed_${model}_int8.json" \
    --plot "$OUT/${model}_int8.png" --overwrite
  # The FP32 bundle alone and the INT8 bundle against PyTorch eager, as in cpu_engines.py.
  $M3 -q bench "$B/$model-fp32.m3" --batch-sizes 1,16 --warmup 1 --duration 6 \
    --json "$OUT/${model}_fp32.json" --overwrite
  OMP_WAIT_POLICY=PASSIVE $M3 -q bench "$B/$model-int8.m3" --batch-sizes 16 --warmup 1 \
    --duration 8 --against torch --json "$OUT/${model}_int8_vs_torch.json" \
    --overwrite
done
.venv/bin/python benchmarks/bench_check.py > "$OUT/check.md"
cat "$OUT/check.md"
