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


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _image_side(graph: onnx.GraphProto) -> int | None:
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.elem_type == TensorProto.UINT8 and len(dims) == 4:
            h, w = dims[1].dim_value, dims[2].dim_value
            return h if h and h == w else None
    return None


def space_to_depth_weights(weight: np.ndarray) -> np.ndarray:
    """[O, C, k, k] (k odd) -> [O, 4C, (k+1)/2, (k+1)/2] for a stride-1 conv on the 2x2
    space-to-depth image: the kernel gets a zero row and column in front, then each 2x2 phase
    becomes a channel group, ordered as ONNX SpaceToDepth orders its output channels."""
    out_ch, in_ch, k, _ = weight.shape
    padded = np.zeros((out_ch, in_ch, k + 1, k + 1), weight.dtype)
    padded[:, :, 1:, 1:] = weight
    half = (k + 1) // 2
    result = np.zeros((out_ch, 4 * in_ch, half, half), weight.dtype)
    for r in range(2):
        for s in range(2):
            block = (r * 2 + s) * in_ch
            result[:, block : block + in_ch] = padded[:, :, r::2, s::2]
    return result


def _nhwc_source(graph: onnx.GraphProto, pixels: str) -> str | None:
    """The NHWC uint8 image that ``pixels`` is the NCHW transpose of, if it is one."""
    node = next((n for n in graph.node if pixels in n.output), None)
    if node is None or node.op_type != "Transpose":
        return None
    if list(_attrs(node).get("perm", [])) != [0, 3, 1, 2]:
        return None
    return node.input[0]


def space_to_depth(model: onnx.ModelProto, stem: Stem) -> bool:
    """Rewrite the quantized stem (k x k, stride 2, k odd) as a stride-1 conv over the 2x2
    space-to-depth image (4x the channels): the same integer arithmetic, but ONNX Runtime's uint8
    conv kernels run 12 input channels much faster than 3 (the 7x7 stem was 16% of an INT8
    ResNet-18's time). Pad and shuffle happen on the uint8 NHWC image, with reshapes and one
    transpose (measured faster than ONNX SpaceToDepth, which works in NCHW); the pad value is the
    zero point, exactly what the conv padded with."""
    graph = model.graph
    side = _image_side(graph)
    image = _nhwc_source(graph, stem.pixels)
    dqs = [n for n in _consumers(graph, stem.pixels) if n.op_type == "DequantizeLinear"]
    if side is None or side % 2 or image is None or len(dqs) != 1:
        return False
    dq = dqs[0]
    convs = _consumers(graph, dq.output[0])
    if len(convs) != 1 or convs[0].op_type != "Conv":
        return False
    conv = convs[0]
    attrs = _attrs(conv)
    k = list(attrs.get("kernel_shape", []))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if (
        len(k) != 2
        or k[0] != k[1]
        or k[0] % 2 == 0
        or list(attrs.get("strides", [1, 1])) != [2, 2]
        or attrs.get("group", 1) != 1
        or list(attrs.get("dilations", [1, 1])) != [1, 1]
        or len(set(pads)) != 1
        or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        return False
    kernel, pad = k[0], pads[0]
    w_dq = next((n for n in graph.node if conv.input[1] in n.output), None)
    w_init = _initializer(graph, w_dq.input[0]) if w_dq is not None else None
    if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_init is None:
        return False
    channels = numpy_helper.to_array(w_init).shape[1]
    out_side = (side + 2 * pad - kernel) // 2 + 1
    half = (kernel + 1) // 2
    before = pad + 1  # the zero row/column added in front of the kernel
    padded_side = 2 * (out_side + half - 1)
    after = padded_side - side - before
    if after < 0:
        return False
    weight = space_to_depth_weights(numpy_helper.to_array(w_init))
    w_init.CopyFrom(numpy_helper.from_array(weight, w_init.name))
    name = f"{stem.conv}_s2d"
    blocks = padded_side // 2
    constants = {
        "pads": [0, before, before, 0, 0, after, after, 0],
        # [B * rows, r, columns, (s, c)]: moving the one axis r keeps 2C-byte runs together,
        # which ONNX Runtime transposes much faster than a general 6-D permutation.
        "rows": [-1, 2, blocks, 2 * channels],
        "shape4": [-1, blocks, blocks, 4 * channels],
    }
    for key, values in constants.items():
        graph.initializer.append(
            numpy_helper.from_array(np.array(values, np.int64), f"{name}_{key}")
        )
    make = onnx.helper.make_node
    chain = [
        make("Pad", [image, f"{name}_pads", dq.input[2]], [f"{name}_padded"], name=f"{name}_pad"),
        make("Reshape", [f"{name}_padded", f"{name}_rows"], [f"{name}_r"], name=f"{name}_rows"),
        make("Transpose", [f"{name}_r"], [f"{name}_t"], name=f"{name}_t", perm=[0, 2, 1, 3]),
        make("Reshape", [f"{name}_t", f"{name}_shape4"], [f"{name}_nhwc"], name=f"{name}_4d"),
        make(
            "Transpose", [f"{name}_nhwc"], [f"{name}_nchw"], name=f"{name}_nchw", perm=[0, 3, 1, 2]
        ),
    ]
    dq.input[0] = f"{name}_nchw"
    index = next(i for i, n in enumerate(graph.node) if n.name == dq.name)
    for offset, node in enumerate(chain):
        graph.node.insert(index + offset, node)
    del conv.attribute[:]
    conv.attribute.extend(
        [
            onnx.helper.make_attribute("kernel_shape", [half, half]),
            onnx.helper.make_attribute("strides", [1, 1]),
            onnx.helper.make_attribute("pads", [0, 0, 0, 0]),
        ]
    )
    if not _consumers(graph, stem.pixels):  # the NCHW transpose of the image is now unused
        kept = [n for n in graph.node if stem.pixels not in n.output]
        del graph.node[:]
        graph.node.extend(kept)
    return True
