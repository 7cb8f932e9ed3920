"""The tags-only half of the ablation: what the user tags alone give on a manifest's test split.

Two baselines, written as ``eval.json``-shaped files beside the image models' results:

- ``tags-only-seed<k>.eval.json``: M3's own tag MLP (same layers as ``M3Net``'s tag branch, no
  whole-sample drop-out since there is no image to fall back on) with the classification and
  quantity heads, trained on the training split's tags with the same loss, best epoch by val mAP,
  decoded as ``m3trt train``'s checkpoints are (``--decision val``, the default: the labels
  scoring at least a threshold fitted on val; ``none``: the predicted k). Cheap: no images are
  decoded.
- ``tags-only-skip-seed<k>.eval.json``: the same with M3Net's direct tag -> label path
  (``--tag-skip``, the default of ``m3trt train``) beside the MLP.
- ``tags-rule.eval.json``: the rule "labels = the labels the tags name" (by name or synonym,
  ``m3trt.data.synth.tag_label``), so only meaningful on synthetic manifests; no ranking, no mAP.
- ``tags-lexicon.eval.json``: the same rule with the lexicon *learned* from the training split's
  co-occurrence, as ``m3trt train``'s late fusion learns it (``m3trt.train.late_fusion``); no
  ranking, no mAP.
- ``tags-fused.eval.json``: the late fusion of ``m3trt train`` without the image: a logistic
  regression on the tags and the learned lexicon, weighted on val, threshold fitted on val.

    .venv/bin/python benchmarks/ablation_tags_only.py DATA/manifest.jsonl OUT_DIR --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3trt import metrics
from m3trt.data.manifest import read_manifest
from m3trt.data.synth import tag_label
from m3trt.data.vocab import Vocab, build_tag_vocab
from m3trt.model.m3net import QuantityHead, TagBranch
from m3trt.train import late_fusion
from m3trt.train.loop import split_records


class TagsOnly(nn.Module):
    def __init__(
        self, num_tags: int, num_labels: int, hidden: int, k_max: int, skip: bool = False
    ) -> None:
        super().__init__()
        self.tags = TagBranch(num_tags, hidden, dropout=0.5, drop_all=0.0)
        self.classifier = nn.Linear(hidden, num_labels)
        self.quantity = QuantityHead(hidden, 256, 0.1, k_max)
        # M3Net's direct tag -> label path (ModelConfig.tag_skip), zero-initialised.
        self.tag_skip = nn.Linear(num_tags, num_labels, bias=False) if skip else None
        if self.tag_skip is not None:
            nn.init.zeros_(self.tag_skip.weight)

    def forward(self, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.tags(tags)
        logits = self.classifier(feature)
        if self.tag_skip is not None:
            logits = logits + self.tag_skip(tags)
        return logits, self.quantity(feature)


def _predict(model: TagsOnly, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        logits, q = model(torch.from_numpy(tags))
    model.train()
    return torch.sigmoid(logits).numpy(), q.numpy()


def train_tags_only(
    manifest_path: Path,
    seed: int,
    epochs: int,
    hidden: int,
    lr: float,
    skip_lr_mult: float | None = None,
    scores_out: Path | None = None,
    decision: str = "val",
) -> dict[str, object]:
    """``skip_lr_mult``: with the direct tag -> label path, trained at this multiple of ``lr``
    (as ``m3trt train`` does); None: the tag MLP alone. ``decision``: ``val`` decides k as
    ``m3trt train`` does by default (a score threshold fitted on val), ``none`` by round(q)."""
    manifest = read_manifest(manifest_path)
    train, val, _ = split_records(manifest, 0.1, seed)
    test = [r for r in manifest.split("test") if r.labels]
    labels = Vocab(manifest.label_names)
    tags = Vocab(build_tag_vocab(r.tags for r in train))
    splits = {"train": train, "val": val, "test": test}
    x = {name: tags.encode_many(r.tags for r in rs) for name, rs in splits.items()}
    y = {name: labels.encode_many(r.labels for r in rs) for name, rs in splits.items()}
    k_max = int(y["train"].sum(1).max())
    torch.manual_seed(seed)
    model = TagsOnly(len(tags), len(labels), hidden, k_max, skip=skip_lr_mult is not None)
    rest = [p for name, p in model.named_parameters() if not name.startswith("tag_skip.")]
    groups = [{"params": rest}]
    if model.tag_skip is not None:
        groups.append({"params": list(model.tag_skip.parameters()), "lr": lr * skip_lr_mult})
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    best, best_state = -1.0, None
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for i in range(0, len(order) - 1, 32):
            idx = order[i : i + 32]
            if len(idx) < 2:
                continue
            logits, q = model(torch.from_numpy(x["train"][idx]))
            target = torch.from_numpy(y["train"][idx])
            loss = F.binary_cross_entropy_with_logits(logits, target)
            loss = loss + F.smooth_l1_loss(q, target.sum(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        scores, _ = _predict(model, x["val"])
        val_map, _ = metrics.mean_average_precision(y["val"] > 0, scores)
        if val_map > best:
            best, best_state = val_map, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    scores, q = _predict(model, x["test"])
    threshold = None
    if decision == "val":  # the decision `m3trt train` fits (metrics.decide_k)
        val_scores, _ = _predict(model, x["val"])
        threshold, _ = metrics.fit_decision_threshold(y["val"] > 0, val_scores, k_max)
    k = metrics.decide_k(scores, q, k_max, threshold)
    if scores_out is not None:  # for benchmarks/ablation_decisions.py
        saved = {}
        for split in ("val", "test"):
            s, qs = _predict(model, x[split])
            saved |= {f"{split}_scores": s, f"{split}_k": metrics.decode_quantity(qs, k_max)}
            saved[f"{split}_y"] = y[split] > 0
        saved["k_max"] = np.array(k_max)
        np.savez(scores_out, **saved)
    result = metrics.evaluate(y["test"] > 0, scores, k=k, q=q)
    result["decision_threshold"] = threshold
    return result


def tags_rule(manifest_path: Path) -> dict[str, object]:
    manifest = read_manifest(manifest_path)
    test = [r for r in manifest.split("test") if r.labels]
    labels = Vocab(manifest.label_names)
    truth = labels.encode_many(r.labels for r in test) > 0
    named = labels.encode_many({tag_label(t) for t in r.tags} - {None} for r in test) > 0
    return {
        "n_images": len(test),
        "mAP": None,
        "modes": {"predicted_k": metrics.label_metrics(truth, named)},
    }


def _splits(manifest_path: Path):
    manifest = read_manifest(manifest_path)
    train, val, _ = split_records(manifest, 0.1, 0)
    test = [r for r in manifest.split("test") if r.labels]
    labels = Vocab(manifest.label_names)
    tags = Vocab(build_tag_vocab(r.tags for r in train))
    splits = {"train": train, "val": val, "test": test}
    x = {
        k: torch.from_numpy(tags.encode_many(r.tags for r in rs)).double()
        for k, rs in splits.items()
    }
    y = {
        k: torch.from_numpy(labels.encode_many(r.labels for r in rs)).double()
        for k, rs in splits.items()
    }
    return x, y


def tags_lexicon(manifest_path: Path) -> dict[str, object]:
    """The rule with the lexicon learned from the training split (``late_fusion.fit_lexicon``)."""
    x, y = _splits(manifest_path)
    lexicon = late_fusion.fit_lexicon(x["train"], y["train"])
    named = (x["test"] @ lexicon).numpy() > 0
    return {
        "n_images": len(named),
        "mAP": None,
        "lexicon_words": int(lexicon.sum()),
        "modes": {"predicted_k": metrics.label_metrics(y["test"].numpy() > 0, named)},
    }


def tags_fused(manifest_path: Path) -> dict[str, object]:
    """``m3trt train``'s late fusion with the tags alone: logistic regression (L2 chosen on val)
    and the learned lexicon, weighted on val by BCE; the threshold fitted on val."""
    x, y = _splits(manifest_path)
    rate = y["train"].mean(0).clamp(1e-3, 1 - 1e-3)
    prior = torch.log(rate / (1 - rate))
    best = None
    for l2 in late_fusion.TAG_L2_GRID:
        w, b = late_fusion.fit_logistic(x["train"], y["train"], l2, prior)
        loss = float(late_fusion._bce(x["val"] @ w + b, y["val"]))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, w, b)
    assert best is not None
    _, w, b = best
    lexicon = late_fusion.fit_lexicon(x["train"], y["train"])

    def features(split: str) -> list[torch.Tensor]:
        return [x[split] @ w + b - prior, x[split] @ lexicon]

    s, _ = late_fusion.fit_scalars(features("val"), [1.0, 0.0], prior, y["val"])
    k_max = int(y["train"].sum(1).max())
    val_scores = torch.sigmoid(late_fusion._fuse(features("val"), prior, s)).numpy()
    scores = torch.sigmoid(late_fusion._fuse(features("test"), prior, s)).numpy()
    threshold, _ = metrics.fit_decision_threshold(y["val"].numpy() > 0, val_scores, k_max)
    k = metrics.decide_k(scores, None, k_max, threshold)
    result = metrics.evaluate(y["test"].numpy() > 0, scores, k=k)
    result.pop("quantity")  # no quantity head: it would score the decided k
    result["decision_threshold"] = threshold
    result["fusion"] = [float(v) for v in s]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--decision", choices=["val", "none"], default="val")
    parser.add_argument(
        "--skip-lr-mult", type=float, default=50.0, help="as m3trt train --tag-skip-lr-mult"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name, mult in (("tags-only", None), ("tags-only-skip", args.skip_lr_mult)):
            result = train_tags_only(
                args.manifest,
                seed,
                args.epochs,
                args.hidden,
                args.lr,
                mult,
                scores_out=args.out / f"{name}-seed{seed}.scores.npz",
                decision=args.decision,
            )
            (args.out / f"{name}-seed{seed}.eval.json").write_text(json.dumps(result, indent=1))
            print(f"{name} seed {seed}: OF1 {100 * result['modes']['predicted_k']['OF1']:.1f}")
    for name, fn in (
        ("tags-rule", tags_rule),
        ("tags-lexicon", tags_lexicon),
        ("tags-fused", tags_fused),
    ):
        result = fn(args.manifest)
        (args.out / f"{name}.eval.json").write_text(json.dumps(result, indent=1))
        print(f"{name}: OF1 {100 * result['modes']['predicted_k']['OF1']:.1f}")


if __name__ == "__main__":
    main()
