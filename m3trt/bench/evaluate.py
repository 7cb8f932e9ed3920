"""``m3trt eval BUNDLE MANIFEST``: the metric table of a bundle, and its agreement with the FP32
reference it was built from, with Polygraphy-style element-wise tolerances per output.

Images are decoded by the runtime's own code, exactly as ``m3trt infer`` decodes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from m3trt import metrics
from m3trt.calibration.data import load_image_set
from m3trt.calibration.guard import compare_outputs, run_outputs
from m3trt.errors import InputError
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import REFERENCE
from m3trt.runtime.engines import CPU, OnnxRuntimeEngine

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
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    reporter: Reporter = SILENT,
) -> dict[str, Any]:
    """Metrics of the bundle's engine on one split plus ``agreement`` with its FP32 reference."""
    annotator = Annotator.load(bundle_path, device=device)
    info = annotator.info
    data = load_image_set(
        manifest,
        image_size=info.image_size,
        label_names=info.label_names,
        tag_vocab=info.tag_vocab,
        splits=None if split is None else [split],
    )
    if data.labels is None or not len(data):
        where = f"split {split!r}" if split else "the manifest"
        raise InputError(f"{manifest}: no labelled images to evaluate in {where}")
    labelled = np.flatnonzero(data.labels.any(axis=1))
    skipped = len(data) - len(labelled)
    data = data.subset(labelled)
    engine_path = annotator.bundle.artifact_path(annotator.choice.artifact)
    ref_path = annotator.bundle.artifact_path(REFERENCE)
    with reporter.task("evaluate", 2 * len(data) if engine_path != ref_path else len(data)) as bar:
        out = run_outputs(annotator.engine.session, data, batch_size, bar.advance)
        if engine_path != ref_path:
            reference = OnnxRuntimeEngine(ref_path, [CPU]).session
            ref = run_outputs(reference, data, batch_size, bar.advance)
        else:
            ref = out
    k = out.k if info.quantity_head else None
    result = metrics.evaluate(
        data.labels,
        out.scores,
        k=k,
        q=out.quantity if k is not None else None,
        threshold=threshold,
    )
    agreement = compare_outputs(ref, out, None)
    agreement["tolerances"] = {"atol": atol, "rtol": rtol} | {
        name: tolerance_check(getattr(ref, name), getattr(out, name), atol, rtol)
        for name in COMPARED
    }
    agreement["reference"] = ref_path.name
    agreement["engine"] = engine_path.name
    result |= {
        "split": split,
        "bundle": annotator.bundle.name,
        "precision": annotator.bundle.precision,
        "engine": annotator.description,
        "n_unlabelled_skipped": skipped,
        "n_failed_images": len(data.failed),
        "failed_images": data.failed[:20],
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
