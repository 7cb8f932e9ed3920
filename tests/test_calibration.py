"""Calibration: real-image readers, cached ranges, Q/DQ graphs per target, the accuracy guard."""

import json

import numpy as np
import onnx
import pytest
from onnxruntime.quantization.calibrate import TensorData

from m3trt.calibration.data import load_image_set, require_images
from m3trt.calibration.guard import AccuracyBudget, quantize_with_guard
from m3trt.calibration.qdq import write_qdq, zero_points
from m3trt.calibration.ranges import CalibrationSettings, calibrate
from m3trt.errors import InputError, M3Error
from m3trt.evaluation import compare_outputs, run_outputs
from m3trt.runtime.bundle import sha256_file
from m3trt.runtime.engines import open_path


@pytest.fixture(scope="module")
def ranges(tiny_onnx, tiny_sets):
    calib, _ = tiny_sets
    r, hit = calibrate(
        tiny_onnx, calib, CalibrationSettings(method="minmax"), model_sha256=sha256_file(tiny_onnx)
    )
    assert not hit
    return r


def test_cache_hit_and_miss(tmp_path, tiny_onnx, tiny_sets):
    calib, _ = tiny_sets
    cache = tmp_path / "calibration.json"
    sha = sha256_file(tiny_onnx)
    settings = CalibrationSettings(method="minmax")
    first, hit1 = calibrate(tiny_onnx, calib, settings, model_sha256=sha, cache_path=cache)
    again, hit2 = calibrate(tiny_onnx, calib, settings, model_sha256=sha, cache_path=cache)
    assert (hit1, hit2) == (False, True)
    key = json.loads(cache.read_text())["key"]
    assert key["model_sha256"] == sha and key["data_sha256"] == calib.sha256
    name = next(iter(first.keys()))
    assert np.allclose(first[name].range_value, again[name].range_value)
    # Other images, another method or another model: a miss, recomputed.
    fewer = calib.subset(range(len(calib) - 1))
    assert not calibrate(tiny_onnx, fewer, settings, model_sha256=sha, cache_path=cache)[1]
    pct = CalibrationSettings(method="percentile")
    assert not calibrate(tiny_onnx, calib, pct, model_sha256=sha, cache_path=cache)[1]
    assert not calibrate(tiny_onnx, calib, pct, model_sha256="0" * 64, cache_path=cache)[1]


def test_qdq_targets(tmp_path, tiny_onnx, ranges):
    cpu = write_qdq(tiny_onnx, tmp_path / "cpu.onnx", ranges, "cpu")
    trt = write_qdq(tiny_onnx, tmp_path / "trt.onnx", ranges, "tensorrt")
    for path in (cpu, trt):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    trt_points = zero_points(trt)
    assert trt_points and all(v == 0 for values in trt_points.values() for v in values)
    model = onnx.load(str(cpu))
    inits = {t.name: t for t in model.graph.initializer}
    activation_types = {
        inits[n.input[2]].data_type
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[2] in inits
    }
    assert onnx.TensorProto.UINT8 in activation_types
    assert any(v != 0 for values in zero_points(cpu).values() for v in values)  # asymmetric


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_only_the_convolutional_trunk_is_quantized(tmp_path, tiny_onnx, ranges, target):
    """Add and Relu are quantized for the trunk's residuals, and the head's were taken too: the
    logits + tag-path Add rounded every score's logit to steps of 0.128 (labels tied in score,
    label sets 97.7 % equal to FP32 on the quickstart set; 99.3 % with the head in float)."""
    path = write_qdq(tiny_onnx, tmp_path / "q.onnx", ranges, target)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.value_info}
    quantized = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and all(rank.get(name, 4) == 4 for name in quantized), [
        (name, rank.get(name)) for name in quantized if rank.get(name, 4) != 4
    ]


# The tiny model's validation split has 30 images and an O-F1 of 24 %: one changed label moves it
# by 1.5 points, so budgets here allow two (the default, 1 point, suits real validation sets).
TWO_LABELS = AccuracyBudget(max_of1_drop=0.035, max_disagreement=0.2)


def test_quantized_graph_stays_close_to_fp32(tmp_path, tiny_onnx, tiny_sets, ranges):
    _, val = tiny_sets
    result = quantize_with_guard(
        tiny_onnx, tmp_path / "q.onnx", ranges, "cpu", val, budget=TWO_LABELS
    )
    assert result.kept_in_float == []
    assert result.report["of1_drop"] <= 0.035
    assert result.report["label_set_agreement"] > 0.5


def test_guard_keeps_the_damaged_layer_in_float(tmp_path, tiny_onnx, tiny_sets, ranges):
    """Crush one conv's range: the guard must find that conv by measurement and keep it."""
    _, val = tiny_sets
    model = onnx.load(str(tiny_onnx))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    victim = convs[len(convs) // 2]
    tensor = victim.output[0]
    damaged = type(ranges)(ranges.calibration_method, dict(ranges.items()))
    damaged.data[tensor] = TensorData(
        lowest=np.float32(0.0), highest=np.float32(1e-4), hist=None, bins=None
    )
    result = quantize_with_guard(
        tiny_onnx,
        tmp_path / "q.onnx",
        damaged,
        "cpu",
        val,
        budget=TWO_LABELS,
    )
    kept = [k["node"] for k in result.kept_in_float]
    assert victim.name in kept
    assert len(result.attempts) >= 2 and result.attempts[0]["over"]


def test_guard_gives_up_with_a_clear_error(tmp_path, tiny_onnx, tiny_sets, ranges):
    _, val = tiny_sets
    impossible = AccuracyBudget(max_of1_drop=-1.0)  # nothing can gain a point of O-F1
    with pytest.raises(M3Error, match="over the accuracy budget"):
        quantize_with_guard(
            tiny_onnx, tmp_path / "q.onnx", ranges, "cpu", val, budget=impossible, steps=(1, 2)
        )


def test_compare_outputs_counts_agreement(tiny_onnx, tiny_sets):
    _, val = tiny_sets
    with open_path(tiny_onnx) as engine:
        ref = run_outputs(engine, val.batches(16))
    same = compare_outputs(ref, ref, val.labels)
    assert same["label_set_agreement"] == 1.0 and same["of1_drop"] == 0.0
    assert same["max_abs_score_delta"] == 0.0


def test_folder_source_and_too_few_images(tmp_path, tiny_data, tiny_onnx):
    from m3trt.runtime.model_io import ModelInfo

    info = ModelInfo.from_onnx_file(tiny_onnx)
    kw = dict(image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab)
    images = sorted((tiny_data.parent / "images").glob("*.jpg"))[:5]
    folder = tmp_path / "few"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(images):
        (folder / ("sub" if i % 2 else "") / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    data = load_image_set(folder, **kw)
    assert len(data) == 5 and data.labels is None and len(data.failed) == 1
    assert data.tags.shape == (5, info.num_tags) and not data.tags.any()
    with pytest.raises(InputError, match=r"needs at least 32 real images, found 5 \(1 could not"):
        require_images(data, 32, "calibration")
