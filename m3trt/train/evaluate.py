"""Scoring a checkpoint on a manifest split: the metric table of every decoding mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from m3trt.evaluation import labelled_split, score, stream_predictions
from m3trt.progress import SILENT, Reporter
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.predict import torch_predictor


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest_path: str | Path,
    *,
    split: str | None = "test",
    batch_size: int = 32,
    threshold: float = 0.5,
    reporter: Reporter = SILENT,
) -> dict[str, Any]:
    """Metrics of a checkpoint on one split (``None``: all records), through the evaluator that
    bundles use too. Unlabelled images are skipped and counted; labels the checkpoint does not
    know are an error."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, config = load_checkpoint(checkpoint)
    split_data = labelled_split(
        manifest_path,
        split,
        config.label_names,
        config.tag_vocab,
        config.preprocessing.image_size,
    )
    if split_data.note:
        reporter.log(split_data.note)
    predictors = {"checkpoint": torch_predictor(model, config)}
    with reporter.task("evaluate", len(split_data.data)) as bar:
        outputs, labels = stream_predictions(
            split_data.data,
            predictors,
            batch_size=batch_size,
            num_labels=len(config.label_names),
            k_max=config.model.k_max,
            on_batch=bar.advance,
        )
    result = score(
        labels,
        outputs["checkpoint"],
        quantity_head=config.model.quantity_head,
        threshold=threshold,
    )
    result["n_unlabelled_skipped"] = split_data.n_unlabelled
    result["n_failed_images"] = len(split_data.data.failed)
    result["failed_images"] = [msg for _, msg in split_data.data.failed[:20]]
    result["split"] = split
    return result
