"""One evaluator for checkpoints and bundles: manifest records stream through any predictor in
batches (decoding prefetched in threads, never the whole split in memory), and the outputs are
scored in every decoding mode. Only per-image outputs are kept ([N, C] scores): memory grows with
N x C floats, not with N x S x S x 3 pixels. numpy only: the bundle path never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt import metrics
from m3trt.data.batches import RecordSet
from m3trt.data.manifest import read_manifest, repeated_images
from m3trt.data.vocab import Vocab
from m3trt.errors import InputError
from m3trt.runtime.model_io import OUTPUT_NAMES, make_feeds


@dataclass
class Outputs:
    """The graph's four outputs for N images (DESIGN §3.3)."""

    scores: np.ndarray
    quantity: np.ndarray
    k: np.ndarray
    topk: np.ndarray

    def label_sets(self) -> np.ndarray:
        """Boolean [N, C] annotation: topk[:k] per image."""
        mask = np.zeros_like(self.scores, dtype=bool)
        for b, (k, top) in enumerate(zip(self.k, self.topk, strict=True)):
            mask[b, top[: int(k)]] = True
        return mask

    @classmethod
    def concatenate(cls, parts: list[Outputs], num_labels: int, k_max: int) -> Outputs:
        if not parts:
            return cls(
                np.zeros((0, num_labels), np.float32),
                np.zeros(0, np.float32),
                np.zeros(0, np.int32),
                np.zeros((0, k_max), np.int32),
            )
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in OUTPUT_NAMES))


# A predictor maps one batch (uint8 images [B, S, S, 3], float32 multi-hot tags [B, T]) to Outputs.
Predictor = Callable[[np.ndarray, np.ndarray], Outputs]


def engine_predictor(engine: Any) -> Predictor:
    """An ``Engine`` as a predictor: the feed dict built from the engine's own inputs."""

    def predict(images: np.ndarray, tags: np.ndarray) -> Outputs:
        out = engine.run(make_feeds(images, tags, engine.input_names))
        return Outputs(*(out[name] for name in OUTPUT_NAMES))

    return predict


def run_outputs(
    engine: Any,
    batches: Any,
    on_batch: Callable[[int], None] = lambda _n: None,
) -> Outputs:
    """All outputs of ``engine`` over ``batches`` of (images, tags) (e.g. ``ImageSet.batches``)."""
    predict = engine_predictor(engine)
    parts = []
    for images, tags in batches:
        parts.append(predict(images, tags))
        on_batch(len(images))
    dims = {spec.name: spec.shape[-1] for spec in engine.outputs}
    num_labels, k_max = (d if isinstance(d, int) else 0 for d in (dims["scores"], dims["topk"]))
    return Outputs.concatenate(parts, num_labels, k_max)


@dataclass
class LabelledSplit:
    """The labelled records of one split, ready to stream, and what was left out."""

    data: RecordSet
    n_unlabelled: int
    note: str | None = None  # records that repeat an image (repeated_images)


def labelled_split(
    manifest_path: str | Path,
    split: str | None,
    label_names: list[str],
    tag_vocab: list[str],
    image_size: int,
) -> LabelledSplit:
    """Records of ``split`` (``None``: all) that have labels, streamed (no image cache).
    Labels the model does not know are an error; so is an empty split."""
    manifest = read_manifest(manifest_path)
    unknown = sorted(set(manifest.label_names) - set(label_names))
    if unknown:
        raise InputError(f"{manifest.path}: labels unknown to the model: {', '.join(unknown[:5])}")
    records = manifest.split(split)
    if split is not None and not records:
        found = ", ".join(f"{k} ({v})" for k, v in manifest.splits().items())
        raise InputError(f"{manifest.path}: no records in split {split!r} (found: {found})")
    labelled = [r for r in records if r.labels]
    if not labelled:
        where = f"split {split!r}" if split else "the manifest"
        raise InputError(f"{manifest.path}: no labelled images to evaluate in {where}")
    data = RecordSet(labelled, Vocab(label_names), Vocab(tag_vocab), image_size, cache=False)
    return LabelledSplit(data, len(records) - len(labelled), repeated_images(manifest))


def stream_predictions(
    data: RecordSet,
    predictors: Mapping[str, Predictor],
    *,
    batch_size: int,
    num_labels: int,
    k_max: int,
    on_batch: Callable[[int], None] = lambda _n: None,
) -> tuple[dict[str, Outputs], np.ndarray]:
    """Every predictor's outputs on the same decoded batches (each image decoded once), and the
    ground truth [N, C] of the images that decoded."""
    parts: dict[str, list[Outputs]] = {name: [] for name in predictors}
    labels = []
    for batch in data.batches(batch_size):
        for name, predict in predictors.items():
            parts[name].append(predict(batch.images, batch.tags))
        labels.append(batch.labels > 0)
        on_batch(len(batch.indices))
    truth = np.concatenate(labels) if labels else np.zeros((0, num_labels), bool)
    outputs = {n: Outputs.concatenate(p, num_labels, k_max) for n, p in parts.items()}
    return outputs, truth


def score(
    labels: np.ndarray, outputs: Outputs, *, quantity_head: bool, threshold: float
) -> dict[str, Any]:
    """The metric table of every decoding mode (``metrics.evaluate``)."""
    k = outputs.k if quantity_head else None
    q = outputs.quantity if k is not None else None
    k_max = outputs.topk.shape[1] if outputs.topk.ndim == 2 else None
    return metrics.evaluate(
        labels,
        outputs.scores,
        k=k,
        q=q,
        threshold=threshold,
        # The quantity head's own count, whatever decision k came from (issue 15).
        quantity_k=metrics.decode_quantity(q, k_max) if q is not None and k_max else None,
    )


def compare_outputs(
    reference: Outputs, candidate: Outputs, labels: np.ndarray | None
) -> dict[str, Any]:
    """Agreement of a candidate with the FP32 reference, and O-F1 against labels if given."""
    ref_sets, new_sets = reference.label_sets(), candidate.label_sets()
    delta = np.abs(reference.scores - candidate.scores)
    report: dict[str, Any] = {
        "n_images": len(ref_sets),
        "label_set_agreement": float(np.mean(np.all(ref_sets == new_sets, axis=1)))
        if len(ref_sets)
        else 1.0,
        "k_agreement": float(np.mean(reference.k == candidate.k)) if len(ref_sets) else 1.0,
        "max_abs_score_delta": float(delta.max()) if delta.size else 0.0,
        "mean_abs_score_delta": float(delta.mean()) if delta.size else 0.0,
    }
    if labels is not None and len(labels):
        of1_ref = metrics.label_metrics(labels, ref_sets)["OF1"]
        of1_new = metrics.label_metrics(labels, new_sets)["OF1"]
        report |= {"of1_reference": of1_ref, "of1": of1_new, "of1_drop": of1_ref - of1_new}
    return report
