#!/usr/bin/env bash
# The one-shot GPU check: run it first whenever a session has the GPU machine (H200), after
# bringing onnxruntime-gpu over as ../shared/gpu/README.md says (4 parts, then
# `bash .gpu/device.sh unpack && source .gpu/device.sh env && bash benchmarks/gpu_check.sh`).
# About 8 minutes: doctor, a small trained ResNet-50 M3 (224 px), its cuda FP16 bundle, `m3trt
# bench --device cuda`, its agreement with the FP32 reference, and benchmarks/gpu_engines.py (the
# bundle's engines against PyTorch eager FP32/FP16 and the FP16 CUDA graph, batch 1-256), then the
# GPU folder pipeline (benchmarks/gpu_folder.py: 3000 photos, decoders alone, engine alone, `m3trt
# infer --decode cpu|gpu --profile`, the naive PyTorch GPU loop) and the GPU-only tests. GPU decoding
# needs nvidia-nvimgcodec-cu13 + nvidia-nvjpeg (29 MB: one run, as ../shared/gpu/README.md says for
# small wheels: `pip download` them into an ignored folder and install them into
# /var/tmp/m3gpu/site first); without them gpu_folder.py measures the CPU decoder only.
# Everything lands in $OUT (default: $RESULTS or benchmarks/results/gpu_check): commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-${RESULTS:-benchmarks/results/gpu_check}}
WORK=${WORK:-/var/tmp/m3gpu/check}  # survives between runs while the machine stays up
BACKBONE=${BACKBONE:-resnet50}
EPOCHS=${EPOCHS:-1}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
M3="python3 -m m3trt.cli"
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
step() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

step "machine"
run nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
run $M3 doctor
$M3 doctor --json > "$OUT/doctor.json"

step "data and a $BACKBONE M3 checkpoint ($EPOCHS epoch(s), 224 px)"
[ -f "$WORK/data/manifest.jsonl" ] || run $M3 -q data synth "$WORK/data" --n 1200 --size 224
[ -f "$WORK/ckpt/config.json" ] || run $M3 -q train "$WORK/data/manifest.jsonl" -o "$WORK/ckpt" \
  --backbone "$BACKBONE" --image-size 224 --epochs "$EPOCHS" --batch-size 64 --lr 2e-3 \
  --tag-hidden 512 --seed 0 --threads "$(nproc)"

step "build --target cuda (FP16, timed on the GPU, scored against FP32)"
run timeout 600 $M3 build "$WORK/ckpt" -o "$WORK/cuda-fp16.m3" --target cuda --precision fp16 \
  --val "$WORK/data/manifest.jsonl" --overwrite
cp "$WORK/cuda-fp16.m3/bundle.json" "$OUT/cuda-fp16.bundle.json" 2>/dev/null

step "m3trt bench --device cuda"
run timeout 300 $M3 bench "$WORK/cuda-fp16.m3" --device cuda --batch-sizes 1,16,64,256 \
  --warmup 1 --duration 3 --json "$OUT/bench_cuda_fp16.json" --overwrite

step "m3trt eval (agreement with the FP32 reference)"
run timeout 300 $M3 eval "$WORK/cuda-fp16.m3" "$WORK/data/manifest.jsonl" --split test \
  --device cuda --json "$OUT/eval_cuda_fp16.json" --overwrite

step "benchmarks/gpu_engines.py"
run timeout 900 python3 benchmarks/gpu_engines.py "$WORK/ckpt" --data "$WORK/data/manifest.jsonl" \
  --out "$OUT/gpu_engines" --work "$WORK/gpu_engines" --rounds 30
step "benchmarks/gpu_folder.py (the GPU folder pipeline)"
run timeout 900 python3 benchmarks/gpu_folder.py "$WORK/ckpt" --bundle "$WORK/cuda-fp16.m3" \
  --n 3000 --work "$WORK/folder" --out "$OUT/gpu_folder"

step "GPU-only tests (real nvImageCodec against the CPU decoder)"
run timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_pipeline.py -k real_gpu -rs
step "done: $OUT"
