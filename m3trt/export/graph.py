"""The one-graph export contract (DESIGN §3.3): uint8 NHWC image (+ multi-hot tags) in;
preprocessing inside; ``scores``, ``quantity``, ``k``, ``topk`` out."""

from __future__ import annotations

import torch
from torch import nn

from m3trt.config import CheckpointConfig
from m3trt.export.fuse import FusedM3
from m3trt.model import M3Net, Preprocess

INPUT_NAMES = ("image", "tags")
OUTPUT_NAMES = ("scores", "quantity", "k", "topk")
FALLBACK_K = 3  # labels per image for a model trained without the quantity head


class AnnotationGraph(nn.Module):
    """Preprocess -> M3 (fused or not) -> sigmoid scores, q, k = clamp(round(q), 1, K_max), top-K.

    Rounding is floor(q + 0.5), the same as ``metrics.decode_quantity``. Without a quantity head
    k is the constant min(3, K_max) and ``quantity`` reports it.
    """

    def __init__(self, model: M3Net | FusedM3, config: CheckpointConfig) -> None:
        super().__init__()
        pre = config.preprocessing
        self.preprocess = Preprocess(pre.mean, pre.std)
        self.model = model
        self.k_max = config.model.k_max
        self.uses_tags = config.model.use_tags and config.model.num_tags > 0

    def forward(self, image: torch.Tensor, tags: torch.Tensor | None = None):
        logits, q = self.model(self.preprocess(image), tags if self.uses_tags else None)
        scores = torch.sigmoid(logits)
        if q is None:
            q = torch.full_like(scores[:, 0], float(min(FALLBACK_K, self.k_max)))
        k = torch.clamp(torch.floor(q + 0.5), 1, self.k_max).to(torch.int32)
        topk = torch.topk(scores, self.k_max, dim=1, largest=True, sorted=True).indices
        return scores, q, k, topk.to(torch.int32)


def build_graph(model: M3Net, config: CheckpointConfig, *, fused: bool) -> AnnotationGraph:
    body: M3Net | FusedM3 = FusedM3(model) if fused else model.eval()
    return AnnotationGraph(body, config).eval()


def example_inputs(config: CheckpointConfig, batch: int = 2) -> tuple[torch.Tensor, ...]:
    size = config.preprocessing.image_size
    image = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if config.model.use_tags and config.model.num_tags > 0:
        return image, torch.zeros(batch, config.model.num_tags)
    return (image,)
