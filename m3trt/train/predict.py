"""Running a PyTorch M3 model over a record set: the scores and quantities that metrics need."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from m3trt.config import CheckpointConfig
from m3trt.data.batches import RecordSet
from m3trt.model import M3Net, Preprocess


def preprocess_for(config: CheckpointConfig) -> Preprocess:
    return Preprocess(config.preprocessing.mean, config.preprocessing.std)


@torch.inference_mode()
def predict(
    model: M3Net,
    preprocess: Preprocess,
    data: RecordSet,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sigmoid scores [N, C], raw quantities [N] (None without a quantity head) and the row
    indices of ``data`` they belong to (images that failed to decode are absent)."""
    was_training = model.training
    model.eval()
    scores, quantities, rows = [], [], []
    try:
        for batch in data.batches(batch_size):
            logits, q = model(
                preprocess(torch.from_numpy(batch.images)), torch.from_numpy(batch.tags)
            )
            scores.append(torch.sigmoid(logits).numpy())
            if q is not None:
                quantities.append(q.numpy())
            rows.append(batch.indices)
            if on_batch:
                on_batch(len(batch.indices))
    finally:
        model.train(was_training)
    if not scores:
        c = model.config.num_labels
        return np.zeros((0, c), np.float32), None, np.zeros(0, np.int64)
    q_all = np.concatenate(quantities) if quantities else None
    return np.concatenate(scores), q_all, np.concatenate(rows)


def torch_runner(checkpoint, threads: int | None = None) -> Callable:
    """PyTorch eager FP32 as a benchmark reference: ``run(uint8 images, multi-hot tags)``
    returning the graph's outputs (scores, quantity, k, topk) as numpy arrays."""
    import os
    from pathlib import Path

    from m3trt import metrics
    from m3trt.train.checkpoint import load_checkpoint

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model, config = load_checkpoint(Path(checkpoint))
    model.eval()
    pre = preprocess_for(config)
    k_max = config.model.k_max
    threshold = config.model.decision_threshold
    uses_tags = config.model.use_tags and config.model.num_tags > 0

    @torch.inference_mode()
    def run(images: np.ndarray, tags: np.ndarray | None) -> dict[str, np.ndarray]:
        t = torch.from_numpy(tags) if uses_tags and tags is not None else None
        logits, q = model(pre(torch.from_numpy(images)), t)
        scores = torch.sigmoid(logits)
        topk = torch.topk(scores, k_max, dim=1).indices.to(torch.int32).numpy()
        quantity = q.numpy() if q is not None else np.full(len(images), min(3, k_max), np.float32)
        k = metrics.decide_k(scores.numpy(), quantity, k_max, threshold).astype(np.int32)
        return {"scores": scores.numpy(), "quantity": quantity, "k": k, "topk": topk}

    return run


def torch_predictor(model: M3Net, config: CheckpointConfig):
    """The checkpoint as a predictor for ``m3trt.evaluation``: the graph's four outputs computed
    in PyTorch, so checkpoints and bundles are scored by the same code."""
    from m3trt import metrics
    from m3trt.evaluation import Outputs

    model.eval()
    pre = preprocess_for(config)
    k_max = config.model.k_max
    threshold = config.model.decision_threshold

    @torch.inference_mode()
    def predict_batch(images: np.ndarray, tags: np.ndarray) -> Outputs:
        logits, q = model(pre(torch.from_numpy(images)), torch.from_numpy(tags))
        scores = torch.sigmoid(logits)
        topk = torch.topk(scores, k_max, dim=1).indices.to(torch.int32).numpy()
        quantity = q.numpy() if q is not None else np.full(len(images), min(3, k_max), np.float32)
        k = metrics.decide_k(scores.numpy(), quantity, k_max, threshold).astype(np.int32)
        return Outputs(scores.numpy(), quantity, k, topk)

    return predict_batch
