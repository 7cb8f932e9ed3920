"""Summarise the ablation runs (``<variant>-seed<k>.eval.json`` files) as a Markdown table."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

ROWS = [
    ("Full M3 (predicted k)", "full", "predicted_k"),
    ("Full M3, fixed top-3", "full", "top3"),
    ("Full M3, oracle k (upper bound)", "full", "oracle_k"),
    ("Full M3, threshold 0.5", "full", "threshold"),
    ("No tags (predicted k)", "no-tags", "predicted_k"),
    ("Single scale (predicted k)", "single-scale", "predicted_k"),
]
COLUMNS = ["CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1"]


def collect(run: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(run.glob("*-seed*.eval.json")):
        variant = path.name.split("-seed")[0]
        runs.setdefault(variant, []).append(json.loads(path.read_text()))
    return runs


def cell(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--train-args", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = collect(args.run)
    seeds = {v: len(r) for v, r in runs.items()}
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
            "qty": [r["quantity"]["acc"] for r in results] if mode == "predicted_k" else [],
        }
        qty = cell(row["qty"]) if row["qty"] else "-"
        cells = [cell(row["mAP"]), *(cell(row[c]) for c in COLUMNS), qty]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
        table.append({"row": title, "variant": variant, "mode": mode, **row})
    n_test = runs["full"][0]["n_images"] if "full" in runs else 0
    print(
        f"Test split of the default synthetic set ({n_test} images), percentages, mean ± std "
        f"over {max(seeds.values(), default=0)} training seeds. Train: `{args.train_args}`. "
        f"Machine: {platform.machine()}, Python {platform.python_version()}.\n"
    )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps({"seeds": seeds, "train_args": args.train_args, "rows": table}, indent=1)
            + "\n"
        )


if __name__ == "__main__":
    main()
