"""Re-create the ``eval.json`` files of earlier ablation cells from a committed table's JSON.

Training is the scarce resource on the machine the ablation runs on; a model whose code path has
not changed need not be retrained to stay in the table. This writes
``RUN/<regime>/<new name>-seed<k>.eval.json`` from the per-seed values that
``ablation_table.py --json`` recorded (seed k = the k-th value, as the table script reads seeds in
order), each marked ``"carried_from"``. Only for variants whose training is bit-identical under
the current code (checked for ``--no-tag-skip`` against the commit the JSON was made at).

    python benchmarks/ablation_carry.py benchmarks/results/ablation_regimes.json runs/ablation \\
        full=aux-no-skip previous-recipe no-tags per-tag-drop
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ["CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("variants", nargs="+", help="OLD or OLD=NEW")
    args = parser.parse_args()
    data = json.loads(args.table.read_text())
    for regime, entry in data["regimes"].items():
        folder = args.run / regime
        manifest = folder / "data" / "manifest.jsonl"
        n_test = None
        if manifest.is_file():  # the same data, regenerated from its seed
            lines = [json.loads(line) for line in manifest.read_text().splitlines() if line]
            n_test = sum(1 for r in lines if r.get("split") == "test" and r.get("labels"))
        for spec in args.variants:
            old, _, new = spec.partition("=")
            rows = [r for r in entry["rows"] if r["variant"] == old]
            if not rows:
                continue
            for seed in range(rows[0]["n"]):
                out = folder / f"{new or old}-seed{seed}.eval.json"
                if out.exists():
                    continue
                result = {
                    "n_images": n_test,
                    "mAP": rows[0]["mAP"][seed],
                    "modes": {r["mode"]: {c: r[c][seed] for c in COLUMNS} for r in rows},
                    "carried_from": f"{args.table} (variant {old!r}, seed {seed})",
                }
                qty = [r["qty"] for r in rows if r["mode"] == "predicted_k" and r["qty"]]
                if qty:
                    result["quantity"] = {"acc": qty[0][seed]}
                folder.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{out}: carried")


if __name__ == "__main__":
    main()
