"""Keeping both modalities trained (issue 15): training-only parts of the M3 recipe.

A joint image + tag model tends to lean on the tag branch, which fits in a few steps, and to leave
the visual branch under-trained (modality imbalance; Wang et al., "What makes training multi-modal
classification networks hard?", CVPR 2020; Peng et al., "Balanced multimodal learning via
on-the-fly gradient modulation", CVPR 2022). The remedies offered here, all switched by
``TrainOptions`` (the README's ablation says which were measured and which one wins: the auxiliary
image-only head):

- **per-tag drop-out**: each present tag is removed with probability ``p``, on top of the
  model's whole-sample drop-out, so that training sees the incomplete tags users really give and
  a missing tag is not read as a missing label;
- **auxiliary unimodal heads**: a linear classifier on the visual feature alone (and optionally
  on the tag feature alone) with its own BCE loss, so the visual branch gets a full supervised
  signal whatever the tag branch does. They read slices of the joint feature, live outside
  ``M3Net`` and are never saved in the checkpoint, so the exported graph (DESIGN §3.3) is
  unchanged;
- **visual-first schedule**: tags zeroed for the first epochs, then joint training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3trt.model import M3Net


def drop_each_tag(tags: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each entry of a multi-hot tag batch independently with probability ``p``.

    Uses torch's global generator, which ``--resume`` restores, so runs stay reproducible."""
    if p <= 0:
        return tags
    keep = torch.rand(tags.shape, device=tags.device) >= p
    return tags * keep.to(tags.dtype)


class AuxHeads(nn.Module):
    """Training-only linear classifiers on the visual and/or the tag part of the joint feature."""

    def __init__(self, model: M3Net, visual: bool, tags: bool) -> None:
        super().__init__()
        cfg = model.config
        self.visual_width = cfg.visual_width
        # Without a tag branch the joint feature is the visual one: nothing to balance.
        has_tags = model.tags is not None
        self.visual = nn.Linear(cfg.visual_width, cfg.num_labels) if visual and has_tags else None
        self.tags = nn.Linear(cfg.tag_hidden, cfg.num_labels) if tags and has_tags else None

    def __bool__(self) -> bool:
        return self.visual is not None or self.tags is not None

    def losses(self, joint: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """BCE of each auxiliary head on its slice of the joint feature."""
        out: dict[str, torch.Tensor] = {}
        if self.visual is not None:
            logits = self.visual(joint[:, : self.visual_width])
            out["aux_visual"] = F.binary_cross_entropy_with_logits(logits, targets)
        if self.tags is not None:
            logits = self.tags(joint[:, self.visual_width :])
            out["aux_tags"] = F.binary_cross_entropy_with_logits(logits, targets)
        return out
