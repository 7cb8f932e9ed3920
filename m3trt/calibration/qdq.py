"""Q/DQ graph writers for the two INT8 targets (DESIGN §4), on ONNX Runtime's quantizer.

- ``cpu``: uint8 asymmetric activations, int8 per-channel weights: the format ONNX Runtime's
  CPU kernels run fastest (measured ~3x FP32 here, int8 activations barely faster than FP32).
- ``tensorrt``: int8 symmetric activations and weights, so every zero point is 0: the only
  INT8 that TensorRT 10/11 accept in a strongly typed network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from m3trt.calibration import uint8_stem
from m3trt.errors import InputError

# The ops we quantize: the convolutional trunk, >99% of the FLOPs. The GEMMs (visual projection,
# tag MLP, merged heads) stay in float: a tiny share of the time, but quantizing the logits'
# range clipped confident scores and cost 14 O-F1 points on the synthetic set. Preprocessing
# (Cast/Sub on the uint8 input, unless the uint8 stem replaces them) and postprocessing
# (Sigmoid, TopK, k) stay in float too.
QUANTIZED_OPS = ("Conv", "Relu", "Add", "MaxPool", "GlobalAveragePool")


@dataclass(frozen=True)
class QdqTarget:
    name: str
    activation_symmetric: bool
    activation_unsigned: bool


TARGETS = {
    "cpu": QdqTarget("cpu", activation_symmetric=False, activation_unsigned=True),
    "tensorrt": QdqTarget("tensorrt", activation_symmetric=True, activation_unsigned=False),
}


def write_qdq(
    fp32_path: Path,
    out_path: Path,
    ranges,
    target: str,
    *,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] = QUANTIZED_OPS,
    uint8_input: bool | None = None,
) -> Path:
    """Quantize ``fp32_path`` with precomputed ``ranges`` into a Q/DQ graph at ``out_path``.

    ``nodes_to_exclude`` stay in float: the accuracy guard's lever. ``op_types`` exists for
    benchmarks that compare quantization scopes. ``uint8_input`` (default: on for ``cpu``) feeds
    the uint8 image straight into the quantized stem conv (see ``uint8_stem``).
    """
    import onnx

    if target not in TARGETS:
        raise InputError(f"unknown quantization target {target!r}: use cpu or tensorrt")
    spec = TARGETS[target]
    nodes_to_exclude = (*nodes_to_exclude, *head_nodes(fp32_path, op_types))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wanted = spec.activation_unsigned if uint8_input is None else uint8_input
    stem, reduced = None, ()
    if spec.activation_unsigned and "Conv" in op_types:
        model = onnx.load(str(fp32_path))
        stem = uint8_stem.find_stem(model)
        if stem is not None:
            reduced = (_node_input(model, stem.conv, 1),)
    if wanted and stem is not None and stem.conv not in nodes_to_exclude:
        prepared = out_path.with_name(f".{out_path.name}.uint8-stem.onnx")
        onnx.save(uint8_stem.prepare(model, stem), str(prepared))
        try:
            _quantize(
                prepared,
                out_path,
                uint8_stem.pin_range(ranges, stem),
                spec,
                nodes_to_exclude,
                op_types,
                reduced,
            )
        finally:
            prepared.unlink(missing_ok=True)
        quantized = onnx.load(str(out_path))
        if uint8_stem.feed_uint8(quantized, stem):
            uint8_stem.space_to_depth(quantized, stem)
            onnx.checker.check_model(quantized, full_check=True)
            onnx.save(quantized, str(out_path))
            return out_path
    _quantize(fp32_path, out_path, ranges, spec, nodes_to_exclude, op_types, reduced)
    return out_path


def head_nodes(fp32_path: Path, op_types: Sequence[str]) -> list[str]:
    """The nodes of ``op_types`` past the convolutional trunk, kept in float: those whose output
    is not a 4-D feature map (the tag MLP's ReLUs, the logits + tag-path Add, the quantity
    head). ``Add`` and ``Relu`` are quantized for the trunk's residuals, and ONNX Runtime took
    the head's as well: the logits were rounded to steps of 0.128, so labels tied in score."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    rank = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in (*model.graph.value_info, *model.graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    return [
        n.name for n in model.graph.node if n.op_type in op_types and rank.get(n.output[0], 4) != 4
    ]


def _node_input(model, node_name: str, index: int) -> str:
    return next(n.input[index] for n in model.graph.node if n.name == node_name)


def _quantize(
    fp32_path: Path,
    out_path: Path,
    ranges,
    spec: QdqTarget,
    nodes_to_exclude: Sequence[str],
    op_types: Sequence[str],
    reduced_weights: Sequence[str] = (),
) -> None:
    """``reduced_weights`` are quantized to 7 bits (-64..64): the stem conv reads whole pixel
    bytes, and without VNNI (AVX2, AVX-512F) ONNX Runtime's and oneDNN's u8 x s8 kernels sum
    pairs of products in 16 bits (``vpmaddubsw``), which 255 x 127 x 2 overflows; 255 x 64 x 2
    does not. Measured on an AVX2 host: 8-bit stem weights changed the stem's output with the
    kernel layout (max |d score| 0.04) and cost agreement with FP32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    cache = out_path.with_name(f".{out_path.name}.ranges.json")
    save_tensors_data(ranges, cache)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer warns about pre-processing on every call
    try:
        quantize_static(
            str(fp32_path),
            str(out_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8 if spec.activation_unsigned else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=ranges.calibration_method,
            extra_options={
                "ActivationSymmetric": spec.activation_symmetric,
                "WeightSymmetric": True,
                "TensorQuantOverrides": {
                    name: [{"reduce_range": True}] for name in reduced_weights
                },
            },
            calibration_cache_path=cache,
        )
    finally:
        logger.setLevel(level)
        cache.unlink(missing_ok=True)


def zero_points(model_path: Path) -> dict[str, list[int]]:
    """Zero points of every QuantizeLinear/DequantizeLinear, by tensor name (for checks)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    points: dict[str, list[int]] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            value = inits.get(node.input[2])
            if value is not None:
                points[node.input[2]] = value.astype(int).ravel().tolist()
    return points
