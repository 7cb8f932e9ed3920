"""Checkpoint -> one self-describing ONNX graph, fused, simplified and verified against PyTorch.

``torch.onnx.export`` (the dynamo exporter) writes the raw graph; our torch-level fusion passes
(``fuse.py``) run before it and onnxscript's maintained optimizer simplifies after it. The export
checks itself: ``onnx.checker`` with full shape inference, then ONNX Runtime against PyTorch.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from m3trt import __version__
from m3trt.atomic import atomic_path
from m3trt.config import CheckpointConfig
from m3trt.errors import InputError
from m3trt.export.graph import INPUT_NAMES, OUTPUT_NAMES, build_graph, example_inputs
from m3trt.export.parity import ParityReport, check_parity
from m3trt.progress import SILENT, Reporter
from m3trt.runtime.model_io import ModelInfo
from m3trt.train.checkpoint import load_checkpoint

DEFAULT_OPSET = 18
# torch's dynamo exporter has no implementations below 18: asked for 17 it printed a version
# converter's traceback, wrote 18 and the report said 17.
MIN_OPSET = 18
MAX_OPSET = 23
GEMM_OPS = ("Gemm", "MatMul")


@dataclass
class GraphStats:
    nodes: int
    gemms: int
    batchnorms: int
    ops: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphStats:
        ops = Counter(node.op_type for node in model.graph.node)
        return cls(
            nodes=sum(ops.values()),
            gemms=sum(ops[o] for o in GEMM_OPS),
            batchnorms=ops["BatchNormalization"],
            ops=dict(sorted(ops.items())),
        )


@dataclass
class ExportReport:
    """What the export did. The fusion counts come from the torch passes themselves: exporting
    the unfused model only to count its nodes doubled the export's time."""

    path: Path
    opset: int
    raw: GraphStats  # the fused model as the exporter wrote it, before simplification
    fused: GraphStats  # the graph written
    bn_folded: int
    gemms_merged: int
    parity: ParityReport

    def summary(self) -> str:
        r, f = self.raw, self.fused
        return (
            f"{self.path}: {f.nodes} nodes ({r.nodes - f.nodes} removed by simplification), "
            f"{f.gemms} GEMMs ({self.gemms_merged} merged into the head GEMM), "
            f"{self.bn_folded} BatchNorms folded; parity vs PyTorch: {self.parity.summary()}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["parity"] = self.parity.to_json()
        return data


def model_info(config: CheckpointConfig) -> ModelInfo:
    m = config.model
    return ModelInfo(
        label_names=list(config.label_names),
        tag_vocab=list(config.tag_vocab),
        preprocessing=asdict(config.preprocessing),
        k_max=m.k_max,
        backbone=m.backbone,
        multi_scale=m.multi_scale,
        use_tags=m.use_tags and m.num_tags > 0,
        quantity_head=m.quantity_head,
    )


def to_onnx(graph: torch.nn.Module, config: CheckpointConfig, opset: int) -> onnx.ModelProto:
    """The raw export: dynamic batch, fixed image size, tag count, label count and K_max."""
    inputs = example_inputs(config)
    names = list(INPUT_NAMES[: len(inputs)])
    batch = torch.export.Dim("batch", min=1, max=4096)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)  # "torchvision is not installed" noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            inputs,
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes={name: {0: batch} for name in names},
            dynamo=True,
            optimize=False,
            external_data=False,
            verbose=False,
        )
    registration_log.setLevel(level)
    return program.model_proto


def onnx_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain opset a graph declares (what was written, not what was asked)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-code and identity removal with onnxscript's optimizer."""
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def attach_metadata(model: onnx.ModelProto, info: ModelInfo) -> None:
    del model.metadata_props[:]
    for key, value in sorted(info.to_onnx_metadata().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "m3trt"
    model.producer_version = __version__


def check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker with full (strict) shape inference; also pins the I/O contract."""
    onnx.checker.check_model(model, full_check=True)
    outputs = [o.name for o in model.graph.output]
    if outputs != list(OUTPUT_NAMES):
        raise RuntimeError(f"exported outputs are {outputs}, expected {list(OUTPUT_NAMES)}")


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, written atomically."""
    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp, save_as_external_data=False)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    parity_images: int = 8,
    reporter: Reporter = SILENT,
) -> ExportReport:
    """Export a checkpoint folder to ``out`` (a single .onnx file) and verify it."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise InputError(f"{out}: the output must be a .onnx file")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(
            f"opset {opset} cannot be exported: torch's ONNX exporter writes opsets "
            f"{MIN_OPSET} to {MAX_OPSET}"
        )
    torch.set_num_threads(os.cpu_count() or 1)
    model, config = load_checkpoint(checkpoint)
    with reporter.task("export", 4, unit="step") as bar:
        fused_graph = build_graph(model, config, fused=True)
        raw = to_onnx(fused_graph, config, opset)
        written = onnx_opset(raw)
        if written != opset:  # never silently another opset than the one asked for
            raise RuntimeError(f"asked for opset {opset}, the exporter wrote {written}")
        raw_stats = GraphStats.of(raw)
        bar.advance()
        fused = simplify(raw)
        attach_metadata(fused, model_info(config))
        check_model(fused)
        bar.advance()
        parity = check_parity(
            build_graph(model, config, fused=False), fused, config, n_real=parity_images
        )
        bar.advance()
        if not parity.ok:
            raise RuntimeError(f"exported graph disagrees with PyTorch: {parity.failure}")
        save_model(fused, out)
        bar.advance()
    return ExportReport(
        path=out,
        opset=onnx_opset(fused),
        raw=raw_stats,
        fused=GraphStats.of(fused),
        bn_folded=fused_graph.model.bn_folded,
        gemms_merged=fused_graph.model.heads.merged,
        parity=parity,
    )
