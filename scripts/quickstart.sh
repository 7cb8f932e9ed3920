#!/usr/bin/env bash
# The main job end to end on the CPU: a synthetic dataset, a small M3 model trained on it, its
# scores on the test split. Installs what it needs into .venv (Python 3.11, torch 2.13.0 CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
RUN=${RUN:-runs/quickstart}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[train]'

rm -rf "$RUN"
# The default synthetic set (2000 images, 128 px, seed 0) and the "full" row of the ablation.
.venv/bin/m3trt data synth "$RUN/data"
.venv/bin/m3trt train "$RUN/data/manifest.jsonl" -o "$RUN/ckpt" --backbone resnet18 \
  --image-size 128 --epochs 12 --batch-size 32 --lr 2e-3 --tag-hidden 512 --seed 0
.venv/bin/m3trt eval "$RUN/ckpt" "$RUN/data/manifest.jsonl" --split test --json "$RUN/eval.json"
echo "scores written to $RUN/eval.json"
