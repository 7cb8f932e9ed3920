"""Scoring a checkpoint on a manifest split: the metric table of every decoding mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from m3trt import metrics
from m3trt.data.batches import RecordSet
from m3trt.data.manifest import read_manifest
from m3trt.data.vocab import Vocab
from m3trt.errors import InputError
from m3trt.progress import SILENT, Reporter
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.predict import predict, preprocess_for


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest_path: str | Path,
    *,
    split: str | None = "test",
    batch_size: int = 32,
    threshold: float = 0.5,
    reporter: Reporter = SILENT,
) -> dict[str, Any]:
    """Metrics of a checkpoint on one split (``None``: all records). Unlabelled images are
    skipped and counted; labels the checkpoint does not know are an error."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, config = load_checkpoint(checkpoint)
    manifest = read_manifest(manifest_path)
    unknown = sorted(set(manifest.label_names) - set(config.label_names))
    if unknown:
        raise InputError(
            f"{manifest.path}: labels unknown to the checkpoint: {', '.join(unknown[:5])}"
        )
    records = manifest.split(split)
    if split is not None and not records:
        found = ", ".join(f"{k} ({v})" for k, v in manifest.splits().items())
        raise InputError(f"{manifest.path}: no records in split {split!r} (found: {found})")
    labelled = [r for r in records if r.labels]
    if not labelled:
        raise InputError(f"{manifest.path}: no labelled records to evaluate in split {split!r}")
    data = RecordSet(
        labelled,
        Vocab(config.label_names),
        Vocab(config.tag_vocab),
        config.preprocessing.image_size,
        cache=False,
    )
    with reporter.task("evaluate", len(data)) as bar:
        scores, q, rows = predict(
            model, preprocess_for(config), data, batch_size, on_batch=bar.advance
        )
    k = metrics.decode_quantity(q, config.model.k_max) if q is not None else None
    result = metrics.evaluate(data.labels[rows] > 0, scores, k=k, q=q, threshold=threshold)
    result["n_unlabelled_skipped"] = len(records) - len(labelled)
    result["n_failed_images"] = len(data.failed)
    result["failed_images"] = [msg for _, msg in data.failed[:20]]
    result["split"] = split
    return result
