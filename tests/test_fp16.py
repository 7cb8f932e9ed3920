"""FP16 graph conversion: I/O types kept, compute in FP16, sensitive ops in FP32, same answers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from m3trt.export.fp16 import convert_to_fp16

S, T, C, K, WIDTH = 8, 6, 10, 4, 8
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _annotation_graph(seed: int = 0) -> onnx.ModelProto:
    """A miniature of the exported graph (DESIGN §3.3): preprocessing, a residual conv body,
    global pooling, a tag MLP, a score head with top-K and a quantity head rounded to k."""
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    f32 = np.float32
    inits = [
        _init("scale", f32(255.0)),
        _init("mean", np.array([0.485, 0.456, 0.406], f32).reshape(1, 1, 1, 3)),
        _init("conv1.w", weights(WIDTH, 3, 3, 3)),
        _init("conv1.b", np.zeros(WIDTH, f32)),
        _init("conv2.w", weights(WIDTH, WIDTH, 3, 3)),
        _init("conv2.b", np.full(WIDTH, 0.1, f32)),
        _init("tag.w", weights(WIDTH, T)),
        _init("tag.b", np.zeros(WIDTH, f32)),
        _init("cls.w", weights(C, 2 * WIDTH) * 0.5),
        # well separated label priors, so that FP16 noise cannot reorder the top-K
        _init("cls.b", rng.permutation(np.linspace(-3.0, 3.0, C)).astype(f32)),
        _init("qty.w", weights(1, 2 * WIDTH) * 6.0),
        _init("qty.b", np.array([-0.5], f32)),
        _init("k_max_minus_1", f32(K - 1)),
        _init("one", f32(1.0)),
        _init("half", f32(0.5)),
        _init("k_max", f32(K)),
        _init("topk_k", np.array([K], np.int64)),
        _init("axis1", np.array([1], np.int64)),
    ]
    node = helper.make_node
    nodes = [
        node("Cast", ["image"], ["x_f"], to=FLOAT, name="pre_cast"),
        node("Div", ["x_f", "scale"], ["x_01"], name="pre_div"),
        node("Sub", ["x_01", "mean"], ["x_norm"], name="pre_sub"),
        node("Transpose", ["x_norm"], ["x_nchw"], perm=[0, 3, 1, 2], name="pre_nchw"),
        node("Conv", ["x_nchw", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        node("Add", ["c2", "r1"], ["res"], name="residual_add"),
        node("Relu", ["res"], ["r2"], name="relu2"),
        node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        node("Flatten", ["pooled"], ["visual"], axis=1, name="flatten"),
        node("Gemm", ["tags", "tag.w", "tag.b"], ["t1"], transB=1, name="tag_fc"),
        node("Relu", ["t1"], ["textual"], name="tag_relu"),
        node("Concat", ["visual", "textual"], ["joint"], axis=1, name="concat"),
        node("Gemm", ["joint", "cls.w", "cls.b"], ["logits"], transB=1, name="cls_fc"),
        node("Sigmoid", ["logits"], ["scores"], name="score_sigmoid"),
        node("TopK", ["scores", "topk_k"], ["topk_values", "topk_i64"], axis=1, name="topk"),
        node("Cast", ["topk_i64"], ["topk"], to=TensorProto.INT32, name="topk_cast"),
        node("Gemm", ["joint", "qty.w", "qty.b"], ["z2d"], transB=1, name="qty_fc"),
        node("Squeeze", ["z2d", "axis1"], ["z"], name="qty_squeeze"),
        node("Sigmoid", ["z"], ["qs"], name="qty_sigmoid"),
        node("Mul", ["qs", "k_max_minus_1"], ["qm"], name="qty_mul"),
        node("Add", ["qm", "one"], ["quantity"], name="qty_add"),
        node("Add", ["quantity", "half"], ["q_half"], name="k_add_half"),
        node("Floor", ["q_half"], ["q_round"], name="k_floor"),
        node("Clip", ["q_round", "one", "k_max"], ["q_clip"], name="k_clip"),
        node("Cast", ["q_clip"], ["k"], to=TensorProto.INT32, name="k_cast"),
    ]
    graph = helper.make_graph(
        nodes,
        "m3_mini",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", S, S, 3]),
            helper.make_tensor_value_info("tags", FLOAT, ["batch", T]),
        ],
        [
            helper.make_tensor_value_info("scores", FLOAT, ["batch", C]),
            helper.make_tensor_value_info("quantity", FLOAT, ["batch"]),
            helper.make_tensor_value_info("k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("topk", TensorProto.INT32, ["batch", K]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def fp32_model() -> onnx.ModelProto:
    return _annotation_graph()


@pytest.fixture(scope="module")
def fp16_model(fp32_model) -> onnx.ModelProto:
    return convert_to_fp16(fp32_model)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _float_types(model: onnx.ModelProto, node_name: str) -> set[int]:
    """The float element types a named node reads and writes."""
    types = _types(model)
    node = next(n for n in model.graph.node if n.name == node_name)
    names = [x for x in (*node.input, *node.output) if x]
    return {types[x] for x in names} & {FLOAT, HALF}


def _io(model: onnx.ModelProto) -> list[tuple[str, int]]:
    graph = model.graph
    return [(v.name, v.type.tensor_type.elem_type) for v in (*graph.input, *graph.output)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(["scores", "quantity", "k", "topk"], feed)


def _feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8),
        "tags": (rng.random((batch, T)) < 0.3).astype(np.float32),
    }


def test_io_types_are_unchanged(fp32_model, fp16_model):
    assert _io(fp16_model) == _io(fp32_model)
    assert _io(fp16_model) == [
        ("image", TensorProto.UINT8),
        ("tags", FLOAT),
        ("scores", FLOAT),
        ("quantity", FLOAT),
        ("k", TensorProto.INT32),
        ("topk", TensorProto.INT32),
    ]
    onnx.checker.check_model(fp16_model, full_check=True)


def test_the_input_model_is_not_modified(fp32_model):
    before = fp32_model.SerializeToString()
    convert_to_fp16(fp32_model)
    assert fp32_model.SerializeToString() == before


def test_conv_and_gemm_weights_are_fp16(fp16_model):
    inits = {t.name: t.data_type for t in fp16_model.graph.initializer}
    heavy = [n for n in fp16_model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(heavy) == 5
    for node in heavy:
        assert {inits[x] for x in node.input[1:]} == {HALF}, node.name
        assert _float_types(fp16_model, node.name) == {HALF}, node.name


@pytest.mark.parametrize(
    "name",
    [
        "pre_cast",
        "pre_div",
        "pre_sub",
        "gap",
        "score_sigmoid",
        "topk",
        "qty_squeeze",
        "qty_sigmoid",
        "qty_mul",
        "qty_add",
        "k_add_half",
        "k_floor",
        "k_clip",
        "k_cast",
    ],
)
def test_sensitive_ops_run_in_fp32(fp16_model, name):
    assert _float_types(fp16_model, name) == {FLOAT}


@pytest.mark.parametrize("name", ["relu1", "residual_add", "relu2", "tag_relu", "concat"])
def test_the_body_runs_in_fp16(fp16_model, name):
    assert _float_types(fp16_model, name) == {HALF}


def test_fp32_regions_do_not_round_trip_through_fp16(fp16_model):
    """Sigmoid -> TopK and the k rounding chain must exchange FP32 tensors directly."""
    producer = {out: n for n in fp16_model.graph.node for out in n.output}
    for node in fp16_model.graph.node:
        if node.op_type != "Cast" or node.attribute[0].i != FLOAT:
            continue
        parent = producer.get(node.input[0])
        assert not (parent and parent.op_type == "Cast" and parent.attribute[0].i == HALF)
    topk = next(n for n in fp16_model.graph.node if n.name == "topk")
    assert producer[topk.input[0]].name == "score_sigmoid"


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_onnxruntime_outputs_match_the_fp32_graph(fp32_model, fp16_model, batch):
    feed = _feed(batch, seed=batch)
    scores32, q32, k32, topk32 = _run(fp32_model, feed)
    scores16, q16, k16, topk16 = _run(fp16_model, feed)
    assert scores16.dtype == np.float32 and q16.dtype == np.float32
    assert k16.dtype == np.int32 and topk16.dtype == np.int32
    np.testing.assert_allclose(scores16, scores32, atol=1e-2)
    np.testing.assert_allclose(q16, q32, atol=1e-2)
    np.testing.assert_array_equal(k16, k32)
    np.testing.assert_array_equal(topk16, topk32)
    assert np.abs(scores16 - scores32).max() > 0  # FP16 really ran
    if batch == 32:  # the inputs exercise several label counts, not one constant k
        assert len(np.unique(k32)) >= 3


def test_blocking_can_be_turned_off(fp32_model):
    """The knobs matter: without them the sigmoid and the rounding run in FP16."""
    model = convert_to_fp16(fp32_model, block_ops=(), keep_ends_fp32=False)
    assert _float_types(model, "score_sigmoid") == {HALF}
    assert _float_types(model, "k_floor") == {HALF}
    assert _io(model) == _io(fp32_model)


def test_keep_io_types_false_makes_float_io_fp16(fp32_model):
    model = convert_to_fp16(fp32_model, keep_io_types=False)
    io = dict(_io(model))
    assert io["tags"] == HALF and io["scores"] == HALF and io["quantity"] == HALF
    assert io["image"] == TensorProto.UINT8 and io["k"] == TensorProto.INT32


def test_exported_m3_graph_converts_and_agrees():
    """The real exporter's graph (random ResNet-18 M3 at 64 px) through the converter."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from m3trt.config import CheckpointConfig, ModelConfig, Preprocessing
    from m3trt.export.graph import build_graph
    from m3trt.export.onnx_export import simplify, to_onnx
    from m3trt.model import M3Net

    torch.manual_seed(0)
    config = ModelConfig(
        num_labels=20, num_tags=30, backbone="resnet18", tag_hidden=64, visual_dim=64, k_max=5
    )
    checkpoint = CheckpointConfig(
        model=config,
        preprocessing=Preprocessing(image_size=64),
        label_names=[f"label{i}" for i in range(20)],
        tag_vocab=[f"tag{i}" for i in range(30)],
    )
    fp32 = simplify(to_onnx(build_graph(M3Net(config), checkpoint, fused=True), checkpoint, 18))
    fp16 = convert_to_fp16(fp32)
    assert _io(fp16) == _io(fp32)
    rng = np.random.default_rng(0)
    feed = {
        "image": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "tags": (rng.random((8, 30)) < 0.2).astype(np.float32),
    }
    scores32, q32, k32, topk32 = _run(fp32, feed)
    scores16, q16, k16, topk16 = _run(fp16, feed)
    np.testing.assert_allclose(scores16, scores32, atol=1e-2)
    np.testing.assert_allclose(q16, q32, atol=1e-2)
    np.testing.assert_array_equal(k16, k32)
    np.testing.assert_array_equal(topk16, topk32)
    half_convs = [n for n in fp16.graph.node if n.op_type == "Conv"]
    inits = {t.name: t.data_type for t in fp16.graph.initializer}
    assert half_convs and all(inits[n.input[1]] == HALF for n in half_convs)
