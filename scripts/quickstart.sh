#!/usr/bin/env bash
# The main job end to end on the CPU: a synthetic dataset, a small M3 model trained on it, an INT8
# CPU engine bundle built from it, `m3trt infer` over the test images, and the scores and
# throughput at the end. Installs what it needs into .venv (Python 3.11, torch 2.13.0 CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
RUN=${RUN:-runs/quickstart}
M3=.venv/bin/m3trt

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[cpu,train]'

rm -rf "$RUN"
# The default synthetic set (2000 images, 128 px, seed 0) and the "full" row of the ablation.
$M3 data synth "$RUN/data"
$M3 train "$RUN/data/manifest.jsonl" -o "$RUN/ckpt" --backbone resnet18 \
  --image-size 128 --epochs 12 --batch-size 32 --lr 2e-3 --tag-hidden 512 --seed 0
$M3 eval "$RUN/ckpt" "$RUN/data/manifest.jsonl" --split test --json "$RUN/eval.json"

# INT8 CPU bundle: calibrated on the train split, accuracy-checked on the val split.
$M3 build "$RUN/ckpt" -o "$RUN/model.m3" --precision int8 --calib "$RUN/data/manifest.jsonl"

# The test images as a folder (links), annotated with their user tags from the manifest.
.venv/bin/python - "$RUN" <<'PY'
import json, os, sys
run = sys.argv[1]
os.makedirs(f"{run}/test_images", exist_ok=True)
for line in open(f"{run}/data/manifest.jsonl"):
    row = json.loads(line)
    if row.get("split") == "test":
        name = os.path.basename(row["image"])
        os.symlink(os.path.abspath(f"{run}/data/{row['image']}"), f"{run}/test_images/{name}")
PY
$M3 infer "$RUN/model.m3" "$RUN/test_images" -o "$RUN/annotations.jsonl" \
  --tags-manifest "$RUN/data/manifest.jsonl" --report "$RUN/report.html" \
  --summary-json "$RUN/infer.json"

echo
echo "== scores of the INT8 bundle on the test split =="
$M3 -q eval "$RUN/model.m3" "$RUN/data/manifest.jsonl" --split test --json "$RUN/eval_bundle.json"
.venv/bin/python - "$RUN" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/infer.json"))
print(f"\n== m3trt infer: {s['annotated']} images at {s['images_per_s']:.1f} images/s "
      f"({s['failed']} failed) -> {s['output']}; contact sheet: {sys.argv[1]}/report.html ==")
PY
