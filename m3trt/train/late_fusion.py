"""Late fusion fitted on held-out data (issue 15): how much the model trusts the image, the tags
and the joint model is decided on the validation split, not on the training split.

Why. A joint classifier trained on a small training split learns how far to trust each
modality from images it has fitted; on new images that trust is off, and it vetoes labels the
tags name (Wang et al., "What makes training multi-modal classification networks hard?", CVPR
2020: the joint model overfits faster than its unimodal parts; the remedy there, too, weighs the
modalities by how they generalise on held-out data). And a tag word that names a label is seen
only a few times in a small training split (synonyms above all), too few for gradient descent to
give it the weight it deserves. Measured in the README's ablation.

What. After training (``fit_late_fusion``, the last step of ``m3trt train`` before the decision
threshold), from the **training** split:

1. a **tag lexicon**: each tag word is linked to the one label it co-occurs with most, when that
   label is present on at least ``LEXICON_MIN_SHARE`` of the word's training images (counts
   shrunk towards the label's base rate by ``LEXICON_PRIOR`` pseudo-images); the feature is
   the number of an image's tags linked to each label. This is the structural prior "a tag that
   names something names one label", learned from co-occurrence, no word list;
2. two unimodal logistic regressions: on the multi-hot tags alone and on the (frozen) visual
   feature alone, each with an L2 penalty chosen on the validation split from a small grid;

then, on the **validation** split, five scalars are fitted by binary cross-entropy: the weights
of the tags regression, the visual regression, the trained joint model's logits and the lexicon,
and a shared offset (each regression enters as its log-odds relative to the label prior, as in a
weighted naive-Bayes combination). The trained model alone, (0, 0, 1, 0, 0), is the starting
point, so on val the fit can only improve on it.

Everything is linear in the visual feature, the tag MLP feature and the tags, so it is folded
into weights the exported graph already has: the classifier's weight and bias and the direct
tag -> label path (``tag_skip``). Same layers, same inputs and outputs (DESIGN §3.3).

Needs the direct tag -> label path (``--tag-skip``, the default); without it nothing is done.
The quantity head is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from m3trt.config import CheckpointConfig
from m3trt.data.batches import RecordSet
from m3trt.model import M3Net
from m3trt.train.predict import preprocess_for

#: L2 penalties (on the summed log-loss) tried for each unimodal classifier; chosen on val.
TAG_L2_GRID = (0.3, 1.0, 3.0)
VISUAL_L2_GRID = (1.0, 10.0, 100.0)
#: The lexicon: pseudo-images pulling a word's label share towards the label's base rate, and the
#: share above which the word is taken to name its most frequent label.
LEXICON_PRIOR = 2.0
LEXICON_MIN_SHARE = 0.5


@dataclass
class Parts:
    """What the fusion reads from one split: visual features, tags, joint logits, labels."""

    visual: torch.Tensor  # float64 [N, D_v]
    tags: torch.Tensor  # float64 [N, T]
    logits: torch.Tensor  # float64 [N, C], the trained model's
    labels: torch.Tensor  # float64 [N, C] in {0, 1}


@torch.no_grad()
def collect(model: M3Net, config: CheckpointConfig, data: RecordSet) -> Parts:
    """Runs the model (eval mode, no augmentation) over ``data``."""
    was_training = model.training
    model.eval()
    preprocess = preprocess_for(config)
    width = config.model.visual_width
    visual, tags, logits, labels = [], [], [], []
    try:
        for batch in data.batches(64):
            tag_batch = torch.from_numpy(batch.tags)
            joint, seen = model.encode(preprocess(torch.from_numpy(batch.images)), tag_batch)
            visual.append(joint[:, :width].double())
            logits.append(model.logits(joint, seen).double())
            tags.append(tag_batch.double())
            labels.append(torch.from_numpy(batch.labels).double())
    finally:
        model.train(was_training)
    return Parts(*(torch.cat(x) for x in (visual, tags, logits, labels)))


def _bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


def _minimise(params: list[torch.Tensor], loss_fn, max_iter: int = 300) -> None:
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, l2: float, prior_logit: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A multi-label logistic regression ``x @ w + b`` (float64): mean log-loss plus
    ``0.5 * l2 / n * |w|^2``; the bias starts at the label prior and is not penalised."""
    n = max(1, len(x))
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
    b = prior_logit.clone().requires_grad_(True)

    def loss() -> torch.Tensor:
        return _bce(x @ w + b, y) * y.shape[1] + 0.5 * l2 / n * (w * w).sum()

    _minimise([w, b], loss)
    return w.detach(), b.detach()


