"""The engine interface and the registry: feeds checked before any runtime sees them, the
choice of engine kind and artifact per device with its reasons, OpenVINO against ONNX Runtime."""

from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest

from m3trt.errors import M3Error
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.engines import (
    REGISTRY,
    Engine,
    EngineError,
    EngineKind,
    EngineUnavailable,
    TensorSpec,
    open_engine,
    open_path,
    register,
)
from m3trt.runtime.engines.registry import artifact_roles, preferred_kinds


class Echo(Engine):
    """An engine that returns its input's batch size: enough to test the interface itself."""

    kind = "echo"
    device = "cpu"
    closed = 0

    def __init__(self, path=None, device="cpu", threads=None) -> None:
        self.path, self.device = path, device
        self.inputs = [TensorSpec("image", np.dtype(np.uint8), (None, 4, 4, 3))]
        self.outputs = [TensorSpec("n", np.dtype(np.int64), (None,))]
        self.batch_range = (1, 8)
        self.description = f"echo ({path})"

    def run(self, feeds):
        self.check_feeds(feeds)
        return {"n": np.array([len(feeds["image"])])}

    def close(self) -> None:
        Echo.closed += 1


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "missing input 'image'"),
        ({"image": np.zeros((2, 4, 4, 3), np.float32)}, "is float32, the engine takes uint8"),
        ({"image": np.zeros((2, 4, 4), np.uint8)}, "has 3 dims"),
        ({"image": np.zeros((2, 5, 4, 3), np.uint8)}, "dim 1 is 5, the engine takes 4"),
        ({"image": np.zeros((9, 4, 4, 3), np.uint8)}, "batch 9 is outside the engine's range 1..8"),
    ],
)
def test_feeds_are_checked_with_one_clear_line(feeds, message):
    with pytest.raises(EngineError, match=message):
        Echo().run(feeds)


def test_engines_are_context_managers():
    before = Echo.closed
    with Echo() as engine:
        assert engine.run({"image": np.zeros((3, 4, 4, 3), np.uint8)})["n"][0] == 3
    assert Echo.closed == before + 1
    with pytest.raises(EngineError, match="cannot split its timing"):
        Echo().run_timed({})


@pytest.fixture
def fake_kinds(monkeypatch):
    """Register engine kinds backed by ``Echo``: one that runs on a (fake) GPU, one missing."""
    module = types.ModuleType("fake_engines")
    module.Echo = Echo
    module.gpu_ok = lambda device: (True, "fake GPU")
    module.missing = lambda device: (False, "fakelib is not installed: pip install fakelib")
    monkeypatch.setitem(sys.modules, "fake_engines", module)
    saved = dict(REGISTRY)
    register(
        EngineKind(
            "fakegpu", ("tensorrt-plan",), ("cuda",), "fake_engines:Echo", "fake_engines:gpu_ok"
        )
    )
    register(
        EngineKind("fakemissing", ("onnx",), ("cpu",), "fake_engines:Echo", "fake_engines:missing")
    )
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def _as_tensorrt_bundle(bundle):
    """The same bundle described as a TensorRT one (only the metadata matters here)."""
    plan = dataclasses.replace(bundle.artifacts["engine"], format="tensorrt-plan")
    return dataclasses.replace(
        bundle, target="tensorrt", artifacts={**bundle.artifacts, "engine": plan}
    )


def test_auto_prefers_a_usable_gpu_engine_and_says_why(fake_kinds, int8_bundle):
    bundle = _as_tensorrt_bundle(load_bundle(int8_bundle, verify=False))
    engine, choice = open_engine(bundle, "auto")
    assert (choice.device, choice.engine, choice.artifact) == ("cuda", "fakegpu", "engine")
    engine, choice = open_engine(bundle, "cpu")  # a plan never runs on the CPU
    assert choice.artifact in ("graph", "reference") and choice.engine != "fakegpu"
    engine.close()


def test_an_engine_that_is_not_installed_is_skipped_with_its_reason(fake_kinds, int8_bundle):
    bundle = load_bundle(int8_bundle, verify=False)
    with pytest.raises(M3Error, match="fakemissing on cpu: fakelib is not installed"):
        open_engine(bundle, "cpu", engine="fakemissing")
    with pytest.raises(M3Error, match="no artifact of this bundle is in a format it reads"):
        open_engine(bundle, "cpu", engine="fakegpu")


