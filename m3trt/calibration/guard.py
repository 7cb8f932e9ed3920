"""The accuracy guard: a quantized graph must stay within budget of its FP32 reference.

After quantizing, both graphs run on held-out images. If the O-F1 drop (against ground truth,
when the images have labels) or the label-set disagreement is over budget, the most sensitive
nodes, found by measuring each quantized activation's signal-to-quantization-noise ratio, are kept
in float and the graph is quantized again, keeping more nodes each round until it fits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.calibration.data import ImageSet
from m3trt.calibration.qdq import QUANTIZED_OPS, TARGETS, write_qdq
from m3trt.calibration.ranges import ImageSetReader, model_inputs
from m3trt.errors import M3Error
from m3trt.evaluation import Outputs, compare_outputs, run_outputs
from m3trt.runtime.engines import Engine, open_path


class OverBudget(M3Error):
    """No INT8 graph the guard can make fits the accuracy budget (``--precision auto`` then
    keeps FP32; an explicit ``int8`` fails with this message)."""


SENSITIVITY_IMAGES = 16


@dataclass(frozen=True)
class AccuracyBudget:
    max_of1_drop: float = 0.01  # O-F1 as a fraction: 0.01 is one point
    max_disagreement: float | None = None  # share of images whose label set may change


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


def _graph_links(model_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Nodes by name and tensor -> producing node name."""
    import onnx

    model = onnx.load(str(model_path))
    nodes = {node.name: node for node in model.graph.node}
    producer = {out: node.name for node in model.graph.node for out in node.output}
    return nodes, producer


def fake_quant_sqnr(values: np.ndarray, low: float, high: float, symmetric: bool) -> float:
    """SQNR (dB) of an activation after quantize-dequantize with the given calibrated range, as
    the target's 8-bit format does it (uint8 asymmetric, or int8 symmetric)."""
    x = values.astype(np.float64).ravel()
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if symmetric:
        scale = max(abs(low), abs(high)) / 127.0 or 1e-12
        q = np.clip(np.round(x / scale), -127, 127) * scale
    else:
        scale = (high - low) / 255.0 or 1e-12
        zero = np.round(-low / scale)
        q = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    signal, noise = float(np.sum(x * x)), float(np.sum((x - q) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def sensitivity(
    fp32_path: Path, ranges, data: ImageSet, target: str, batch_size: int = 8
) -> list[tuple[str, float]]:
    """Quantized nodes, most sensitive first: each activation of the FP32 graph is
    quantize-dequantized with its calibrated range and its SQNR measured (lower = worse).

    A Relu that the quantizer folds into its conv is reported as that conv, so excluding the
    node really keeps the computation in float.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    nodes, producer = _graph_links(fp32_path)
    with tempfile.TemporaryDirectory(prefix="m3trt-sens-") as tmp:
        augmented = Path(tmp) / "float.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(augmented), QUANTIZED_OPS)
        activations = collect_activations(
            str(augmented),
            ImageSetReader(data, model_inputs(fp32_path), batch_size),
            execution_providers=["CPUExecutionProvider"],
        )
    symmetric = TARGETS[target].activation_symmetric
    ranked: dict[str, float] = {}
    for tensor, batches in activations.items():
        name = producer.get(tensor)
        if name is None or tensor not in ranges:
            continue
        low, high = (float(v) for v in np.ravel(ranges[tensor].range_value)[:2])
        sqnr = fake_quant_sqnr(np.concatenate([b.ravel() for b in batches]), low, high, symmetric)
        node = nodes[name]
        if node.op_type == "Relu" and node.input[0] in producer:
            name = producer[node.input[0]]  # the conv the Relu is fused into
        ranked[name] = min(sqnr, ranked.get(name, float("inf")))
    return sorted(ranked.items(), key=lambda item: item[1])


@dataclass
class GuardResult:
    path: Path
    report: dict[str, Any]
    kept_in_float: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    uint8_input: bool = False  # the image bytes feed the quantized stem conv (uint8_stem)

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
    engine_factory: Callable[[Path], Engine] | None = None,
) -> GuardResult:
    """Quantize, measure against FP32, and keep the most sensitive nodes in float until the
    result fits the budget. Raises M3Error when even the last step does not fit."""
    if target not in TARGETS:
        raise M3Error(f"unknown quantization target {target!r}")
    open_graph = engine_factory or open_path
    reference = _outputs(open_graph(fp32_path), val)
    excluded: list[tuple[str, float]] = []
    ranking: list[tuple[str, float]] | None = None
    attempts: list[dict[str, Any]] = []
    # The uint8 stem (CPU target) is tried first; when over budget it is the first lever, before
    # any node is kept in float: its cost is visible only as a whole-graph measurement.
    plan = [(True, 0)] if TARGETS[target].activation_unsigned else []
    plan += [(False, step) for step in (0, *steps)]
    for uint8_input, step in plan:
        if step:
            if ranking is None:
                sample = val.subset(range(min(SENSITIVITY_IMAGES, len(val))))
                ranking = sensitivity(fp32_path, ranges, sample, target)
            step = min(step, len(ranking))
            if step == len(excluded):
                break
            excluded = ranking[:step]
        write_qdq(
            fp32_path,
            out_path,
            ranges,
            target,
            nodes_to_exclude=[n for n, _ in excluded],
            uint8_input=uint8_input,
        )
        report = compare_outputs(reference, _outputs(open_graph(out_path), val), val.labels)
        reasons = over_budget(report, budget)
        attempts.append(
            {
                "uint8_input": uint8_input,
                "kept_in_float": len(excluded),
                "report": report,
                "over": reasons,
            }
        )
        if not reasons:
            kept = [{"node": n, "sqnr_db": _db(s)} for n, s in excluded]
            if kept:
                log(f"accuracy guard kept {len(kept)} node(s) in float: {_names(kept)}")
            return GuardResult(out_path, report, kept, attempts, uint8_input)
        what = "the uint8 stem" if uint8_input else f"{len(excluded)} node(s) in float"
        log(f"accuracy guard: {'; '.join(reasons)} with {what}")
    raise OverBudget(
        f"INT8 ({target}) stays over the accuracy budget even with {len(excluded)} nodes in "
        f"float ({'; '.join(attempts[-1]['over'])}); use --precision fp32 or more calibration "
        "images"
    )


def _outputs(engine: Engine, val: ImageSet) -> Outputs:
    with engine:
        return run_outputs(engine, val.batches(16))


def _names(kept: list[dict[str, Any]]) -> str:
    shown = ", ".join(f"{k['node']} ({k['sqnr_db']} dB)" for k in kept[:4])
    return shown + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")


def _db(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None
