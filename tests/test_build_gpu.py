"""``m3trt build --target cuda`` (for real: without a GPU it builds, checks FP16 on the CPU and
records that no GPU timing was taken) and ``--target tensorrt`` against fakes of TensorRT 11 and
cuda-python whose "plan" runs the candidate ONNX graph with ONNX Runtime, so the build's scoring
and timing through the runtime's TensorRT engine are checked end to end."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.engines.ort_engine import cpu_session
from m3trt.runtime.model_io import ModelInfo
from tests.fake_gpu import DataType, FakeCudaRuntime, FakeTensorRT11, TensorIOMode
from tests.test_tensorrt_builder import FakeTensorRT

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime"
)


def _build(*args) -> object:
    return CliRunner().invoke(main, ["--quiet", "build", *map(str, args)])


def test_cuda_target_builds_fp16_without_a_gpu(tmp_path, tiny_onnx, tiny_data, test_images):
    out = tmp_path / "gpu.m3"
    result = _build(tiny_onnx, "-o", out, "--target", "cuda", "--val", tiny_data)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert (bundle.target, bundle.precision) == ("cuda", "fp16")
    assert bundle.artifacts["engine"].format == "onnx"
    graph = onnx.load(str(bundle.artifact_path("engine")))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    assert bundle.latency["gpu_timing"] is False
    assert "no GPU timing was taken" in bundle.latency["note"]
    assert bundle.accuracy["device"] == "cpu"
    assert bundle.accuracy["label_set_agreement"] >= 0.98
    assert bundle.runtime["cuda"] == {"engine": "onnxruntime", "artifact": "engine", "ms": None}
    assert "prefer_nhwc" in bundle.provenance["cuda_provider_options"]
    # on this CPU host the bundle runs its FP32 reference
    annotator = Annotator.load(out, device="auto")
    assert (annotator.choice.device, annotator.choice.artifact) == ("cpu", "reference")
    assert len(annotator.annotate(sorted(test_images.iterdir())[:4])) == 4


def test_cuda_target_refuses_int8_and_cpu_engines(tmp_path, tiny_onnx):
    result = _build(tiny_onnx, "-o", tmp_path / "a.m3", "--target", "cuda", "--precision", "int8")
    assert result.exit_code == 2 and "--target tensorrt" in result.output
    result = _build(tiny_onnx, "-o", tmp_path / "b.m3", "--target", "cuda", "--engine", "openvino")
    assert result.exit_code == 2 and "onnxruntime-gpu" in result.output


def test_cuda_target_auto_without_images_builds_fp32(tmp_path, tiny_onnx):
    result = CliRunner().invoke(
        main, ["build", str(tiny_onnx), "-o", str(tmp_path / "c.m3"), "--target", "cuda"]
    )
    assert result.exit_code == 0, result.output
    assert "no --val/--calib images to check FP16 on" in result.output
    bundle = load_bundle(tmp_path / "c.m3")
    assert bundle.precision == "fp32" and "engine" not in bundle.artifacts
    assert bundle.runtime["cuda"]["artifact"] == "reference"


# ---------------------------------------------------------------------------------------------
# --target tensorrt against the fakes


def _fake_host(monkeypatch, info: ModelInfo) -> tuple[FakeTensorRT, FakeTensorRT11]:
    """TensorRT 11 (builder + runtime) and one H200; a plan runs the last parsed ONNX graph."""
    cuda = FakeCudaRuntime()
    cuda.install(monkeypatch)
    builder = FakeTensorRT(
        inputs=(
            ("image", (-1, info.image_size, info.image_size, 3)),
            ("tags", (-1, info.num_tags)),
        ),
        plan=b"FAKE-PLAN",
    )
    s, t, c, k = info.image_size, info.num_tags, info.num_labels, info.k_max
    io = {
        "image": (TensorIOMode.INPUT, DataType.UINT8, (-1, s, s, 3)),
        "tags": (TensorIOMode.INPUT, DataType.FLOAT, (-1, t)),
        "scores": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1, c)),
        "quantity": (TensorIOMode.OUTPUT, DataType.FLOAT, (-1,)),
        "k": (TensorIOMode.OUTPUT, DataType.INT32, (-1,)),
        "topk": (TensorIOMode.OUTPUT, DataType.INT32, (-1, k)),
    }

    sessions: dict = {}  # the build's work folder is gone when the bundle is reopened

    def compute(image, tags):
        parsed = [call[1] for call in builder.calls if call[0] == "parse_from_file"][-1]
        if parsed not in sessions:
            sessions[parsed] = cpu_session(parsed)
        session = sessions[parsed]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {"image": image, "tags": tags}), strict=True))

    runtime = FakeTensorRT11(cuda, io=io, compute=compute, version="10.3.0")
    trt = builder.module()
    merged = runtime.module()
    for name in ("Builder", "OnnxParser", "NetworkDefinitionCreationFlag", "MemoryPoolType"):
        setattr(merged, name, getattr(trt, name))
    monkeypatch.setitem(sys.modules, "tensorrt", merged)
    return builder, runtime


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_target_scores_and_times_the_plan_itself(
    monkeypatch, tmp_path, tiny_onnx, tiny_data, precision
):
    _, runtime = _fake_host(monkeypatch, ModelInfo.from_onnx_file(tiny_onnx))
    out = tmp_path / f"trt-{precision}.m3"
    args = [tiny_onnx, "-o", out, "--target", "tensorrt", "--precision", precision]
    result = _build(*args, "--val", tiny_data)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(out)
    assert (bundle.target, bundle.precision) == ("tensorrt", precision)
    assert bundle.artifacts["engine"].format == "tensorrt-plan"
    assert bundle.provenance["tensorrt_plan"]["compute_capability"] == "9.0"
    assert bundle.accuracy["label_set_agreement"] >= 0.98  # scored on the plan's own outputs
    assert bundle.runtime["cuda"]["engine"] == "tensorrt"
    assert bundle.latency["engine_ms"] > 0
    # the plan ran: validation batches of 16 (profile 2: 9..32) and the timing batch
    assert {profile for profile, _ in runtime.executed} >= {2}
    assert all(c.profile is not None for c in runtime.contexts)
    # and the bundle runs through the TensorRT engine at inference time
    annotator = Annotator.load(out, device="auto")
    assert (annotator.choice.device, annotator.choice.engine) == ("cuda", "tensorrt")
    images = np.zeros((3, annotator.info.image_size, annotator.info.image_size, 3), np.uint8)
    assert (
        len(
            annotator.engine.run(
                {"image": images, "tags": np.zeros((3, annotator.info.num_tags), np.float32)}
            )["k"]
        )
        == 3
    )


def test_bound_io_path_gives_the_same_answers_and_keeps_few_buffers(tiny_onnx):
    """The GPU path of the ONNX Runtime engine (I/O bound to buffers kept per batch size),
    taken on the CPU: same outputs as session.run, at most MAX_BOUND_BATCHES sizes kept."""
    from m3trt.runtime.engines.ort_engine import MAX_BOUND_BATCHES, OnnxRuntimeEngine

    info = ModelInfo.from_onnx_file(tiny_onnx)
    rng = np.random.default_rng(0)
    with (
        OnnxRuntimeEngine(tiny_onnx, "cpu") as plain,
        OnnxRuntimeEngine(tiny_onnx, "cpu", bind_io=True) as bound,
    ):
        for batch in (1, 3, 1, 2, 4, 5, 6, 3):
            feeds = {
                "image": rng.integers(0, 256, (batch, info.image_size, info.image_size, 3)).astype(
                    np.uint8
                ),
                "tags": (rng.random((batch, info.num_tags)) < 0.2).astype(np.float32),
            }
            want, got = plain.run(feeds), bound.run(feeds)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
                assert got[name].dtype == want[name].dtype
            assert len(bound._bound) <= MAX_BOUND_BATCHES
        first = bound.run(feeds)["scores"]
        snapshot = first.copy()
        bound.run({"image": 255 - feeds["image"], "tags": 1 - feeds["tags"]})  # same batch
        np.testing.assert_array_equal(first, snapshot)  # earlier results are not overwritten
