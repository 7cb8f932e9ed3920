#!/usr/bin/env bash
# The ablation of the README, per data regime, measured with m3trt's own commands: for each
# regime of `m3trt data synth --regime` (REGIMES: name:image-size:images) and each training seed,
# full M3 with the recommended recipe (RECIPE: the auxiliary image-only loss, the direct tag ->
# label path and the late fusion fitted on val), the same without the late fusion, full M3 with
# the recipe before issue 15,
# image only (--no-tags), single scale, and the tags-only baselines
# (benchmarks/ablation_tags_only.py: M3's tag MLP trained on tags alone, the rule "labels =
# the labels the tags name", the same rule with a lexicon learned on train, and the late fusion
# without the image); all on the test split.
#   bash benchmarks/ablation.sh [RUN_DIR]
# Sized for a shared 2-core CPU (5-15 minutes per model at one thread); every setting can be
# overridden from the environment (VARIANTS=per-tag-drop SEEDS=0 adds the per-tag drop-out
# candidate of the README), e.g. the old single-regime table at 128 px:
#   REGIMES=default:128:2000 SPLITS=0.7,0.15,0.15 TRAIN_ARGS="--backbone resnet18 \
#   --epochs 12 --batch-size 32 --lr 2e-3 --tag-hidden 512" OUT=benchmarks/results/ablation128 \
#   bash benchmarks/ablation.sh runs/ablation128
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ablation}
# The checkout's own virtual environment; elsewhere (a git worktree without one) the python on
# PATH running this checkout's m3trt (python -m from the repository root imports ./m3trt).
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
if [ -x .venv/bin/m3trt ]; then M3=${M3:-.venv/bin/m3trt}; else M3=${M3:-"$PY -m m3trt.cli"}; fi
SEEDS=${SEEDS:-"0 1"}
REGIMES=${REGIMES:-"default:48:1000 digits-partial:32:1200"}
VARIANTS=${VARIANTS:-"full no-late-fusion previous-recipe no-tags single-scale"}
SPLITS=${SPLITS:-0.6,0.1,0.3}
THREADS=${THREADS:-1}
TRAIN_ARGS=${TRAIN_ARGS:-"--backbone resnet18 --epochs 8 --batch-size 32 --lr 2e-3 --tag-hidden 512"}
# The recommended recipe (issue 15) and the one before it (whole-sample tag drop-out only).
RECIPE=${RECIPE:-"--aux-visual-weight 1 --tag-drop-each 0 --tag-skip --late-fusion"}
PREVIOUS=${PREVIOUS:-"--tag-drop-each 0 --aux-visual-weight 0 --aux-tags-weight 0 --visual-first-epochs 0 --no-tag-skip --no-late-fusion"}
OUT=${OUT:-benchmarks/results/ablation_regimes}

names=""
for entry in $REGIMES; do
  IFS=: read -r regime size n <<<"$entry"
  names="$names $regime"
  data="$RUN/$regime/data"
  [ -f "$data/manifest.jsonl" ] ||
    $M3 -q data synth "$data" --regime "$regime" --n "$n" --size "$size" --seed 0 --splits "$SPLITS"
  for seed in $SEEDS; do
    for variant in $VARIANTS; do
      case $variant in
        full) flags="$RECIPE" ;;
        no-late-fusion) flags="$RECIPE --no-late-fusion" ;;  # the recipe of issue 15, round 2
        shift) flags="$RECIPE --augment-shift 0.125" ;;  # a candidate (random translation)
        previous-recipe) flags="$PREVIOUS" ;;
        no-tags) flags="--no-tags" ;;
        single-scale) flags="--single-scale $RECIPE" ;;
        per-tag-drop) flags="--aux-visual-weight 1 --tag-drop-each 0.5 --no-tag-skip" ;;  # a candidate
        aux-no-skip) flags="--aux-visual-weight 1 --tag-drop-each 0 --no-tag-skip" ;;  # issue 15, step 1
        skip-no-aux) flags="--aux-visual-weight 0 --tag-drop-each 0 --tag-skip --late-fusion" ;;  # a candidate
        *) echo "unknown variant $variant" >&2; exit 2 ;;
      esac
      ckpt="$RUN/$regime/$variant-seed$seed"
      if [ ! -f "$ckpt.eval.json" ]; then
        rm -rf "$ckpt"
        start=$(date +%s)
        # shellcheck disable=SC2086
        $M3 -q train "$data/manifest.jsonl" -o "$ckpt" $TRAIN_ARGS --image-size "$size" \
          --threads "$THREADS" --seed "$seed" $flags
        echo "$regime $variant seed $seed trained in $(( $(date +%s) - start )) s"
        $M3 -q eval "$ckpt" "$data/manifest.jsonl" --split test --json "$ckpt.eval.json" \
          --overwrite >/dev/null
      fi
    done
  done
  [ -f "$RUN/$regime/tags-fused.eval.json" ] ||
    # shellcheck disable=SC2086
    $PY benchmarks/ablation_tags_only.py "$data/manifest.jsonl" "$RUN/$regime" --seeds $SEEDS
done
# shellcheck disable=SC2086
$PY benchmarks/ablation_table.py "$RUN" --regimes $names --train-args "$TRAIN_ARGS" \
  --json "$OUT.json" > "$OUT.md"
cat "$OUT.md"
