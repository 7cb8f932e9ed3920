"""The uint8 stem: the CPU INT8 graph reads the image bytes as the stem conv's quantized input."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from m3trt.calibration import uint8_stem
from m3trt.calibration.qdq import write_qdq
from m3trt.calibration.ranges import CalibrationSettings, calibrate
from m3trt.runtime.bundle import sha256_file
from m3trt.runtime.engines.ort_engine import cpu_session

SHIFT = np.array([123.675, 116.28, 103.53], np.float32)


def _stem_graph(bias: bool = True) -> onnx.ModelProto:
    """image uint8 NHWC -> Transpose -> Cast -> Sub(255 mean) -> Conv 3x3 pad 1, as exported."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.01, (4, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(SHIFT.reshape(1, 3, 1, 1), "shift"),
        numpy_helper.from_array(weight, "w"),
    ]
    conv_inputs = ["centred", "w"]
    if bias:
        inits.append(numpy_helper.from_array(np.full(4, 0.5, np.float32), "b"))
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], name="t", perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["float"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["float", "shift"], ["centred"], name="sub"),
        helper.make_node("Conv", conv_inputs, ["out"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", 8, 8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


@pytest.mark.parametrize("bias", [True, False])
def test_prepare_is_exact_away_from_the_padding(bias):
    model = _stem_graph(bias)
    stem = uint8_stem.find_stem(model)
    assert stem is not None and stem.pixels == "nchw" and stem.centred == "centred"
    assert stem.zero_point == round(float(SHIFT.mean()))
    image = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    before, after = _run(model, image), _run(uint8_stem.prepare(model, stem), image)
    np.testing.assert_allclose(after[:, :, 1:-1, 1:-1], before[:, :, 1:-1, 1:-1], atol=1e-4)
    # Under the padding the prepared graph sees z instead of each channel's mean: measurably
    # different, and bounded by |z - 255 mean_c| times the weights.
    assert not np.allclose(after, before, atol=1e-4)
    weight = numpy_helper.to_array(model.graph.initializer[1])
    bound = np.abs(weight).sum(axis=(2, 3)) @ np.abs(stem.zero_point - SHIFT)
    assert np.all(np.abs(after - before).max(axis=(0, 2, 3)) <= bound + 1e-4)


def test_no_stem_without_the_chain():
    model = _stem_graph()
    model.graph.node[2].op_type = "Add"  # not a mean subtraction
    assert uint8_stem.find_stem(model) is None


@pytest.fixture(scope="module")
def ranges(tiny_onnx, tiny_sets):
    calib, _ = tiny_sets
    settings = CalibrationSettings(method="minmax")
    return calibrate(tiny_onnx, calib, settings, model_sha256=sha256_file(tiny_onnx))[0]


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_cpu_int8_graph_reads_the_image_bytes(tmp_path, tiny_onnx, tiny_sets, ranges):
    stem = uint8_stem.find_stem(onnx.load(str(tiny_onnx)))
    assert stem is not None, "the exporter's graph should start Transpose -> Cast -> Sub -> Conv"
    fast = write_qdq(tiny_onnx, tmp_path / "fast.onnx", ranges, "cpu")
    plain = write_qdq(tiny_onnx, tmp_path / "plain.onnx", ranges, "cpu", uint8_input=False)
    model = onnx.load(str(fast))
    onnx.checker.check_model(model, full_check=True)
    assert "Cast" in _ops(plain) and "Sub" in _ops(plain)
    # The image bytes go straight into the (space-to-depth) stem: padded, shuffled, dequantized.
    readers = [n.op_type for n in model.graph.node if "image" in n.input and n.op_type != "Shape"]
    assert readers == ["Pad"]
    assert "Sub" not in _ops(fast)
    _, val = tiny_sets
    feeds = {"image": val.images[:16], "tags": val.tags[:16]}
    reference = cpu_session(tiny_onnx).run(["scores"], feeds)[0]
    for path in (fast, plain):
        scores = cpu_session(path).run(["scores"], feeds)[0]
        assert np.abs(scores - reference).max() < 0.05


def test_uint8_stem_skipped_when_the_stem_stays_float(tmp_path, tiny_onnx, ranges):
    stem = uint8_stem.find_stem(onnx.load(str(tiny_onnx)))
    path = write_qdq(tiny_onnx, tmp_path / "q.onnx", ranges, "cpu", nodes_to_exclude=[stem.conv])
    assert "Cast" in _ops(path) and "Sub" in _ops(path)


def test_tensorrt_target_keeps_float_preprocessing(tmp_path, tiny_onnx, ranges):
    path = write_qdq(tiny_onnx, tmp_path / "trt.onnx", ranges, "tensorrt")
    assert "Sub" in _ops(path)


def test_guard_turns_the_uint8_stem_off_when_it_costs_accuracy(
    tmp_path, monkeypatch, tiny_onnx, tiny_sets, ranges
):
    """A damaged stem bias stands in for a model whose border padding matters."""
    from m3trt.calibration.guard import AccuracyBudget, quantize_with_guard

    real_prepare = uint8_stem.prepare

    def damaged(model, stem):
        prepared = real_prepare(model, stem)
        conv = next(n for n in prepared.graph.node if n.name == stem.conv)
        bias = next(t for t in prepared.graph.initializer if t.name == conv.input[2])
        values = numpy_helper.to_array(bias) + 5.0
        bias.CopyFrom(numpy_helper.from_array(values.astype(np.float32), bias.name))
        return prepared

    monkeypatch.setattr(uint8_stem, "prepare", damaged)
    _, val = tiny_sets
    budget = AccuracyBudget(max_of1_drop=0.035, max_disagreement=0.2)  # two labels of 30 images
    result = quantize_with_guard(tiny_onnx, tmp_path / "q.onnx", ranges, "cpu", val, budget=budget)
    first = result.attempts[0]
    assert first["uint8_input"] and first["over"]
    assert result.uint8_input is False and result.kept_in_float == []


def test_space_to_depth_stem_is_bit_identical(tmp_path, monkeypatch, tiny_onnx, tiny_sets, ranges):
    """The stride-2 stem rewritten over the 2x2 space-to-depth image: same integers, same output."""
    fast = write_qdq(tiny_onnx, tmp_path / "s2d.onnx", ranges, "cpu")
    model = onnx.load(str(fast))
    stem_conv = next(n for n in model.graph.node if n.name.endswith("conv2d"))
    kernel = next(a.ints for a in stem_conv.attribute if a.name == "kernel_shape")
    assert list(kernel) == [4, 4] and "Pad" in _ops(fast)
    monkeypatch.setattr(uint8_stem, "space_to_depth", lambda _m, _s: False)
    plain = write_qdq(tiny_onnx, tmp_path / "plain.onnx", ranges, "cpu")
    assert "Pad" not in _ops(plain)
    _, val = tiny_sets
    feeds = {"image": val.images, "tags": val.tags}
    ours, theirs = cpu_session(fast).run(None, feeds), cpu_session(plain).run(None, feeds)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_space_to_depth_weights_reorder_the_kernel():
    weight = np.arange(2 * 3 * 7 * 7, dtype=np.int8).reshape(2, 3, 7, 7)
    out = uint8_stem.space_to_depth_weights(weight)
    assert out.shape == (2, 12, 4, 4)
    # Phase (r, s) of channel c holds kernel taps (2m + r - 1, 2n + s - 1); tap -1 is the zero pad.
    assert out[1, (1 * 2 + 0) * 3 + 2, 1, 2] == weight[1, 2, 2, 3]
    assert out[0, 0, 0, :].tolist() == [0, 0, 0, 0]
    assert np.count_nonzero(out) == np.count_nonzero(weight)


def _conv_weights(model: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    """Each Conv's quantized int8 weights, in graph (topological) order."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    weights = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            dequantize = producer[node.input[1]]
            assert dequantize.op_type == "DequantizeLinear", node.name
            weights.append((node.name, numpy_helper.to_array(inits[dequantize.input[0]])))
    return weights


def test_cpu_int8_stem_weights_are_seven_bit_and_the_rest_eight(int8_bundle):
    """The stem conv reads whole pixel bytes: without VNNI, u8 x s8 kernels sum pairs of products
    in 16 bits, which 255 x 127 x 2 overflows and 255 x 64 x 2 does not."""
    weights = _conv_weights(onnx.load(str(int8_bundle / "model.int8.qdq.onnx")))
    (stem_name, stem), *rest = weights
    assert stem.dtype == np.int8 and np.abs(stem.astype(int)).max() <= 64, stem_name
    assert rest and all(np.abs(w.astype(int)).max() == 127 for _, w in rest)
