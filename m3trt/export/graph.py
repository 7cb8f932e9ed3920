"""The one-graph export contract (DESIGN §3.3): uint8 NHWC image (+ multi-hot tags) in;
preprocessing inside; ``scores``, ``quantity``, ``k``, ``topk`` out."""

from __future__ import annotations

import torch
from torch import nn

from m3trt.config import CheckpointConfig
from m3trt.export.fuse import FusedM3, fold_input_scale
from m3trt.model import M3Net, Preprocess

INPUT_NAMES = ("image", "tags")
OUTPUT_NAMES = ("scores", "quantity", "k", "topk")
FALLBACK_K = 3  # labels per image for a model trained without the quantity head


class CenterPixels(nn.Module):
    """uint8 NHWC -> float NCHW minus 255 * mean: what is left of the preprocessing once the
    1/(255 * std) scale lives in the stem conv.

    The mean is subtracted before the conv so its zero padding still means "the mean colour",
    exactly as in training. Transposing the uint8 tensor first moves 4x fewer bytes.
    """

    def __init__(self, mean: tuple[float, ...]) -> None:
        super().__init__()
        shift = torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(torch.float32) - self.shift


class AnnotationGraph(nn.Module):
    """Preprocess -> M3 (fused or not) -> sigmoid scores, q, k, top-K.

    k is ``metrics.decide_k``: with the checkpoint's decision threshold t, the number of scores
    >= t (at most K_max, possibly 0); without one (older checkpoints), clamp(round(q), 1, K_max)
    with rounding floor(q + 0.5), as ``metrics.decode_quantity``. Without a quantity head q (and,
    without a threshold, k) is the constant min(3, K_max).
    """

    def __init__(
        self, model: M3Net | FusedM3, config: CheckpointConfig, preprocess: nn.Module | None = None
    ) -> None:
        super().__init__()
        pre = config.preprocessing
        self.preprocess = preprocess if preprocess is not None else Preprocess(pre.mean, pre.std)
        self.model = model
        self.k_max = config.model.k_max
        self.uses_tags = config.model.use_tags and config.model.num_tags > 0
        self.threshold = config.model.decision_threshold

    def forward(self, image: torch.Tensor, tags: torch.Tensor | None = None):
        logits, q = self.model(self.preprocess(image), tags if self.uses_tags else None)
        scores = torch.sigmoid(logits)
        if q is None:
            q = torch.full_like(scores[:, 0], float(min(FALLBACK_K, self.k_max)))
        if self.threshold is None:
            k = torch.clamp(torch.floor(q + 0.5), 1, self.k_max).to(torch.int32)
        else:
            # Counted in float so that the last op is a real float -> int32 Cast, as in the
            # round(q) branch: an int -> int32 Cast is a no-op that OpenVINO drops, and the graph
            # output's name ("k") goes with it.
            above = (scores >= self.threshold).to(scores.dtype).sum(dim=1)
            k = torch.clamp(above, max=float(self.k_max)).to(torch.int32)
        topk = torch.topk(scores, self.k_max, dim=1, largest=True, sorted=True).indices
        return scores, q, k, topk.to(torch.int32)


def build_graph(model: M3Net, config: CheckpointConfig, *, fused: bool) -> AnnotationGraph:
    """The export graph; ``fused`` also folds the input scale into the stem conv (one Mul fewer
    over every pixel: 8% of the INT8 ResNet-18's time before this fold)."""
    if not fused:
        return AnnotationGraph(model.eval(), config).eval()
    body = FusedM3(model)
    pre = config.preprocessing
    scale = torch.tensor([1.0 / (255.0 * s) for s in pre.std])
    fold_input_scale(body.body.backbone.conv1, scale)
    return AnnotationGraph(body, config, CenterPixels(pre.mean)).eval()


def example_inputs(config: CheckpointConfig, batch: int = 2) -> tuple[torch.Tensor, ...]:
    size = config.preprocessing.image_size
    image = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if config.model.use_tags and config.model.num_tags > 0:
        return image, torch.zeros(batch, config.model.num_tags)
    return (image,)
