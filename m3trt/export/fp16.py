"""FP32 ONNX graph -> mixed FP16 graph for strongly typed TensorRT builds (DESIGN §4).

A strongly typed TensorRT network runs every layer in the type the ONNX graph gives it, so FP16
is decided here, in the graph, not by builder flags. The conversion itself is ONNX Runtime's
maintained converter (``onnxruntime.transformers.float16``); this module only decides what
stays in FP32 and cleans up after it:

- Graph inputs and outputs keep their types (``image`` uint8, ``tags`` and ``scores`` /
  ``quantity`` float32, ``k`` / ``topk`` int32): callers and bundles never see FP16.
- FP32 wherever FP16 error changes the *answer* rather than a score's last digit: the op types
  in ``DEFAULT_BLOCK_OPS`` (sigmoid/softmax, TopK, the rounding of ``k``, global pooling), plus
  the prologue (every node between a graph input and the first Conv/Gemm/MatMul: the uint8
  cast and the normalisation) and the epilogue (every node between the last Conv/Gemm/MatMul
  and a graph output: sigmoid, top-k, the quantity's affine map, its rounding and clamping).
  Both ends work on [B, S, S, 3] or [B, C] tensors: FP32 there costs nothing measurable.
- The converter wraps each FP32 node in FP32->FP16->FP32 casts, so two adjacent FP32 nodes would
  still exchange their tensor through FP16 (e.g. sigmoid scores reaching TopK with FP16 ties).
  ``_drop_fp16_round_trips`` removes those pairs so FP32 regions stay FP32 end to end.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto

# Op types kept in FP32 wherever they appear. Sigmoid/Softmax/TopK: FP16 scores near 1 tie and
# reorder labels; Floor/Round/Ceil/Clip/Cast: the rounding of the predicted label count k;
# ReduceMean/ReduceSum/GlobalAveragePool: a sum over a whole feature map can overflow FP16 and
# costs one small pass in FP32; Range/CumSum/NonMaxSuppression: no FP16 kernels in ONNX Runtime.
DEFAULT_BLOCK_OPS: frozenset[str] = frozenset(
    {
        "Sigmoid",
        "Softmax",
        "LogSoftmax",
        "TopK",
        "Floor",
        "Round",
        "Ceil",
        "Clip",
        "Cast",
        "ReduceMean",
        "ReduceSum",
        "GlobalAveragePool",
        "Range",
        "CumSum",
        "NonMaxSuppression",
    }
)

# The compute that FP16 is for; the prologue/epilogue are what lies outside them.
MATMUL_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_io_types: bool = True,
    block_ops: Iterable[str] = DEFAULT_BLOCK_OPS,
    keep_ends_fp32: bool = True,
) -> onnx.ModelProto:
    """A checked FP16 copy of ``model`` (which is not modified); see the module docstring.

    ``block_ops``: op types kept in FP32. ``keep_ends_fp32``: also keep the prologue and
    epilogue (nodes outside the first/last Conv/Gemm/MatMul) in FP32.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    work = onnx.ModelProto()
    work.CopyFrom(model)
    _name_nodes(work.graph)
    _drop_initializer_value_info(work.graph)
    blocked_nodes = _end_nodes(work.graph) if keep_ends_fp32 else set()
    converted = convert_float_to_float16(
        work,
        keep_io_types=keep_io_types,
        op_block_list=sorted(set(block_ops)),
        node_block_list=sorted(blocked_nodes),
    )
    OnnxModel.graph_topological_sort(converted.graph)  # the converter appends its casts
    _drop_fp16_round_trips(converted)
    _check_converted(model, converted, keep_io_types=keep_io_types)
    return converted


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: the converter's node block list is by name."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"m3trt_fp16_{i}_{node.op_type}"
        seen.add(node.name)


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """Remove value_info entries that repeat an initializer's type (the torch exporter writes
    them): the converter would retype them to FP16 while the FP32-only initializer stays FP32."""
    names = {t.name for t in graph.initializer}
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _end_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the prologue and epilogue nodes (see the module docstring)."""
    nodes = list(graph.node)  # ONNX requires topological order
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    produced_by = {out: n for n, node in enumerate(nodes) for out in node.output}
    consumed_by: dict[str, list[int]] = {}
    for n, node in enumerate(nodes):
        for name in node.input:
            consumed_by.setdefault(name, []).append(n)

    # forward pass: does a node read a graph input / follow a matmul?
    from_input = [False] * len(nodes)
    after_matmul = [False] * len(nodes)
    for n, node in enumerate(nodes):
        parents = [produced_by[x] for x in node.input if x in produced_by]
        from_input[n] = any(x in graph_inputs for x in node.input) or any(
            from_input[p] for p in parents
        )
        after_matmul[n] = any(nodes[p].op_type in MATMUL_OPS or after_matmul[p] for p in parents)
    # backward pass: does a node reach a graph output / precede a matmul?
    to_output = [False] * len(nodes)
    before_matmul = [False] * len(nodes)
    for n in reversed(range(len(nodes))):
        outs = nodes[n].output
        children = [c for x in outs for c in consumed_by.get(x, [])]
        to_output[n] = any(x in graph_outputs for x in outs) or any(to_output[c] for c in children)
        before_matmul[n] = any(nodes[c].op_type in MATMUL_OPS or before_matmul[c] for c in children)

    ends = set()
    for n, node in enumerate(nodes):
        if node.op_type in MATMUL_OPS:
            continue
        prologue = from_input[n] and not after_matmul[n]
        epilogue = to_output[n] and not before_matmul[n]
        if prologue or epilogue:
            ends.add(node.name)
    return ends


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor in the (shape-inferred) main graph."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Bypass every fp32 -> Cast(fp16) -> Cast(fp32) pair, then prune the dead casts.

    A second cast whose output is a graph output becomes an Identity of the FP32 tensor, so
    the output names stay as they are.
    """
    graph = model.graph
    types = _tensor_types(model)
    produced_by = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    replace: dict[str, str] = {}
    for node in graph.node:
        first = produced_by.get(node.input[0]) if _cast_to(node) == TensorProto.FLOAT else None
        if first is None or _cast_to(first) != TensorProto.FLOAT16:
            continue
        if types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        if node.output[0] in graph_outputs:
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
        else:
            replace[node.output[0]] = first.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = replace.get(name, name)
    _prune(graph)


def _prune(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (graph outputs count as read)."""
    while True:
        used = {o.name for o in graph.output} | {x for n in graph.node for x in n.input}
        dead = [n for n in graph.node if not any(out in used for out in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _io_types(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [
        (v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)
    ]


def _check_converted(
    original: onnx.ModelProto, converted: onnx.ModelProto, *, keep_io_types: bool
) -> None:
    """The result must be a valid model with the promised I/O types; a failure is our bug."""
    onnx.checker.check_model(converted, full_check=True)
    expected = _io_types(original)
    if not keep_io_types:
        expected = [(n, TensorProto.FLOAT16 if t == TensorProto.FLOAT else t) for n, t in expected]
    got = _io_types(converted)
    if got != expected:
        raise RuntimeError(f"FP16 conversion changed the graph I/O types: {expected} -> {got}")
