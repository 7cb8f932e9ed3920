"""Feed the uint8 image straight into the quantized stem conv (CPU INT8 target).

The exported graph starts ``Conv(Cast(Transpose(image)) - 255 * mean)``. Quantized as is, that
float tensor is quantized straight back to uint8: a Cast, a Sub and a QuantizeLinear over every
pixel, about a sixth of the INT8 ResNet-18's time. With scale 1 and one zero point ``z`` for all
channels, the quantized value of ``x - z`` is the pixel ``x`` itself, so the image can be the
conv's quantized input; the per-channel rest ``z - 255 * mean_c`` moves into the conv's bias.

That is exact except under the conv's zero padding, which now stands for the raw value ``z``
instead of each channel's mean (at most 12 levels of 255 apart for ImageNet statistics). The
accuracy guard measures that like any other quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper


@dataclass(frozen=True)
class Stem:
    """Names in the FP32 graph: ``pixels`` (uint8) -> Cast -> Sub(shift) -> ``centred`` -> Conv."""

    cast: str
    sub: str
    conv: str
    pixels: str
    centred: str
    zero_point: int


def _consumers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if tensor in n.input]


def _initializer(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    return next((t for t in graph.initializer if t.name == name), None)


def _uint8_image_tensors(graph: onnx.GraphProto) -> set[str]:
    """The uint8 graph input and any layout-only transform of it (the NHWC -> NCHW Transpose)."""
    names = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8}
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in names:
            names.add(node.output[0])
    return names


def find_stem(model: onnx.ModelProto) -> Stem | None:
    """The Cast -> Sub(constant per-channel shift) -> Conv chain on the uint8 image, if present."""
    graph = model.graph
    pixels = _uint8_image_tensors(graph)
    for cast in graph.node:
        if cast.op_type != "Cast" or cast.input[0] not in pixels:
            continue
        subs = _consumers(graph, cast.output[0])
        if len(subs) != 1 or subs[0].op_type != "Sub" or subs[0].input[0] != cast.output[0]:
            continue
        sub = subs[0]
        shift = _initializer(graph, sub.input[1])
        convs = _consumers(graph, sub.output[0])
        if shift is None or len(convs) != 1 or convs[0].op_type != "Conv":
            continue
        values = numpy_helper.to_array(shift).ravel()
        return Stem(
            cast.name,
            sub.name,
            convs[0].name,
            cast.input[0],
            sub.output[0],
            int(np.clip(np.round(values.mean()), 0, 255)),
        )
    return None


def prepare(model: onnx.ModelProto, stem: Stem) -> onnx.ModelProto:
    """A copy whose Sub subtracts ``z`` from every channel and whose stem bias absorbs the rest."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    sub, conv = nodes[stem.sub], nodes[stem.conv]
    shift_init = _initializer(graph, sub.input[1])
    shift = numpy_helper.to_array(shift_init).astype(np.float32).reshape(-1)
    weight = numpy_helper.to_array(_initializer(graph, conv.input[1])).astype(np.float32)
    if weight.shape[1] != shift.size:
        raise ValueError(f"stem conv has {weight.shape[1]} input channels, shift {shift.size}")
    offset = (stem.zero_point - shift).astype(np.float32)  # (x - 255 m) = (x - z) + offset
    extra = np.einsum("ochw,c->o", weight, offset).astype(np.float32)
    if len(conv.input) > 2 and conv.input[2]:
        bias_init = _initializer(graph, conv.input[2])
        bias = numpy_helper.to_array(bias_init).astype(np.float32) + extra
        bias_init.CopyFrom(numpy_helper.from_array(bias, bias_init.name))
    else:
        name = f"{conv.name}_uint8_stem_bias"
        graph.initializer.append(numpy_helper.from_array(extra, name))
        conv.input.append(name)
    zeros = np.full(numpy_helper.to_array(shift_init).shape, stem.zero_point, np.float32)
    shift_init.CopyFrom(numpy_helper.from_array(zeros, shift_init.name))
    return model


def pin_range(ranges, stem: Stem):
    """A copy of the calibrated ranges with ``centred`` fixed to [-z, 255 - z]: scale exactly 1
    and zero point z in uint8, so quantizing ``x - z`` gives back ``x``."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = dict(ranges.data)
    data[stem.centred] = TensorData(
        lowest=np.float32(-stem.zero_point), highest=np.float32(255 - stem.zero_point)
    )
    return TensorsData(ranges.calibration_method, data)


def feed_uint8(model: onnx.ModelProto, stem: Stem) -> bool:
    """In the quantized graph, replace Cast -> Sub -> QuantizeLinear by the uint8 pixels.

    Returns False (graph untouched) when the chain is not there as expected, for example when the
    stem conv was kept in float.
    """
    graph = model.graph
    quants = _consumers(graph, stem.centred)
    if len(quants) != 1 or quants[0].op_type != "QuantizeLinear":
        return False
    quant = quants[0]
    scale = _initializer(graph, quant.input[1])
    point = _initializer(graph, quant.input[2]) if len(quant.input) > 2 else None
    if scale is None or point is None or point.data_type != TensorProto.UINT8:
        return False
    if numpy_helper.to_array(scale).item() != 1.0:
        return False
    if int(numpy_helper.to_array(point).item()) != stem.zero_point:
        return False
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == quant.output[0]:
                node.input[i] = stem.pixels
    dead = {stem.cast, stem.sub, quant.name}
    kept = [n for n in graph.node if n.name not in dead]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return True
