"""Branch fusion in PyTorch, before export (DESIGN §3.3).

- BatchNorm folded into the conv or linear layer before it (inference-time BN is an affine map).
- The classification head and the quantity head's first layer read the same joint feature: they
  become one GEMM whose output is split.
- Training-only parts (dropout, tag drop-out) vanish because the fused model is inference-only.

Doing this in torch keeps every pass testable against the unfused model with plain tensors.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from m3trt.model import M3Net


@torch.no_grad()
def fold_bn(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """A copy of ``layer`` with ``bn`` (in eval mode) folded into its weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    fused = copy.deepcopy(layer)
    fused.weight.copy_(layer.weight * scale.view(shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def fold_input_scale(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """Fold a per-input-channel scale into ``conv`` in place: conv(x * s) == conv'(x).

    Exact with zero padding, because a padded zero scales to zero.
    """
    conv.weight.mul_(scale.view(1, -1, 1, 1))


def _fold_named_pairs(module: nn.Module) -> int:
    """ResNet stems and blocks name their pairs ``conv{i}``/``bn{i}``."""
    folded = 0
    for i in (1, 2, 3):
        conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f"conv{i}", fold_bn(conv, bn))
            setattr(module, f"bn{i}", nn.Identity())
            folded += 1
    return folded


def _fold_sequential(seq: nn.Sequential) -> int:
    """Adjacent (conv|linear, bn) pairs inside a Sequential."""
    folded = 0
    names = list(seq._modules)
    for a, b in itertools.pairwise(names):
        layer, bn = seq._modules[a], seq._modules[b]
        pair_ok = (isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or (
            isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d)
        )
        if pair_ok:
            seq._modules[a] = fold_bn(layer, bn)
            seq._modules[b] = nn.Identity()
            folded += 1
    return folded


def fold_all_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm of an M3 model in place; returns how many were folded."""
    folded = 0
    for module in list(model.modules()):
        folded += _fold_named_pairs(module)
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
    remaining = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    if remaining:
        raise RuntimeError(f"{remaining} BatchNorm layers could not be folded")
    return folded


class MergedHeads(nn.Module):
    """classifier(x) and quantity.fc1(x) as one GEMM: [C + H] outputs, split afterwards."""

    def __init__(self, classifier: nn.Linear, quantity_fc1: nn.Linear | None) -> None:
        super().__init__()
        self.num_labels = classifier.out_features
        layers = [classifier] + ([quantity_fc1] if quantity_fc1 is not None else [])
        self.merged = len(layers) - 1  # GEMMs this one replaces, beyond itself
        self.gemm = nn.Linear(classifier.in_features, sum(layer.out_features for layer in layers))
        with torch.no_grad():
            self.gemm.weight.copy_(torch.cat([layer.weight for layer in layers]))
            self.gemm.bias.copy_(torch.cat([layer.bias for layer in layers]))

    def forward(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.gemm(joint)
        return out[:, : self.num_labels], out[:, self.num_labels :]


class FusedM3(nn.Module):
    """Inference-only M3: folded BatchNorm, merged heads; same outputs as ``M3Net.eval()``."""

    def __init__(self, model: M3Net) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.config = model.config
        self.bn_folded = fold_all_batchnorm(model)
        self.body = model
        qty = model.quantity
        self.heads = MergedHeads(model.classifier, qty.fc1 if qty is not None else None)
        self.k_max = qty.k_max if qty is not None else None
        self.quantity_fc2 = qty.fc2 if qty is not None else None
        # The original heads now live inside the merged GEMM.
        model.classifier = nn.Identity()
        model.quantity = None

    def forward(
        self, images: torch.Tensor, tags: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        joint, seen = self.body.encode(images, tags)
        logits, hidden = self.heads(joint)
        skip = self.body.skip_logits(seen)  # the direct tag -> label path, when the model has it
        if skip is not None:
            logits = logits + skip
        if self.quantity_fc2 is None:
            return logits, None
        z = self.quantity_fc2(torch.relu(hidden)).squeeze(1)
        return logits, 1.0 + (self.k_max - 1) * torch.sigmoid(z)
