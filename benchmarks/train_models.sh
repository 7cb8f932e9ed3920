#!/usr/bin/env bash
# The models the speed benchmarks use: ResNet-18 and ResNet-50 M3 at 224 px, trained on the
# default synthetic set (bash benchmarks/train_models.sh [RUN_DIR]). R50 takes ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/bench}
M3=${M3:-.venv/bin/m3trt}
mkdir -p "$RUN"
[ -f "$RUN/data/manifest.jsonl" ] || $M3 -q data synth "$RUN/data"
for backbone in resnet18 resnet50; do
  case $backbone in
    resnet18) epochs=8 ;;
    resnet50) epochs=4 ;;
  esac
  [ -f "$RUN/$backbone/config.json" ] && continue
  $M3 -q train "$RUN/data/manifest.jsonl" -o "$RUN/$backbone" --backbone $backbone \
    --image-size 224 --epochs $epochs --batch-size 32 --lr 2e-3 --tag-hidden 512 --seed 0
done