def test_the_build_measured_choice_goes_first(int8_bundle):
    bundle = load_bundle(int8_bundle, verify=False)
    for best, role in (("openvino", "graph"), ("onnxruntime", "engine")):
        runtime = {"cpu": {"engine": best, "artifact": role}}
        chosen = dataclasses.replace(bundle, runtime=runtime)
        assert preferred_kinds(chosen, "cpu")[0] == best
        engine, choice = open_engine(chosen, "cpu")
        assert (choice.engine, choice.artifact) == (best, role), choice
        assert "fastest when the bundle was built" in choice.reason
        engine.close()


def test_a_gpu_never_runs_a_cpu_format(int8_bundle):
    bundle = load_bundle(int8_bundle, verify=False)
    assert [r for r, _ in artifact_roles(bundle, "cuda")] == ["reference"]
    with pytest.raises(M3Error, match="--device cuda: .*no CUDA provider"):
        open_engine(bundle, "cuda")


def test_open_path_refuses_an_unavailable_kind(fake_kinds, tiny_onnx):
    with pytest.raises(EngineUnavailable, match="fakelib is not installed"):
        open_path(tiny_onnx, engine="fakemissing")
    with pytest.raises(M3Error, match="unknown engine 'nope'"):
        open_path(tiny_onnx, engine="nope")


def test_openvino_agrees_with_onnx_runtime_in_fp32(int8_bundle, tiny_data):
    """OpenVINO on the FP32 reference gives ONNX Runtime's label sets on >= 98 % of the images."""
    from m3trt.data.manifest import read_manifest
    from m3trt.evaluation import compare_outputs, run_outputs

    bundle = load_bundle(int8_bundle, verify=False)
    images = [record.path for record in read_manifest(tiny_data).records]
    ort = Annotator.load(int8_bundle, device="cpu", engine="onnxruntime")
    stack = np.stack([ort.prepare(path) for path in images])
    tags = np.zeros((len(images), bundle.model.num_tags), np.float32)
    outs = {}
    for kind in ("onnxruntime", "openvino"):
        with open_path(bundle.artifact_path("reference"), engine=kind) as engine:
            outs[kind] = run_outputs(engine, [(stack, tags)])
    report = compare_outputs(outs["onnxruntime"], outs["openvino"], None)
    assert report["label_set_agreement"] >= 0.98, report
    assert outs["openvino"].k.dtype == np.int32  # k, as the contract says


def test_openvino_int8_runs_m3trts_qdq_graph(int8_bundle):
    """`--engine openvino` on an INT8 bundle runs its portable Q/DQ graph (uint8 stem and all),
    even one built for ONNX Runtime (the build's timing of both: test_build.py)."""
    ov = Annotator.load(int8_bundle, device="cpu", engine="openvino")
    assert (ov.choice.engine, ov.choice.artifact) == ("openvino", "graph")
    [annotation] = ov.annotate([np.zeros((40, 30, 3), np.uint8)])
    assert 1 <= annotation.k <= ov.info.k_max


def test_openvino_pins_threads_only_when_they_take_every_core(int8_bundle, monkeypatch):
    """Pinned, two 1-thread OpenVINO processes (Ray's actors) shared one core of two at half
    the throughput (benchmarks/results/openvino_pinning.md): fewer threads than cores, unpinned."""
    from m3trt.runtime.engines import openvino_engine

    assert openvino_engine.compile_config(1, cores=2)["ENABLE_CPU_PINNING"] == "NO"
    assert openvino_engine.compile_config(3, cores=8)["INFERENCE_NUM_THREADS"] == "3"
    for threads in (2, None):  # the whole machine: OpenVINO's own default
        config = openvino_engine.compile_config(threads, cores=2)
        assert "ENABLE_CPU_PINNING" not in config and config["INFERENCE_NUM_THREADS"] == "2"

    monkeypatch.setattr(openvino_engine, "usable_cores", lambda: 4)
    path = load_bundle(int8_bundle, verify=False).artifact_path("reference")
    with open_path(path, engine="openvino", threads=1) as engine:
        assert engine.compiled.get_property("ENABLE_CPU_PINNING") is False
        assert engine.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_an_engine_that_answers_less_closely_is_not_kept():
    from pathlib import Path

    from m3trt.build.cpu import _hold_alternatives_to_onnxruntime
    from m3trt.build.options import Candidate, choose

    ort = Candidate("int8", Path("a"), {"label_set_agreement": 0.95}, latency_ms=10.0)
    close = Candidate("int8", Path("b"), {"label_set_agreement": 0.94}, latency_ms=9.0)
    far = Candidate("int8", Path("c"), {"label_set_agreement": 0.55}, latency_ms=5.0)
    close.engine = far.engine = "openvino"
    _hold_alternatives_to_onnxruntime([ort, close, far])
    assert not close.reasons and "keeps 55.0% of FP32's label sets" in far.reasons[0]
    assert choose([ort, close, far]) is close
