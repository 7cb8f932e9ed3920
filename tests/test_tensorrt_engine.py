"""The TensorRT engine against strict fakes of TensorRT 11 and cuda-python (tests/fake_gpu.py):
profile choice, buffer sizing from tensor metadata, compatibility checks at load, the fallback
to the bundle's ONNX graph, and every failing call turned into one clear error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from m3trt.errors import M3Error
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.bundle_writer import write_bundle
from m3trt.runtime.engines import EngineError, EngineUnavailable, open_engine
from m3trt.runtime.engines.tensorrt_engine import (
    Profile,
    TensorRTEngine,
    availability,
    choose_profile,
)
from m3trt.runtime.model_io import ModelInfo
from tests.fake_gpu import C, CudaError, FakeCudaRuntime, FakeTensorRT11, K, S, T
from tests.fake_gpu import reference_outputs as expected

H200_11 = {"tensorrt": "11.4.0", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture
def gpu(monkeypatch):
    """A fake host with TensorRT 11 and one H200; returns (trt fake, cuda fake)."""
    cuda = FakeCudaRuntime()
    cuda.install(monkeypatch)
    trt = FakeTensorRT11(cuda)
    trt.install(monkeypatch)
    return trt, cuda


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "engine.plan"
    path.write_bytes(b"FAKE-PLAN")
    return path


def _feeds(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8),
        "tags": (rng.random((batch, T)) < 0.3).astype(np.float32),
    }


def test_profile_choice_is_the_tightest_that_holds_the_batch():
    profiles = [Profile(0, 1, 64), Profile(1, 1, 1), Profile(2, 2, 8), Profile(3, 9, 32)]
    assert [choose_profile(profiles, b).index for b in (1, 2, 8, 9, 32, 33)] == [1, 2, 2, 3, 3, 0]
    with pytest.raises(EngineError, match=r"batch 3 fits none of the plan's profiles \(1..1, 4"):
        choose_profile([Profile(0, 1, 1), Profile(1, 4, 8)], 3)


def test_runs_every_batch_on_its_profile_with_the_right_answers(gpu, plan):
    trt, _ = gpu
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        assert engine.batch_range == (1, 64)
        assert [s.name for s in engine.inputs] == ["image", "tags"]
        assert engine.outputs[2].dtype == np.int32 and engine.outputs[3].shape == (None, K)
        assert "4 profile(s)" in engine.description
        for batch in (1, 5, 8, 9, 64, 1):
            feeds = _feeds(batch, seed=batch)
            out = engine.run(feeds)
            want = expected(feeds["image"], feeds["tags"])
            assert set(out) == set(want)
            for name in want:
                np.testing.assert_array_equal(out[name], want[name])
                assert out[name].shape == want[name].shape
        assert trt.executed == [(0, 1), (1, 5), (1, 8), (2, 9), (3, 64), (0, 1)]
        # one context per profile, each bound to its own profile
        assert [c.profile for c in trt.contexts] == [0, 1, 2, 3]


def test_buffers_are_sized_from_tensor_metadata_at_the_largest_batch(gpu, plan):
    _, cuda = gpu
    with TensorRTEngine(plan, recorded=H200_11):
        sizes = sorted(cuda.malloc_sizes)
    want = [64 * S * S * 3, 64 * T * 4, 64 * C * 4, 64 * 4, 64 * 4, 64 * K * 4]
    assert sizes == sorted(want)


def test_outputs_are_copies_not_views_of_the_reused_pinned_buffers(gpu, plan):
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        first = engine.run(_feeds(4, seed=1))
        kept = {k: v.copy() for k, v in first.items()}
        engine.run(_feeds(4, seed=2))
        for name in kept:
            np.testing.assert_array_equal(first[name], kept[name])


def test_run_timed_splits_copies_and_compute_with_events(gpu, plan):
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        assert engine.supports_split_timing
        out, timing = engine.run_timed(_feeds(3))
    assert out["scores"].shape == (3, C)
    # the fake clock: 0.25 per copy, 1.0 per execution: 2 input copies, 4 output copies
    assert timing == (0.5, 1.0, 1.0)


def test_close_frees_everything_once_and_refuses_later_runs(gpu, plan):
    _, cuda = gpu
    engine = TensorRTEngine(plan, recorded=H200_11)
    engine.run(_feeds(2))
    assert cuda.outstanding() == {"device": 6, "host": 6, "streams": 1, "events": 4}
    engine.close()
    engine.close()
    assert cuda.outstanding() == {"device": 0, "host": 0, "streams": 0, "events": 0}
    with pytest.raises(EngineError, match="closed"):
        engine.run(_feeds(2))


def test_bad_feeds_are_refused_before_the_gpu_sees_them(gpu, plan):
    trt, _ = gpu
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        with pytest.raises(EngineError, match="batch 65 is outside the engine's range 1..64"):
            engine.run(_feeds(65))
        bad = _feeds(2)
        bad["tags"] = bad["tags"].astype(np.float64)
        with pytest.raises(EngineError, match="'tags' is float64"):
            engine.run(bad)
    assert trt.executed == []


@pytest.mark.parametrize(
    "recorded, words",
    [
        ({**H200_11, "tensorrt": "10.3.0"}, "built with TensorRT 10.3.0, this host has 11.4.0"),
        ({**H200_11, "compute_capability": "8.6"}, "compute capability 8.6"),
        ({"gpu_name": "NVIDIA H200"}, "does not record the TensorRT version"),
    ],
)
def test_an_incompatible_plan_is_unavailable_with_the_reason(gpu, plan, recorded, words):
    trt, cuda = gpu
    with pytest.raises(EngineUnavailable, match=words) as err:
        TensorRTEngine(plan, recorded=recorded)
    assert "m3trt build" in str(err.value) and "\n" not in str(err.value)
    assert trt.contexts == [] and cuda.outstanding()["device"] == 0


def test_another_gpu_model_of_the_same_capability_runs_with_a_note(gpu, plan):
    recorded = {**H200_11, "gpu_name": "NVIDIA H100 80GB HBM3"}
    with TensorRTEngine(plan, recorded=recorded) as engine:
        assert "tuned on NVIDIA H100 80GB HBM3, running on NVIDIA H200" in engine.note


def test_a_hardware_compatible_plan_runs_on_any_ampere_or_later_gpu(gpu, plan):
    recorded = {**H200_11, "compute_capability": "8.0"}
    recorded["hardware_compatibility_level"] = "AMPERE_PLUS"
    with TensorRTEngine(plan, recorded=recorded) as engine:
        assert engine.run(_feeds(1))["k"].shape == (1,)


def test_a_plan_tensorrt_cannot_deserialize_is_unavailable(gpu, tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"NOT-A-PLAN")
    with pytest.raises(EngineUnavailable, match="cannot load the plan .*magicTag"):
        TensorRTEngine(plan, recorded=H200_11)


@pytest.mark.parametrize(
    "setting, words",
    [
        ({"context_ok": False}, "could not create a context"),
        ({"profile_select_ok": False}, "refused optimization profile 0"),
    ],
)
def test_tensorrt_calls_returning_none_or_false_are_errors(monkeypatch, plan, setting, words):
    cuda = FakeCudaRuntime()
    cuda.install(monkeypatch)
    FakeTensorRT11(cuda, **setting).install(monkeypatch)
    with pytest.raises(EngineError, match=words):
        TensorRTEngine(plan, recorded=H200_11)
    assert cuda.outstanding() == {"device": 0, "host": 0, "streams": 0, "events": 0}


def test_a_failed_execution_is_an_error_not_stale_outputs(monkeypatch, plan):
    cuda = FakeCudaRuntime()
    cuda.install(monkeypatch)
    trt = FakeTensorRT11(cuda)
    trt.install(monkeypatch)
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        engine.run(_feeds(2))
        trt.execute_ok = False
        with pytest.raises(EngineError, match="execute_async_v3 failed at batch 2"):
            engine.run(_feeds(2))


@pytest.mark.parametrize(
    "call, code",
    [
        ("cudaMalloc", CudaError.cudaErrorMemoryAllocation),
        ("cudaMallocHost", CudaError.cudaErrorMemoryAllocation),
        ("cudaStreamCreateWithFlags", CudaError.cudaErrorInvalidValue),
        ("cudaEventCreate", CudaError.cudaErrorInvalidValue),
    ],
)
def test_cuda_failures_at_load_name_the_call_and_leak_nothing(monkeypatch, plan, call, code):
    cuda = FakeCudaRuntime(fail={call: code})
    cuda.install(monkeypatch)
    FakeTensorRT11(cuda).install(monkeypatch)
    with pytest.raises(EngineError, match=f"CUDA {call} failed: {code.name}"):
        TensorRTEngine(plan, recorded=H200_11)
    assert cuda.outstanding() == {"device": 0, "host": 0, "streams": 0, "events": 0}


@pytest.mark.parametrize("call", ["cudaMemcpyAsync", "cudaStreamSynchronize", "cudaEventRecord"])
def test_cuda_failures_while_running_name_the_call(gpu, plan, call):
    _, cuda = gpu
    with TensorRTEngine(plan, recorded=H200_11) as engine:
        cuda.fail[call] = CudaError.cudaErrorInvalidValue
        with pytest.raises(EngineError, match=f"CUDA {call} failed: cudaErrorInvalidValue"):
            engine.run(_feeds(2))


def test_unavailable_without_tensorrt_or_on_the_cpu(monkeypatch, plan):
    assert availability("cpu") == (False, "TensorRT runs on NVIDIA GPUs only, not cpu")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, why = availability("cuda")
    assert not ok and "pip install" in why
    with pytest.raises(EngineUnavailable, match="tensorrt"):
        TensorRTEngine(plan)


# ---------------------------------------------------------------------------------------------
# Through the registry: a TensorRT bundle


@pytest.fixture
def tensorrt_bundle(tmp_path, tiny_onnx):
    """A TensorRT bundle of the tiny model whose plan the fake deserializes."""
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"FAKE-PLAN")
    write_bundle(
        tmp_path / "trt.m3",
        model=ModelInfo.from_onnx_file(tiny_onnx),
        target="tensorrt",
        precision="fp16",
        files={"reference": (tiny_onnx, "onnx", "fp32"), "engine": (plan, "tensorrt-plan", "fp16")},
        provenance={"tensorrt_plan": dict(H200_11)},
        runtime={"cuda": {"engine": "tensorrt", "artifact": "engine", "ms": 1.0}},
    )
    return tmp_path / "trt.m3"


def test_a_compatible_bundle_opens_the_tensorrt_engine(gpu, tensorrt_bundle):
    engine, choice = open_engine(load_bundle(tensorrt_bundle), "auto")
    with engine:
        assert (choice.device, choice.engine, choice.artifact) == ("cuda", "tensorrt", "engine")
        assert "fastest when the bundle was built" in choice.reason
        assert isinstance(engine, TensorRTEngine)


def test_an_incompatible_plan_falls_back_to_the_onnx_graph_with_the_reason(gpu, tensorrt_bundle):
    manifest = tensorrt_bundle / "bundle.json"
    data = json.loads(manifest.read_text())
    data["provenance"]["tensorrt_plan"]["tensorrt"] = "10.3.0"
    manifest.write_text(json.dumps(data))
    engine, choice = open_engine(load_bundle(tensorrt_bundle), "auto")
    with engine:
        assert choice.engine == "onnxruntime" and choice.artifact == "reference"
        assert "plan was built with TensorRT 10.3.0, this host has 11.4.0" in choice.summary()
    with pytest.raises(M3Error, match="--engine tensorrt: tensorrt on cuda: .*TensorRT 10.3.0"):
        open_engine(load_bundle(tensorrt_bundle), "auto", engine="tensorrt")


def test_build_numbers_count_when_both_sides_record_them():
    from m3trt.tensorrt.compat import check_plan_compatible

    built = {**H200_11, "tensorrt": "11.4.0.12"}
    assert check_plan_compatible(built, {**H200_11, "tensorrt": "11.4.0.12"}) is None
    assert check_plan_compatible(built, H200_11) is None  # this host does not say its build
    reason = check_plan_compatible(built, {**H200_11, "tensorrt": "11.4.0.13"})
    assert reason is not None and "build 11.4.0.13" in reason


def test_ampere_plus_plans_are_refused_before_ampere():
    from m3trt.tensorrt.compat import check_plan_compatible

    built = {**H200_11, "hardware_compatibility_level": "AMPERE_PLUS"}
    turing = {**H200_11, "compute_capability": "7.5", "gpu_name": "Tesla T4"}
    reason = check_plan_compatible(built, turing)
    assert reason is not None and "Ampere and later" in reason and "7.5 (Tesla T4)" in reason
