"""The accuracy guard: a quantized graph must stay within budget of its FP32 reference.

After quantizing, both graphs run on held-out images. If the O-F1 drop (against ground truth,
when the images have labels) or the label-set disagreement is over budget, the most sensitive
nodes, found by measuring each quantized activation's signal-to-quantization-noise ratio, are kept
in float and the graph is quantized again, keeping more nodes each round until it fits.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3trt import metrics
from m3trt.calibration.data import ImageSet
from m3trt.calibration.qdq import QUANTIZED_OPS, write_qdq
from m3trt.calibration.ranges import ImageSetReader, model_inputs
from m3trt.errors import M3Error

SENSITIVITY_IMAGES = 16


@dataclass(frozen=True)
class AccuracyBudget:
    max_of1_drop: float = 0.01  # O-F1 as a fraction: 0.01 is one point
    max_disagreement: float | None = None  # share of images whose label set may change


@dataclass
class Outputs:
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


def run_outputs(session, data: ImageSet, batch_size: int = 16) -> Outputs:
    names = [i.name for i in session.get_inputs()]
    parts = []
    for images, tags in data.batches(batch_size):
        feeds = {"image": images, "tags": tags.astype(np.float32)}
        parts.append(session.run(["scores", "quantity", "k", "topk"], {n: feeds[n] for n in names}))
    return Outputs(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def compare_outputs(
    reference: Outputs, candidate: Outputs, labels: np.ndarray | None
) -> dict[str, Any]:
    """Agreement of a candidate with the FP32 reference, and O-F1 against labels if given."""
    ref_sets, new_sets = reference.label_sets(), candidate.label_sets()
    delta = np.abs(reference.scores - candidate.scores)
    report: dict[str, Any] = {
        "n_images": len(ref_sets),
        "label_set_agreement": float(np.mean(np.all(ref_sets == new_sets, axis=1))),
        "k_agreement": float(np.mean(reference.k == candidate.k)),
        "max_abs_score_delta": float(delta.max()) if delta.size else 0.0,
        "mean_abs_score_delta": float(delta.mean()) if delta.size else 0.0,
    }
    if labels is not None and len(labels):
        of1_ref = metrics.label_metrics(labels, ref_sets)["OF1"]
        of1_new = metrics.label_metrics(labels, new_sets)["OF1"]
        report |= {"of1_reference": of1_ref, "of1": of1_new, "of1_drop": of1_ref - of1_new}
    return report


def over_budget(report: dict[str, Any], budget: AccuracyBudget) -> list[str]:
    """Why the report breaks the budget; empty when it fits."""
    reasons = []
    drop = report.get("of1_drop")
    if drop is not None and drop > budget.max_of1_drop:
        reasons.append(f"O-F1 drops {100 * drop:.2f} points (budget {100 * budget.max_of1_drop:g})")
    disagreement = 1.0 - report["label_set_agreement"]
    if budget.max_disagreement is not None and disagreement > budget.max_disagreement:
        reasons.append(
            f"label sets differ on {100 * disagreement:.1f}% of images "
            f"(budget {100 * budget.max_disagreement:g}%)"
        )
    return reasons


def producers(model_path: Path) -> dict[str, str]:
    """Tensor name -> name of the node that produces it."""
    import onnx

    model = onnx.load(str(model_path))
    return {out: node.name for node in model.graph.node for out in node.output}


def sensitivity(
    fp32_path: Path, qdq_path: Path, data: ImageSet, batch_size: int = 8
) -> list[tuple[str, float]]:
    """Quantized nodes ranked from most to least sensitive, by the SQNR (dB) between each
    activation and its quantize-dequantize round trip in the Q/DQ graph (lower = worse)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    names = model_inputs(fp32_path)
    with tempfile.TemporaryDirectory(prefix="m3trt-sens-") as tmp:
        float_aug, qdq_aug = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(float_aug), QUANTIZED_OPS)
        modify_model_output_intermediate_tensors(str(qdq_path), str(qdq_aug), QUANTIZED_OPS)
        providers = ["CPUExecutionProvider"]
        float_acts = collect_activations(
            str(float_aug), ImageSetReader(data, names, batch_size), execution_providers=providers
        )
        qdq_acts = collect_activations(
            str(qdq_aug), ImageSetReader(data, names, batch_size), execution_providers=providers
        )
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    by_tensor = producers(fp32_path)
    ranked = []
    for tensor, err in errors.items():
        node = by_tensor.get(tensor)
        value = err.get("qdq_err")
        if node and value is not None and np.isfinite(value):
            ranked.append((node, float(value)))
    ranked.sort(key=lambda item: item[1])
    return ranked


@dataclass
class GuardResult:
    path: Path
    report: dict[str, Any]
    kept_in_float: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def quantize_with_guard(
    fp32_path: Path,
    out_path: Path,
    ranges,
    target: str,
    val: ImageSet,
    *,
    budget: AccuracyBudget = AccuracyBudget(),
    steps: Sequence[int] = (1, 2, 4, 8, 16, 32),
    log: Callable[[str], None] = lambda _m: None,
    session_factory: Callable[[Path], Any] | None = None,
) -> GuardResult:
    """Quantize, measure against FP32, and keep the most sensitive nodes in float until the
    result fits the budget. Raises M3Error when even the last step does not fit."""
    make_session = session_factory or _cpu_session
    reference = run_outputs(make_session(fp32_path), val)
    excluded: list[tuple[str, float]] = []
    ranking: list[tuple[str, float]] | None = None
    attempts: list[dict[str, Any]] = []
    for step in (0, *steps):
        if step:
            if ranking is None:
                sample = val.subset(range(min(SENSITIVITY_IMAGES, len(val))))
                ranking = sensitivity(fp32_path, out_path, sample)
            step = min(step, len(ranking))
            if step == len(excluded):
                break
            excluded = ranking[:step]
        write_qdq(fp32_path, out_path, ranges, target, nodes_to_exclude=[n for n, _ in excluded])
        report = compare_outputs(reference, run_outputs(make_session(out_path), val), val.labels)
        reasons = over_budget(report, budget)
        attempts.append({"kept_in_float": len(excluded), "report": report, "over": reasons})
        if not reasons:
            kept = [{"node": n, "sqnr_db": round(s, 2)} for n, s in excluded]
            if kept:
                log(f"accuracy guard kept {len(kept)} node(s) in float: {_names(kept)}")
            return GuardResult(out_path, report, kept, attempts)
        log(f"accuracy guard: {'; '.join(reasons)} with {len(excluded)} node(s) in float")
    raise M3Error(
        f"INT8 ({target}) stays over the accuracy budget even with {len(excluded)} nodes in "
        f"float ({'; '.join(attempts[-1]['over'])}); use --precision fp32 or more calibration "
        "images"
    )


def _names(kept: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{k['node']} ({k['sqnr_db']} dB)" for k in kept[:4])
    return shown + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")


def _cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
