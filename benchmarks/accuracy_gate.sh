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
# Training rounds differently with each CPU's widest vector unit (PyTorch, oneDNN and MKL pick
# their kernels by ISA): on an AVX-512 host the same seeds gave figures up to 1.8 points below
# this baseline, recorded on an AVX2 host. Capped at AVX2 (a no-op where AVX2 is the widest), an
# AVX-512 VNNI host reproduces the baseline within 0.03 points; what is left is ONNX Runtime's
# INT8 kernels, which have no such switch. A caller's own settings win.
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2}
export DNNL_MAX_CPU_ISA=${DNNL_MAX_CPU_ISA:-AVX2}
export MKL_ENABLE_INSTRUCTIONS=${MKL_ENABLE_INSTRUCTIONS:-AVX2}
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
