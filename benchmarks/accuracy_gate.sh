#!/usr/bin/env bash
# The accuracy regression gate CI runs on every change (bash benchmarks/accuracy_gate.sh [--update]).
# A small deterministic model on a small deterministic synthetic set, both built here from seeds:
# synthetic data -> ResNet-18 M3 (64 px) -> INT8 CPU bundle -> `m3trt eval` on the test split,
# compared with benchmarks/baselines/accuracy.json (a figure more than MAX_DROP points lower fails).
# --update rewrites the baseline instead (commit it with the change that justifies it).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/gate}
# The checkout's own virtual environment; elsewhere (a git worktree without one) the python on
# PATH running this checkout's m3trt (python -m from the repository root imports ./m3trt).
if [ -x .venv/bin/m3trt ]; then M3=${M3:-.venv/bin/m3trt}; else M3=${M3:-"python3 -m m3trt.cli"}; fi
BASELINE=benchmarks/baselines/accuracy.json
MAX_DROP=${MAX_DROP:-0.5}

rm -rf "$RUN"
$M3 -q data synth "$RUN/data" --n 800 --size 64 --seed 7
$M3 -q train "$RUN/data/manifest.jsonl" -o "$RUN/ckpt" --backbone resnet18 --image-size 64 \
  --epochs 10 --batch-size 32 --lr 2e-3 --tag-hidden 128 --seed 0 --threads 2
$M3 -q build "$RUN/ckpt" -o "$RUN/gate.m3" --precision int8 --target cpu --engine onnxruntime \
  --calib "$RUN/data/manifest.jsonl"
if [ "${1:-}" = "--update" ]; then
  $M3 -q eval "$RUN/gate.m3" "$RUN/data/manifest.jsonl" --split test --json "$BASELINE" \
    --overwrite
  echo "baseline written to $BASELINE"
else
  $M3 -q eval "$RUN/gate.m3" "$RUN/data/manifest.jsonl" --split test --json "$RUN/eval.json" \
    --baseline "$BASELINE" --max-drop "$MAX_DROP"
fi
