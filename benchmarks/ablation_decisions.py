"""Which decision turns scores into labels best? Measured from saved scores, no retraining.

For every model of an ablation run (``RUN/<regime>/<variant>-seed<k>/`` checkpoints, and the
tags-only models' ``tags-only*-seed<k>.scores.npz`` written by ``ablation_tags_only.py``), the
val- and test-split scores and predicted counts are computed once (cached beside the checkpoint
as ``<ckpt>.scores.npz``) and decoded by each rule below, the same rules for every row:

- ``predicted_k``: the paper's decision (the product's before issue 15), top-k with k the
  quantity head's rounded count;
- ``threshold 0.5``: every label with p >= 0.5 (possibly none);
- ``min(k, #p>=t)``: top-k, but never a label below ``t`` (possibly none), for fixed ``t``;
- ``... t on val``: the same with ``t`` chosen on the validation split (the O-F1-maximising
  value on a 0.05 grid), then applied to test: a fair estimate, the test split is never used
  to choose;
- ``threshold t, t on val``: the labels scoring >= t (at most K_max, possibly none), t fitted on
  val: the decision ``m3trt train`` now stores in the checkpoint (``metrics.decide_k``).

Micro (overall) F1 is maximised by thresholding calibrated probabilities near half the best
reachable F1 (Lipton, Elkan & Naryanaswamy, "Optimal thresholding of classifiers to maximize F1
measure", ECML 2014), which is why a count-capped threshold is the candidate measured here.

    python benchmarks/ablation_decisions.py runs/ablation --regimes default digits-partial
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from m3trt import metrics

GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def checkpoint_scores(ckpt: Path, manifest: Path) -> dict[str, np.ndarray]:
    """{split_scores, split_k (round(q)), split_y} for val and test, cached as
    ``<ckpt>.scores.npz``."""
    cache = ckpt.with_name(ckpt.name + ".scores.npz")
    if cache.is_file():
        return dict(np.load(cache))
    import torch

    from m3trt.evaluation import labelled_split, stream_predictions
    from m3trt.train.checkpoint import load_checkpoint
    from m3trt.train.predict import torch_predictor

    torch.set_num_threads(1)
    model, config = load_checkpoint(ckpt)
    out: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        data = labelled_split(
            manifest, split, config.label_names, config.tag_vocab, config.preprocessing.image_size
        ).data
        outputs, truth = stream_predictions(
            data,
            {"m": torch_predictor(model, config)},
            batch_size=64,
            num_labels=len(config.label_names),
            k_max=config.model.k_max,
        )
        out[f"{split}_scores"] = outputs["m"].scores
        # k = round(q) whatever decision the checkpoint carries: the rules below start from it.
        out[f"{split}_k"] = metrics.decode_quantity(outputs["m"].quantity, config.model.k_max)
        out[f"{split}_y"] = truth
    out["k_max"] = np.array(config.model.k_max)
    np.savez(cache, **out)
    return out


def capped(scores: np.ndarray, k: np.ndarray, t: float) -> np.ndarray:
    """Top-k, but no label scoring below ``t``."""
    return metrics.topk_mask(scores, np.minimum(k, (scores >= t).sum(1)))


def of1(y: np.ndarray, pred: np.ndarray) -> float:
    return metrics.label_metrics(y, pred)["OF1"]


def decisions(s: dict[str, np.ndarray]) -> dict[str, float]:
    ys, ss, ks = s["test_y"], s["test_scores"], s["test_k"]
    row = {
        "predicted_k": of1(ys, metrics.topk_mask(ss, ks)),
        "threshold 0.5": of1(ys, ss >= 0.5),
    }
    for t in (0.3, 0.4, 0.5):
        row[f"min(k, #p>={t})"] = of1(ys, capped(ss, ks, t))
    val = [of1(s["val_y"], capped(s["val_scores"], s["val_k"], t)) for t in GRID]
    t_val = float(GRID[int(np.argmax(val))])
    row["min(k, #p>=t), t on val"] = of1(ys, capped(ss, ks, t_val))
    row["t on val"] = t_val
    # The decision `m3trt train` now fits (metrics.fit_decision_threshold, metrics.decide_k).
    k_max = int(s["k_max"]) if "k_max" in s else int(ks.max())
    t_thr, _ = metrics.fit_decision_threshold(s["val_y"], s["val_scores"], k_max)
    row["threshold t, t on val"] = of1(
        ys, metrics.topk_mask(ss, metrics.decide_k(ss, None, k_max, t_thr))
    )
    row["t (threshold) on val"] = t_thr
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--regimes", nargs="+", default=["default"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    table: dict[str, dict[str, dict[str, float]]] = {}
    for regime in args.regimes:
        folder = args.run / regime
        manifest = folder / "data" / "manifest.jsonl"
        rows: dict[str, dict[str, float]] = {}
        for ckpt in sorted(p for p in folder.glob("*-seed*") if (p / "config.json").is_file()):
            rows[ckpt.name] = decisions(checkpoint_scores(ckpt, manifest))
        for path in sorted(folder.glob("tags-only*-seed*.scores.npz")):
            rows[path.name.removesuffix(".scores.npz")] = decisions(dict(np.load(path)))
        table[regime] = rows
    keys = [
        "predicted_k",
        "threshold 0.5",
        "min(k, #p>=0.3)",
        "min(k, #p>=0.4)",
        "min(k, #p>=0.5)",
        "min(k, #p>=t), t on val",
        "threshold t, t on val",
    ]
    for regime, rows in table.items():
        print(f"### Regime `{regime}`: test O-F1 by decision rule\n")
        print("| model | " + " | ".join(keys) + " | t on val (capped / threshold) |")
        print("|---|" + "---|" * (len(keys) + 1))
        for name, row in rows.items():
            cells = " | ".join(f"{100 * row[k]:.1f}" for k in keys)
            print(f"| {name} | {cells} | {row['t on val']} / {row['t (threshold) on val']} |")
        print()
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
