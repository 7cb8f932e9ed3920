#!/usr/bin/env bash
# The ablation table of the README, measured with m3trt's own commands on the default synthetic
# set: full M3 vs no tags vs single scale, each decoded with the predicted k, fixed top-3 and
# oracle k, on the test split, over several training seeds.
#   bash benchmarks/ablation.sh [RUN_DIR]      (about 5 minutes per model on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ablation}
M3=${M3:-.venv/bin/m3trt}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-"0 1"}
TRAIN_ARGS=${TRAIN_ARGS:-"--backbone resnet18 --image-size 128 --epochs 12 --batch-size 32 --lr 2e-3 --tag-hidden 512"}

mkdir -p "$RUN"
[ -f "$RUN/data/manifest.jsonl" ] || $M3 -q data synth "$RUN/data"   # the defaults: 2000 images, 128 px, seed 0
for seed in $SEEDS; do
  for variant in full no-tags single-scale; do
    case $variant in
      full) flags="" ;;
      no-tags) flags="--no-tags" ;;
      single-scale) flags="--single-scale" ;;
    esac
    ckpt="$RUN/$variant-seed$seed"
    if [ ! -f "$ckpt.eval.json" ]; then
      rm -rf "$ckpt"
      start=$(date +%s)
      # shellcheck disable=SC2086
      $M3 -q train "$RUN/data/manifest.jsonl" -o "$ckpt" $TRAIN_ARGS --seed "$seed" $flags
      echo "$variant seed $seed trained in $(( $(date +%s) - start )) s"
      $M3 -q eval "$ckpt" "$RUN/data/manifest.jsonl" --split test --json "$ckpt.eval.json" >/dev/null
    fi
  done
done
$PY benchmarks/ablation_table.py "$RUN" --train-args "$TRAIN_ARGS" \
  --json benchmarks/results/ablation.json > benchmarks/results/ablation.md
cat benchmarks/results/ablation.md
