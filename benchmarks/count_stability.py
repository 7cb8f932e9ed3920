"""Why the quantity head's exact-count accuracy moves with the training seed (issue 15).

For each checkpoint (groups of seeds trained the same way) on its manifest's splits:

- test count accuracy of the head as exported, ``k = round(q)``;
- the same after the val-split calibration ``m3trt train --calibrate-quantity`` fits;
- ``round(sum of the label probabilities)``, a count read from the classifier instead;
- a **read-out probe**: a multinomial logistic regression over the counts on the head's hidden
  layer, fitted on the train split (L2 chosen on val). It bounds what any refit of the head's last
  layer could reach; when it is no better than the head, the seed's features are the limit;
- the count accuracy on the train split (a model that counts badly on the images it was fitted
  on has not learnt to count, it is not over-fitting);
- the per-epoch train count loss and val count accuracy from the training history: when the
  head starts to learn.

    python benchmarks/count_stability.py MANIFEST --group NAME=CKPT[,CKPT...] ... --out PREFIX
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import torch

from m3trt import metrics
from m3trt.data.batches import RecordSet
from m3trt.data.manifest import read_manifest
from m3trt.data.vocab import Vocab
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.loop import TrainOptions, split_records
from m3trt.train.predict import preprocess_for
from m3trt.train.quantity import fit_calibration

PROBE_L2 = (1.0, 10.0, 100.0)


@torch.no_grad()
def _forward(model, config, records) -> dict[str, np.ndarray]:
    data = RecordSet(
        records,
        Vocab(config.label_names),
        Vocab(config.tag_vocab),
        config.preprocessing.image_size,
    )
    pre = preprocess_for(config)
    hidden, z, probs, labels = [], [], [], []
    for batch in data.batches(64):
        tags = torch.from_numpy(batch.tags)
        joint, seen = model.encode(pre(torch.from_numpy(batch.images)), tags)
        h = torch.relu(model.quantity.fc1(joint))
        hidden.append(h.numpy())
        z.append(model.quantity.fc2(h).squeeze(1).numpy())
        probs.append(torch.sigmoid(model.logits(joint, seen)).numpy())
        labels.append(batch.labels)
    y = np.concatenate(labels) > 0
    return {
        "h": np.concatenate(hidden),
        "z": np.concatenate(z),
        "p": np.concatenate(probs),
        "y": y,
        "count": y.sum(1),
    }


def _quantity(z: np.ndarray, k_max: int) -> np.ndarray:
    """The head's q from its pre-sigmoid output, as the graph computes it."""
    return 1.0 + (k_max - 1) / (1.0 + np.exp(-z))


def _head_counts(z: np.ndarray, k_max: int) -> np.ndarray:
    return metrics.decode_quantity(_quantity(z, k_max), k_max)


