"""Summarise the ablation runs as Markdown: one table per data regime, then the check that full M3
beats each of its halves (issue 15).

Reads ``RUN/<regime>/<variant>-seed<k>.eval.json`` (``m3trt eval --json``) and
``RUN/<regime>/tags-rule.eval.json`` (``benchmarks/ablation_tags_only.py``).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

ROWS = [
    (
        "Full M3 = recipe: aux loss + tag -> label path + late fusion (predicted k)",
        "full",
        "predicted_k",
    ),
    ("Full M3 = recipe, fixed top-3", "full", "top3"),
    ("Full M3 = recipe, oracle k (upper bound)", "full", "oracle_k"),
    ("Full M3 = recipe, threshold 0.5", "full", "threshold"),
    (
        "Full M3, recipe without late fusion (round 2) (predicted k)",
        "no-late-fusion",
        "predicted_k",
    ),
    ("Full M3, recipe without late fusion, threshold 0.5", "no-late-fusion", "threshold"),
    ("Full M3 = recipe + random shift 0.125 (predicted k)", "shift", "predicted_k"),
    ("Full M3, aux loss, no tag -> label path (predicted k)", "aux-no-skip", "predicted_k"),
    ("Full M3, aux loss, no tag -> label path, threshold 0.5", "aux-no-skip", "threshold"),
    (
        "Full M3, tag -> label path + late fusion, no aux loss (predicted k)",
        "skip-no-aux",
        "predicted_k",
    ),
    ("Full M3, previous recipe (predicted k)", "previous-recipe", "predicted_k"),
    (
        "Full M3, aux loss + per-tag drop-out 0.5, no path (predicted k)",
        "per-tag-drop",
        "predicted_k",
    ),
    ("Image only: no tags (predicted k)", "no-tags", "predicted_k"),
    ("Tags only: tag MLP (predicted k)", "tags-only", "predicted_k"),
    ("Tags only: tag MLP + tag -> label path (predicted k)", "tags-only-skip", "predicted_k"),
    ("Tags only: rule, labels named by tags", "tags-rule", "predicted_k"),
    ("Tags only: rule with the lexicon learned on train", "tags-lexicon", "predicted_k"),
    ("Tags only: late fusion without the image (predicted k)", "tags-fused", "predicted_k"),
    ("Single scale = recipe (predicted k)", "single-scale", "predicted_k"),
    (
        "Single scale, aux loss, no tag -> label path (predicted k)",
        "single-scale-no-skip",
        "predicted_k",
    ),
]
COLUMNS = ["CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1"]
IMAGE_HALF = ("no-tags",)
TAG_HALF = ("tags-only", "tags-only-skip", "tags-rule", "tags-lexicon", "tags-fused")
SINGLE_FILES = ("tags-rule", "tags-lexicon", "tags-fused")  # deterministic: one file, no seed


def collect(folder: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*-seed*.eval.json")):
        variant = path.name.split("-seed")[0]
        runs.setdefault(variant, []).append(json.loads(path.read_text()))
    for name in SINGLE_FILES:
        path = folder / f"{name}.eval.json"
        if path.is_file():
            runs[name] = [json.loads(path.read_text())]
    return runs


def cell(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def mean_of1(runs: dict[str, list[dict]], variant: str) -> float | None:
    results = runs.get(variant)
    if not results:
        return None
    return float(np.mean([r["modes"]["predicted_k"]["OF1"] for r in results]))


def regime_table(runs: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    header = ["", "mAP", *COLUMNS[:-1], "mCF1", "qty acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for title, variant, mode in ROWS:
        results = runs.get(variant, [])
        if not results or mode not in results[0]["modes"]:
            continue
        row = {
            "mAP": [r["mAP"] for r in results],
            **{c: [r["modes"][mode][c] for r in results] for c in COLUMNS},
            "qty": [r["quantity"]["acc"] for r in results if "quantity" in r]
            if mode == "predicted_k"
            else [],
        }
        qty = cell(row["qty"]) if row["qty"] else "-"
        cells = [cell(row["mAP"]), *(cell(row[c]) for c in COLUMNS), qty]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
        table.append({"row": title, "variant": variant, "mode": mode, "n": len(results), **row})
    return lines, table


def halves_check(regime: str, runs: dict[str, list[dict]]) -> dict | None:
    """Full M3's mean predicted-k O-F1 against the best image-only and the best tags-only."""
    full = mean_of1(runs, "full")
    before = mean_of1(runs, "no-late-fusion")
    prev = mean_of1(runs, "previous-recipe")
    aux = mean_of1(runs, "aux-no-skip")
    image = max((v for v in (mean_of1(runs, x) for x in IMAGE_HALF) if v is not None), default=None)
    tags = max((v for v in (mean_of1(runs, x) for x in TAG_HALF) if v is not None), default=None)
    if full is None or image is None or tags is None:
        return None
    return {
        "regime": regime,
        "full": full,
        "no_late_fusion": before,
        "previous": prev,
        "aux_no_skip": aux,
        "image_only": image,
        "tags_only": tags,
        "margin": full - max(image, tags),
        "margin_image": full - image,
        "margin_tags": full - tags,
        "no_late_fusion_margin": None if before is None else before - max(image, tags),
        "previous_margin": None if prev is None else prev - max(image, tags),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--regimes", nargs="+", default=["default"])
    parser.add_argument("--train-args", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict = {"train_args": args.train_args, "regimes": {}}
    checks = []
    print(
        "Test split, percentages, mean ± std over training seeds (a cell without ± is one "
        f"seed, seed 0). Train: `{args.train_args}` "
        f"(+ each variant's flags). Machine: {platform.machine()}, Python "
        f"{platform.python_version()}.\n"
    )
    for regime in args.regimes:
        runs = collect(args.run / regime)
        if not runs:
            continue
        synth = args.run / regime / "data" / "synth.json"
        settings = json.loads(synth.read_text()) if synth.is_file() else {}
        n_test = next(iter(runs.values()))[0]["n_images"]
        seeds = {v: len(r) for v, r in runs.items()}
        knobs = ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("splits",))
        print(f"### Regime `{regime}` ({n_test} test images; {knobs})\n")
        lines, table = regime_table(runs)
        print("\n".join(lines) + "\n")
        check = halves_check(regime, runs)
        if check:
            checks.append(check)
        out["regimes"][regime] = {"synth": settings, "seeds": seeds, "rows": table, "check": check}
    if checks:
        print("### Full M3 against its halves (predicted-k O-F1, mean over seeds)\n")
        print(
            "| regime | full M3 (recipe) | without late fusion (round 2) | aux loss, no tag path "
            "| previous recipe | image only | tags only (best of MLP, MLP + path, rule, learned "
            "lexicon, fused) | margin over image | margin over tags | margin, round 2 "
            "| margin, previous |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")

        def pct(value: float | None, sign: bool = False) -> str:
            if value is None:
                return "-"
            return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"

        for c in checks:
            print(
                f"| {c['regime']} | {pct(c['full'])} | {pct(c['no_late_fusion'])} "
                f"| {pct(c['aux_no_skip'])} | {pct(c['previous'])} | {pct(c['image_only'])} "
                f"| {pct(c['tags_only'])} | {pct(c['margin_image'], True)} "
                f"| {pct(c['margin_tags'], True)} | {pct(c['no_late_fusion_margin'], True)} "
                f"| {pct(c['previous_margin'], True)} |"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
