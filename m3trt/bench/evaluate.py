"""``m3trt eval BUNDLE MANIFEST``: the metric table of a bundle, and its agreement with the FP32
reference it was built from, with Polygraphy-style element-wise tolerances per output.

Images are decoded by the runtime's own code, exactly as ``m3trt infer`` decodes them, and stream
through the shared evaluator (``m3trt.evaluation``) that checkpoint evaluation uses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from m3trt.evaluation import (
    compare_outputs,
    engine_predictor,
    labelled_split,
    score,
    stream_predictions,
)
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import REFERENCE
from m3trt.runtime.engines import open_path

DEFAULT_ATOL = 1e-2
DEFAULT_RTOL = 1e-2
COMPARED = ("scores", "quantity")


def tolerance_check(
    reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
) -> dict[str, Any]:
    """Polygraphy's rule, element-wise: |candidate - reference| <= atol + rtol * |reference|."""
    delta = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    allowed = atol + rtol * np.abs(reference.astype(np.float64))
    bad = delta > allowed
    relative = delta / np.maximum(np.abs(reference.astype(np.float64)), 1e-12)
    return {
        "max_abs": float(delta.max()) if delta.size else 0.0,
        "mean_abs": float(delta.mean()) if delta.size else 0.0,
        "max_rel": float(relative.max()) if relative.size else 0.0,
        "mismatched": int(bad.sum()),
        "elements": int(bad.size),
        "pass": not bool(bad.any()),
    }


def evaluate_bundle(
    bundle_path: str | Path,
    manifest: str | Path,
    *,
    split: str | None = "test",
    batch_size: int = 32,
    threshold: float = 0.5,
    device: str = "cpu",
    engine: str = "auto",
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    reporter: Reporter = SILENT,
) -> dict[str, Any]:
    """Metrics of the bundle's engine on one split plus ``agreement`` with its FP32 reference.

    Images stream through both engines batch by batch (each decoded once): memory stays flat
    whatever the split's size."""
    annotator = Annotator.load(bundle_path, device=device, engine=engine)
    info = annotator.info
    split_data = labelled_split(manifest, split, info.label_names, info.tag_vocab, info.image_size)
    if split_data.note:
        reporter.log(split_data.note)
    data = split_data.data
    predictors = {"engine": engine_predictor(annotator.engine)}
    choice = annotator.choice
    same = (choice.artifact, choice.engine, choice.device) == (REFERENCE, "onnxruntime", "cpu")
    reference = None
    if not same:
        reference = open_path(annotator.bundle.artifact_path(REFERENCE), engine="onnxruntime")
        predictors["reference"] = engine_predictor(reference)
    try:
        with reporter.task("evaluate", len(data)) as bar:
            outputs, labels = stream_predictions(
                data,
                predictors,
                batch_size=batch_size,
                num_labels=info.num_labels,
                k_max=info.k_max,
                on_batch=bar.advance,
            )
    finally:
        if reference is not None:
            reference.close()
        annotator.close()
    out = outputs["engine"]
    ref = outputs.get("reference", out)
    result = score(labels, out, quantity_head=info.quantity_head, threshold=threshold)
    agreement = compare_outputs(ref, out, None)
    agreement["tolerances"] = {"atol": atol, "rtol": rtol} | {
        name: tolerance_check(getattr(ref, name), getattr(out, name), atol, rtol)
        for name in COMPARED
    }
    agreement["reference"] = annotator.bundle.artifacts[REFERENCE].file
    agreement["engine"] = annotator.bundle.artifacts[annotator.choice.artifact].file
    result |= {
        "split": split,
        "bundle": annotator.bundle.name,
        "precision": annotator.bundle.precision,
        "engine": annotator.description,
        "n_unlabelled_skipped": split_data.n_unlabelled,
        "n_failed_images": len(data.failed),
        "failed_images": [msg for _, msg in data.failed[:20]],
        "agreement": agreement,
    }
    return result


def format_agreement(agreement: dict[str, Any]) -> str:
    tol = agreement["tolerances"]
    lines = [
        f"agreement with the FP32 reference ({agreement['n_images']} images, "
        f"{agreement['engine']} vs {agreement['reference']}):",
        f"  label sets {100 * agreement['label_set_agreement']:.1f}%, "
        f"k {100 * agreement['k_agreement']:.1f}%",
    ]
    for name in COMPARED:
        t = tol[name]
        verdict = (
            "all elements within"
            if t["pass"]
            else f"{t['mismatched']}/{t['elements']} elements outside"
        )
        lines.append(
            f"  {name}: max |d| {t['max_abs']:.2e}, mean |d| {t['mean_abs']:.2e}, "
            f"max rel {t['max_rel']:.2e}; atol {tol['atol']:g} rtol {tol['rtol']:g}: {verdict}"
        )
    return "\n".join(lines)