def _probe(train: dict, val: dict, test: dict, k_max: int) -> tuple[float, float]:
    """(test accuracy, chosen L2) of a softmax read-out of the counts from the hidden layer."""
    splits = (("tr", train), ("va", val), ("te", test))
    x = {n: torch.from_numpy(d["h"]).double() for n, d in splits}
    c = {n: torch.from_numpy(np.clip(d["count"], 1, k_max) - 1) for n, d in splits}
    best = (-1.0, 0.0, 0.0)
    for l2 in PROBE_L2:
        w = torch.zeros(x["tr"].shape[1], k_max, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k_max, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

        def loss(w=w, b=b, opt=opt, l2=l2) -> torch.Tensor:
            opt.zero_grad()
            value = torch.nn.functional.cross_entropy(x["tr"] @ w + b, c["tr"])
            value = value + 0.5 * l2 / len(c["tr"]) * (w * w).sum()
            value.backward()
            return value

        opt.step(loss)
        with torch.no_grad():
            val_acc = float(((x["va"] @ w + b).argmax(1) == c["va"]).double().mean())
            test_acc = float(((x["te"] @ w + b).argmax(1) == c["te"]).double().mean())
        if val_acc > best[0]:
            best = (val_acc, test_acc, l2)
    return best[1], best[2]


def measure(manifest_path: str, checkpoint: str) -> dict:
    torch.set_num_threads(1)
    model, config = load_checkpoint(checkpoint)
    model.eval()
    # checkpoints of the experiments (git show 7aba6d0, 3f2fa92) carry options since removed
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    saved = config.training.get("options", {})
    options = TrainOptions(**{k: v for k, v in saved.items() if k in known})
    manifest = read_manifest(manifest_path)
    train_records, val_records, _ = split_records(manifest, options.val_fraction, options.seed)
    test_records = [r for r in manifest.split("test") if r.labels]
    parts = {
        name: _forward(model, config, records)
        for name, records in (
            ("train", train_records),
            ("val", val_records),
            ("test", test_records),
        )
    }
    k_max = config.model.k_max
    test, val = parts["test"], parts["val"]
    cal = fit_calibration(_quantity(val["z"], k_max), val["count"], k_max)
    probe_acc, probe_l2 = _probe(parts["train"], val, test, k_max)
    k_test = metrics.decide_k(
        test["p"],
        _quantity(test["z"], k_max),
        k_max,
        config.model.decision_threshold,
    )
    history = config.training.get("history", [])
    return {
        "checkpoint": checkpoint,
        "seed": options.seed,
        "epochs": options.epochs,
        "test_mAP": metrics.mean_average_precision(test["y"], test["p"])[0],
        "test_OF1": metrics.label_metrics(test["y"], metrics.topk_mask(test["p"], k_test))["OF1"],
        "count_acc": {
            "test, round(q)": float(np.mean(_head_counts(test["z"], k_max) == test["count"])),
            "test, val-calibrated": float(
                np.mean(_head_counts(cal.scale * test["z"] + cal.shift, k_max) == test["count"])
            ),
            "test, round(sum p)": float(
                np.mean(np.clip(np.floor(test["p"].sum(1) + 0.5), 1, k_max) == test["count"])
            ),
            "test, read-out probe": probe_acc,
            "train, round(q)": float(
                np.mean(_head_counts(parts["train"]["z"], k_max) == parts["train"]["count"])
            ),
        },
        "probe_l2": probe_l2,
        "train_count_loss": [round(row["qty"], 4) for row in history],
        "val_count_acc": [row.get("val_count_acc") for row in history],
    }


def _table(results: dict[str, list[dict]]) -> str:
    keys = list(next(iter(results.values()))[0]["count_acc"])
    head = ["group", "seed", "mAP", "O-F1", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, rows in results.items():
        for r in rows:
            cells = [
                group,
                str(r["seed"]),
                f"{100 * r['test_mAP']:.1f}",
                f"{100 * r['test_OF1']:.1f}",
            ]
            cells += [f"{100 * r['count_acc'][k]:.1f}" for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        for k in keys[:1]:
            values = np.array([100 * r["count_acc"][k] for r in rows])
            lines.append(
                f"| {group}: mean ± std of round(q) | | | | {values.mean():.1f} ± "
                f"{values.std(ddof=1) if len(values) > 1 else 0:.1f} |" + " |" * (len(keys) - 1)
            )
    lines.append("")
    lines.append("Train count loss (SmoothL1 or the group's loss) per epoch:")
    lines.append("")
    for group, rows in results.items():
        for r in rows:
            curve = ", ".join(f"{v:.2f}" for v in r["train_count_loss"])
            lines.append(f"- {group} seed {r['seed']}: {curve}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--group", action="append", required=True, help="NAME=CKPT[,CKPT...]")
    parser.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    # checkpoints already measured into OUT.json are not measured again (add a group later)
    previous = Path(f"{args.out}.json")
    done = {}
    if previous.is_file():
        for rows in json.loads(previous.read_text(encoding="utf-8")).values():
            done |= {row["checkpoint"]: row for row in rows}
    results: dict[str, list[dict]] = {}
    for spec in args.group:
        name, _, paths = spec.partition("=")
        results[name] = [done.get(p) or measure(args.manifest, p) for p in paths.split(",")]
        print(name, [round(100 * r["count_acc"]["test, round(q)"], 1) for r in results[name]])
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    md = (
        f"# Count accuracy across seeds (`benchmarks/count_stability.py`)\n\nManifest "
        f"`{args.manifest}`, test split unless the column says train. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}.\n\n" + _table(results)
    )
    Path(f"{args.out}.md").write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
