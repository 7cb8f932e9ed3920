"""The M3 network (DESIGN §2): ResNet main branch, progressive multi-scale fusion branch, tag MLP,
a multi-label classification head and a label-quantity head."""

from __future__ import annotations

import torch
from torch import nn

from m3trt.config import ModelConfig
from m3trt.model.resnet import ResNet


class FusionBlock(nn.Sequential):
    """FB_s: carries the fused feature down one scale and widens it to the next stage's width."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class FusionBranch(nn.Module):
    """Progressive fusion: f1 = stem, f_{s+1} = FB_s(f_s) + stage_s; returns f5.

    Fine, early features reach the pooled visual feature through FB_1..FB_4 instead of only through
    the deep stages, which is what lets small objects survive to the classifier.
    """

    def __init__(
        self, stem_channels: int, stage_channels: tuple[int, ...], strides: tuple[int, ...]
    ):
        super().__init__()
        cins = (stem_channels, *stage_channels[:-1])
        self.blocks = nn.ModuleList(
            FusionBlock(cin, cout, stride)
            for cin, cout, stride in zip(cins, stage_channels, strides, strict=True)
        )

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        fused = taps[0]
        for block, stage in zip(self.blocks, taps[1:], strict=True):
            fused = block(fused) + stage
        return fused


class VisualHead(nn.Sequential):
    """Global average pool -> Linear -> BN -> ReLU: the D_v-wide visual feature."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(cin, dim),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
        )


class TagBranch(nn.Module):
    """MLP over multi-hot user tags; in training all tags of a sample are zeroed with probability
    ``drop_all`` so the model still annotates images that come without tags."""

    def __init__(self, num_tags: int, hidden: int, dropout: float, drop_all: float) -> None:
        super().__init__()
        self.drop_all = drop_all
        self.mlp = nn.Sequential(
            nn.Linear(num_tags, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )

    def drop(self, tags: torch.Tensor) -> torch.Tensor:
        """The whole-sample drop-out (training only): the tags the rest of the model sees."""
        if self.training and self.drop_all > 0:
            keep = torch.rand(tags.shape[0], 1, device=tags.device) >= self.drop_all
            tags = tags * keep.to(tags.dtype)
        return tags

    def forward(self, tags: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.drop(tags))


class QuantityHead(nn.Module):
    """Predicts how many labels an image has: q = 1 + (K_max - 1) * sigmoid(z), in [1, K_max]."""

    def __init__(self, cin: int, hidden: int, dropout: float, k_max: int) -> None:
        super().__init__()
        self.k_max = k_max
        self.fc1 = nn.Linear(cin, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, joint: torch.Tensor) -> torch.Tensor:
        z = self.fc2(self.dropout(self.relu(self.fc1(joint)))).squeeze(1)
        return 1.0 + (self.k_max - 1) * torch.sigmoid(z)


class M3Net(nn.Module):
    """``forward(images, tags) -> (logits [B, C], quantity [B] or None)``.

    ``images`` are normalised float NCHW; the exported graph adds the uint8 preprocessing in front.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNet(config.backbone)
        channels = self.backbone.stage_channels
        self.fusion = (
            FusionBranch(self.backbone.stem_channels, channels, self.backbone.stage_strides)
            if config.multi_scale
            else None
        )
        self.visual = VisualHead(channels[-1], config.visual_width)
        joint = config.visual_width
        self.tags = None
        if config.use_tags and config.num_tags > 0:
            self.tags = TagBranch(
                config.num_tags, config.tag_hidden, config.tag_dropout, config.tag_drop_all
            )
            joint += config.tag_hidden
        self.classifier = nn.Linear(joint, config.num_labels)
        # Direct tag -> label evidence (issue 15): tag words name labels, often by synonyms, and
        # with few images per synonym the MLP learns that sparse near-identity map slowly. A
        # linear path learns it in a few steps (it trains with a larger learning rate, see
        # TrainOptions.tag_skip_lr_mult). Zero-initialised: it starts as the plain M3 head.
        self.tag_skip = None
        if config.tag_skip and self.tags is not None:
            self.tag_skip = nn.Linear(config.num_tags, config.num_labels, bias=False)
            nn.init.zeros_(self.tag_skip.weight)
        self.quantity = (
            QuantityHead(joint, config.quantity_hidden, config.quantity_dropout, config.k_max)
            if config.quantity_head
            else None
        )

    def encode(
        self, images: torch.Tensor, tags: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The joint feature concat(visual, textual), and the tags the model saw (after the
        training-time whole-sample drop-out; None without a tag branch)."""
        taps = self.backbone(images)
        fused = self.fusion(taps) if self.fusion is not None else taps[-1]
        parts = [self.visual(fused)]
        if self.tags is None:
            return parts[0], None
        if tags is None:
            tags = images.new_zeros(images.shape[0], self.config.num_tags)
        tags = self.tags.drop(tags)
        parts.append(self.tags.mlp(tags))
        return torch.cat(parts, dim=1), tags

    def features(self, images: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        """The joint feature: concat(visual, textual)."""
        return self.encode(images, tags)[0]

    def skip_logits(self, tags: torch.Tensor | None) -> torch.Tensor | None:
        """The direct tag -> label term added to the classifier's logits (None when absent)."""
        if self.tag_skip is None or tags is None:
            return None
        return self.tag_skip(tags)

    def logits(self, joint: torch.Tensor, tags: torch.Tensor | None) -> torch.Tensor:
        """Classification logits from the joint feature and the tags ``encode`` returned."""
        logits = self.classifier(joint)
        skip = self.skip_logits(tags)
        return logits if skip is None else logits + skip

    def forward(
        self, images: torch.Tensor, tags: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        joint, seen = self.encode(images, tags)
        logits = self.logits(joint, seen)
        quantity = self.quantity(joint) if self.quantity is not None else None
        return logits, quantity


class Preprocess(nn.Module):
    """uint8 NHWC RGB -> normalised float NCHW; the same arithmetic in training and in the graph."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale - self.shift