def fit_lexicon(tags: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[T, C] 0/1: word t names label c (at most one label per word), from co-occurrence."""
    seen = tags.sum(0)
    rate = labels.mean(0)
    share = (tags.T @ labels + LEXICON_PRIOR * rate) / (seen[:, None] + LEXICON_PRIOR)
    best = share.argmax(1)
    lexicon = torch.zeros_like(share)
    rows = torch.arange(len(share))
    keep = (share[rows, best] >= LEXICON_MIN_SHARE) & (seen >= 1)
    lexicon[rows[keep], best[keep]] = 1.0
    return lexicon


def _fuse(features: list[torch.Tensor], prior: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    out = prior + s[-1]
    for weight, feature in zip(s[:-1], features, strict=True):
        out = out + weight * feature
    return out


def fit_scalars(
    features: list[torch.Tensor], start: list[float], prior: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """One weight per feature and an offset, by BCE on held-out data, from ``start`` (the
    trained model alone: weight 1 on its logits, 0 elsewhere)."""
    s = torch.tensor([*start, 0.0], dtype=torch.float64, requires_grad=True)
    _minimise([s], lambda: _bce(_fuse(features, prior, s), y), max_iter=200)
    s = s.detach()
    return s, float(_bce(_fuse(features, prior, s), y))


def fit_late_fusion(model: M3Net, config: CheckpointConfig, train: RecordSet, val: RecordSet):
    """Fits the fusion and folds it into ``model``'s weights in place; returns what was fitted
    (for ``config.training["late_fusion"]``), or None when the model has no tag -> label path."""
    if model.tag_skip is None or model.tags is None or len(train) == 0 or len(val) == 0:
        return None
    torch.manual_seed(0)  # LBFGS is deterministic; keep any future randomness reproducible
    tr, va = collect(model, config, train), collect(model, config, val)
    rate = tr.labels.mean(0).clamp(1e-3, 1 - 1e-3)
    prior = torch.log(rate / (1 - rate))
    before = float(_bce(va.logits, va.labels))

    def unimodal(x_tr: torch.Tensor, x_va: torch.Tensor, grid: tuple[float, ...]):
        best = None
        for l2 in grid:
            w, b = fit_logistic(x_tr, tr.labels, l2, prior)
            loss = float(_bce(x_va @ w + b, va.labels))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, l2, w, b)
        assert best is not None
        return best

    t_loss, t_l2, wt, bt = unimodal(tr.tags, va.tags, TAG_L2_GRID)
    v_loss, v_l2, wv, bv = unimodal(tr.visual, va.visual, VISUAL_L2_GRID)
    lexicon = fit_lexicon(tr.tags, tr.labels)
    features = [
        va.tags @ wt + bt - prior,
        va.visual @ wv + bv - prior,
        va.logits,
        va.tags @ lexicon,
    ]
    s, after = fit_scalars(features, [0.0, 0.0, 1.0, 0.0], prior, va.labels)
    _fold(model, s, wt, bt, wv, bv, lexicon, prior)
    a_t, a_v, a_z, a_l, offset = (float(x) for x in s)
    words = model.config.num_tags
    return {
        "tags_weight": a_t,
        "visual_weight": a_v,
        "model_weight": a_z,
        "lexicon_weight": a_l,
        "offset": offset,
        "tags_l2": t_l2,
        "visual_l2": v_l2,
        "lexicon": {
            config.tag_vocab[i]: config.label_names[int(lexicon[i].argmax())]
            for i in range(words)
            if lexicon[i].any()
        },
        "val_bce_tags_only": t_loss,
        "val_bce_visual_only": v_loss,
        "val_bce_before": before,
        "val_bce_after": after,
    }


@torch.no_grad()
def _fold(
    model: M3Net,
    s: torch.Tensor,
    wt: torch.Tensor,
    bt: torch.Tensor,
    wv: torch.Tensor,
    bv: torch.Tensor,
    lexicon: torch.Tensor,
    prior: torch.Tensor,
) -> None:
    """logits' = a_t (tags @ wt + bt - prior) + a_v (visual @ wv + bv - prior)
    + a_z (classifier(joint) + tag_skip(tags)) + a_l tags @ lexicon + prior + offset, written
    into the classifier and the tag -> label path."""
    assert model.tag_skip is not None
    a_t, a_v, a_z, a_l, offset = s
    cls, skip = model.classifier, model.tag_skip
    width = model.config.visual_width
    weight = a_z * cls.weight.double()
    weight[:, :width] += a_v * wv.T
    bias = a_z * cls.bias.double() + a_t * (bt - prior) + a_v * (bv - prior) + prior + offset
    cls.weight.copy_(weight.to(cls.weight.dtype))
    cls.bias.copy_(bias.to(cls.bias.dtype))
    skip_weight = a_z * skip.weight.double() + a_t * wt.T + a_l * lexicon.T
    skip.weight.copy_(skip_weight.to(skip.weight.dtype))


def describe(fitted: dict[str, Any]) -> str:
    return (
        f"late fusion fitted on val: tags {fitted['tags_weight']:.2f}, visual "
        f"{fitted['visual_weight']:.2f}, model {fitted['model_weight']:.2f}, lexicon "
        f"{fitted['lexicon_weight']:.2f} ({len(fitted['lexicon'])} words); val BCE "
        f"{fitted['val_bce_before']:.4f} -> {fitted['val_bce_after']:.4f}"
    )
