"""The TensorRT plan builder without TensorRT: pure logic, plus ``build_plan`` against fakes.

The fakes record what the builder asks of TensorRT and cuda-python (names and signatures as in
TensorRT 10's Python bindings); they prove the calls and their order, not TensorRT itself.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
from onnx import TensorProto, helper

import m3trt.tensorrt
from m3trt.errors import InputError, M3Error
from m3trt.tensorrt.builder import PlanBuildError, build_plan
from m3trt.tensorrt.compat import check_plan_compatible
from m3trt.tensorrt.environment import gpu_info, require_tensorrt, tensorrt_available
from m3trt.tensorrt.parser_errors import ParserIssue, format_parser_errors
from m3trt.tensorrt.profiles import (
    BatchProfile,
    batch_profiles,
    input_shapes_from_onnx,
    profile_shapes,
)

S, T = 64, 30
H200 = {"tensorrt": "10.3.0", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}

# --------------------------------------------------------------------------------------------------
# Fakes


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def fake_cuda(monkeypatch, *, error=CudaError.cudaSuccess, count=1) -> None:
    """``cuda.bindings.runtime`` as cuda-python 12.6+/13 lays it out (``(err, value)`` tuples)."""
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaError_t = CudaError
    ok = error == CudaError.cudaSuccess
    runtime.cudaGetDeviceCount = lambda: (error, count if ok else None)
    prop = SimpleNamespace(name=b"NVIDIA H200\x00\x00", major=9, minor=0, totalGlobalMem=150 << 30)
    runtime.cudaGetDeviceProperties = lambda device: (error, prop if ok else None)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)


def no_module(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError


class FakeTensorRT:
    """A recording stand-in for the ``tensorrt`` module (the subset build_plan uses)."""

    def __init__(
        self,
        *,
        inputs=(("image", (-1, S, S, 3)), ("tags", (-1, T))),
        parser_errors=(),
        build_ok=True,
        cache_matches=True,
        plan=b"PLAN-BYTES",
    ):
        self.calls: list[tuple] = []
        self.inputs = inputs
        self.parser_errors = list(parser_errors)
        self.build_ok = build_ok
        self.cache_matches = cache_matches
        self.plan = plan
        self.logger = None
        self.profiles: list[dict] = []

    def module(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.3.0"

        class ILogger:
            def __init__(self):
                pass

        class Logger(ILogger):
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class Builder:
            def __init__(self, logger):
                fake.logger = logger
                fake.calls.append(("Builder",))

            def create_network(self, flags=0):
                fake.calls.append(("create_network", flags))
                return SimpleNamespace(
                    num_inputs=len(fake.inputs),
                    get_input=lambda i: SimpleNamespace(
                        name=fake.inputs[i][0], shape=fake.inputs[i][1]
                    ),
                )

            def create_builder_config(self):
                return FakeConfig(fake)

            def create_optimization_profile(self):
                profile: dict = {}
                fake.profiles.append(profile)
                return SimpleNamespace(
                    set_shape=lambda name, lo, opt, hi: profile.__setitem__(name, (lo, opt, hi))
                )

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                if not fake.build_ok:
                    fake.logger.log(Logger.ERROR, "out of memory\n  while timing Conv_17")
                    return None
                return fake.plan

        class OnnxParser:
            def __init__(self, network, logger):
                self.errors = fake.parser_errors

            def parse_from_file(self, model):
                fake.calls.append(("parse_from_file", model))
                return not self.errors

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, index):
                issue = self.errors[index]
                return SimpleNamespace(
                    node=lambda: issue.node,
                    node_name=lambda: issue.node_name,
                    node_operator=lambda: issue.operator,
                    code=lambda: issue.code,
                    desc=lambda: issue.desc,
                )

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, serialized):
                fake.calls.append(("deserialize_cuda_engine", bytes(serialized)))
                return SimpleNamespace(num_optimization_profiles=len(fake.profiles))

        trt.ILogger, trt.Logger, trt.Builder = ILogger, Logger, Builder
        trt.OnnxParser, trt.Runtime = OnnxParser, Runtime
        trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        return trt

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeConfig:
    """IBuilderConfig: records every setting; its timing cache serializes to new bytes."""

    def __init__(self, fake: FakeTensorRT):
        self.fake = fake
        self.cache = None

    def set_memory_pool_limit(self, pool, pool_size):
        self.fake.calls.append(("set_memory_pool_limit", pool, pool_size))

    def __setattr__(self, name, value):
        if name == "builder_optimization_level":
            self.fake.calls.append(("builder_optimization_level", value))
        object.__setattr__(self, name, value)

    def set_flag(self, flag):  # precision flags must never be used in a strongly typed build
        self.fake.calls.append(("set_flag", flag))

    def add_optimization_profile(self, profile):
        self.fake.calls.append(("add_optimization_profile",))
        return len([c for c in self.fake.calls if c[0] == "add_optimization_profile"]) - 1

    def create_timing_cache(self, serialized_timing_cache):
        blob = bytes(serialized_timing_cache)
        self.fake.calls.append(("create_timing_cache", blob))
        return SimpleNamespace(blob=blob, serialize=lambda: blob + b"+UPDATED")

    def set_timing_cache(self, cache, ignore_mismatch):
        self.fake.calls.append(("set_timing_cache", cache.blob, ignore_mismatch))
        if cache.blob and not self.fake.cache_matches:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


@pytest.fixture
def fake_trt(monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    fake_cuda(monkeypatch)
    return fake


def _tiny_onnx(batch: str | int = "batch", tag_dim: str | int = T) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
            helper.make_node("ReduceSum", ["tags"], ["t"], keepdims=0),
            helper.make_node("Add", ["m", "t"], ["out"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, S, S, 3]),
            helper.make_tensor_value_info("tags", TensorProto.FLOAT, [batch, tag_dim]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "model.fp16.onnx"
    onnx.save(_tiny_onnx(), path)
    return path


# --------------------------------------------------------------------------------------------------
# Profiles


@pytest.mark.parametrize(
    "sizes, max_batch, expected",
    [
        ([1, 8, 32], 32, [(1, 1, 1), (2, 8, 8), (9, 32, 32)]),
        ([1, 8, 32], 64, [(1, 1, 1), (2, 8, 8), (9, 32, 32), (33, 64, 64)]),
        ((4,), 4, [(1, 4, 4)]),
        ([1], 1, [(1, 1, 1)]),
        ([2, 3], 3, [(1, 2, 2), (3, 3, 3)]),
        ([16], 128, [(1, 16, 16), (17, 128, 128)]),
    ],
)
def test_batch_profiles_cover_every_batch_once(sizes, max_batch, expected):
    profiles = batch_profiles(sizes, max_batch)
    assert profiles == [BatchProfile(*p) for p in expected]
    covered = [b for p in profiles for b in range(p.min, p.max + 1)]
    assert covered == list(range(1, max_batch + 1))


@pytest.mark.parametrize(
    "sizes, max_batch, words",
    [
        ([], 32, "no batch sizes"),
        ([0, 8], 32, "positive"),
        ([-1], 32, "positive"),
        ([1.5], 32, "positive"),
        ([True, 8], 32, "positive"),
        ([8, 1], 32, "increasing"),
        ([1, 8, 8], 32, "increasing"),
        ([1, 64], 32, "above the max batch 32"),
        ([1], 0, "max batch"),
    ],
)
def test_batch_profiles_reject_bad_sizes(sizes, max_batch, words):
    with pytest.raises(InputError, match=words):
        batch_profiles(sizes, max_batch)


def test_profile_shapes_give_full_shapes_per_input():
    inputs = [("image", (-1, S, S, 3)), ("tags", (-1, T))]
    shapes = profile_shapes(inputs, {"image": (S, S, 3), "tags": (T,)}, batch_profiles([1, 8], 8))
    assert shapes == [
        {"image": ((1, S, S, 3),) * 3, "tags": ((1, T),) * 3},
        {"image": ((2, S, S, 3), (8, S, S, 3), (8, S, S, 3)), "tags": ((2, T), (8, T), (8, T))},
    ]


def test_profile_shapes_fill_dynamic_dims_and_skip_static_batches():
    inputs = [("image", (-1, -1, -1, 3)), ("fixed", (1, 4))]
    shapes = profile_shapes(inputs, {"image": (S, S, 3)}, [BatchProfile(1, 4, 4)])
    assert shapes == [{"image": ((1, S, S, 3), (4, S, S, 3), (4, S, S, 3))}]


@pytest.mark.parametrize(
    "given, words",
    [
        ({"image": (S, S, 3), "tags": (T + 1,)}, "disagrees"),
        ({"image": (S, S), "tags": (T,)}, "non-batch dims"),
        ({"image": (S, S, 3), "tags": (T,), "captions": (5,)}, "not inputs"),
        ({"image": (S, 0, 3), "tags": (T,)}, "disagrees"),
    ],
)
def test_profile_shapes_reject_shapes_the_network_contradicts(given, words):
    inputs = [("image", (-1, S, -1, 3)), ("tags", (-1, T))]
    with pytest.raises(InputError, match=words):
        profile_shapes(inputs, given, [BatchProfile(1, 1, 1)])


def test_profile_shapes_need_dynamic_dims_given():
    with pytest.raises(InputError, match="'tags' has dynamic non-batch dims"):
        profile_shapes([("tags", (-1, -1))], {}, [BatchProfile(1, 1, 1)])


# --------------------------------------------------------------------------------------------------
# Input shapes from ONNX


def test_input_shapes_from_onnx_model_and_path(onnx_file):
    expected = {"image": (S, S, 3), "tags": (T,)}
    assert input_shapes_from_onnx(_tiny_onnx()) == expected
    assert input_shapes_from_onnx(onnx_file) == expected
    assert input_shapes_from_onnx(str(onnx_file)) == expected


def test_input_shapes_skip_initializers_listed_as_inputs():
    model = _tiny_onnx()
    model.graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").ones(2), "w"))
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.DOUBLE, [2]))
    assert set(input_shapes_from_onnx(model)) == {"image", "tags"}


def test_input_shapes_reject_a_fixed_batch():
    with pytest.raises(InputError, match="'image' has a fixed batch of 4; re-export"):
        input_shapes_from_onnx(_tiny_onnx(batch=4))


def test_input_shapes_reject_a_dynamic_non_batch_dim():
    with pytest.raises(InputError, match=r"'tags' dim 1 \('num_tags'\) is dynamic"):
        input_shapes_from_onnx(_tiny_onnx(tag_dim="num_tags"))


def test_input_shapes_report_unreadable_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff not a model")
    with pytest.raises(InputError, match="bad.onnx: cannot read"):
        input_shapes_from_onnx(bad)
    with pytest.raises(InputError, match="missing.onnx: cannot read"):
        input_shapes_from_onnx(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------------------------------
# Availability


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_tensorrt_is_unavailable_on_this_machine():
    ok, reason = tensorrt_available()
    assert not ok
    assert "tensorrt" in reason and "pip install tensorrt-cu12" in reason


def test_missing_tensorrt_package(monkeypatch):
    no_module(monkeypatch, "tensorrt")
    ok, reason = tensorrt_available()
    assert not ok and "tensorrt Python package" in reason
    with pytest.raises(M3Error) as err:
        require_tensorrt()
    message = str(err.value)
    assert "\n" not in message
    assert "pip install tensorrt-cu12" in message and "--target cpu" in message


def test_missing_cuda_python(monkeypatch, fake_trt):
    no_module(monkeypatch, "cuda.bindings")
    ok, reason = tensorrt_available()
    assert not ok and "cuda-python" in reason
    with pytest.raises(M3Error, match="pip install cuda-python.*--target cpu"):
        require_tensorrt()


@pytest.mark.parametrize(
    "error, count, words",
    [
        (CudaError.cudaErrorInsufficientDriver, None, "no NVIDIA driver.*InsufficientDriver"),
        (CudaError.cudaErrorNoDevice, None, "no NVIDIA GPU.*cudaErrorNoDevice"),
        (CudaError.cudaSuccess, 0, "no NVIDIA GPU"),
    ],
)
def test_no_gpu_or_driver(monkeypatch, fake_trt, error, count, words):
    fake_cuda(monkeypatch, error=error, count=count)
    ok, reason = tensorrt_available()
    assert not ok and reason
    with pytest.raises(M3Error, match=words) as err:
        require_tensorrt()
    assert "--target cpu" in str(err.value) and "\n" not in str(err.value)


def test_available_with_tensorrt_and_a_gpu(fake_trt):
    assert tensorrt_available() == (True, "TensorRT 10.3.0, 1 NVIDIA GPU(s)")
    require_tensorrt()  # does not raise


def test_gpu_info(monkeypatch, fake_trt):
    assert gpu_info() == {
        "gpu_name": "NVIDIA H200",
        "compute_capability": "9.0",
        "gpu_memory_bytes": 150 << 30,
    }
    fake_cuda(monkeypatch, error=CudaError.cudaErrorInsufficientDriver)
    with pytest.raises(M3Error, match="cannot query GPU 0: no NVIDIA driver"):
        gpu_info()
    no_module(monkeypatch, "cuda.bindings")
    with pytest.raises(M3Error, match="pip install cuda-python"):
        gpu_info()


# --------------------------------------------------------------------------------------------------
# Plan compatibility


def test_same_environment_is_compatible():
    assert check_plan_compatible(H200, dict(H200)) is None


def test_another_tensorrt_release_is_refused():
    reason = check_plan_compatible(H200, {**H200, "tensorrt": "10.5.0"})
    assert reason == (
        "plan was built with TensorRT 10.3.0, this host has 10.5.0: rebuild with `m3trt build` "
        "on this machine, or use --device cpu (the ONNX fallback)"
    )


def test_build_numbers_do_not_matter():
    assert check_plan_compatible(H200, {**H200, "tensorrt": "10.3.0.26"}) is None


def test_another_compute_capability_is_refused():
    current = {"tensorrt": "10.3.0", "gpu_name": "NVIDIA A10", "compute_capability": "8.6"}
    reason = check_plan_compatible(H200, current)
    assert reason is not None
    assert "compute capability 9.0 (NVIDIA H200)" in reason and "8.6 (NVIDIA A10)" in reason
    assert "m3trt build" in reason and "--device cpu" in reason


def test_another_gpu_model_with_the_same_compute_capability_is_allowed():
    assert check_plan_compatible(H200, {**H200, "gpu_name": "NVIDIA H100 80GB HBM3"}) is None


@pytest.mark.parametrize(
    "recorded, current, words",
    [
        ({}, H200, "does not record the TensorRT version"),
        ({"tensorrt": "10.3.0"}, H200, "does not record the compute capability"),
        (H200, {}, "this host has none"),
        ({**H200, "tensorrt": "unknown"}, {**H200, "tensorrt": "unknown"}, "TensorRT unknown"),
    ],
)
def test_missing_provenance_is_refused(recorded, current, words):
    reason = check_plan_compatible(recorded, current)
    assert reason is not None and words in reason


# --------------------------------------------------------------------------------------------------
# Parser error messages


def _issue(i: int) -> ParserIssue:
    return ParserIssue(i, f"node_topk_{i}", "TopK", "UNSUPPORTED_NODE", "k must be\na constant")


def test_parser_errors_name_nodes_on_one_line():
    message = format_parser_errors("m.onnx", "10.3.0", [_issue(i) for i in range(5)])
    assert "\n" not in message
    assert message.startswith("m.onnx: TensorRT 10.3.0 cannot parse the graph: node 'node_topk_0'")
    assert "(TopK): UNSUPPORTED_NODE: k must be a constant" in message
    assert "node_topk_2" in message and "node_topk_3" not in message and "and 2 more" in message
    assert "--target cpu" in message


def test_parser_errors_without_a_node():
    issue = ParserIssue(-1, "", "", "MODEL_DESERIALIZE_FAILED", "bad protobuf")
    message = format_parser_errors("m.onnx", "10.3.0", [issue])
    assert "the graph: MODEL_DESERIALIZE_FAILED: bad protobuf" in message


# --------------------------------------------------------------------------------------------------
# build_plan against the fake TensorRT


def test_build_plan_without_tensorrt_says_what_is_missing(monkeypatch, onnx_file, tmp_path):
    no_module(monkeypatch, "tensorrt")
    with pytest.raises(M3Error, match="tensorrt-cu12"):
        build_plan(onnx_file, tmp_path / "engine.plan", profiles=batch_profiles([1], 1))


def test_build_plan_strongly_typed_with_one_profile_per_bucket(fake_trt, onnx_file, tmp_path):
    plan = tmp_path / "bundle" / "engine.plan"
    messages: list[str] = []
    provenance = build_plan(
        onnx_file,
        plan,
        profiles=batch_profiles([1, 8, 32], 32),
        workspace_bytes=1 << 30,
        builder_optimization_level=4,
        log=messages.append,
    )
    assert ("create_network", 1 << 1) in fake_trt.calls  # 1 << int(STRONGLY_TYPED)
    assert ("parse_from_file", str(onnx_file)) in fake_trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in fake_trt.calls
    assert ("builder_optimization_level", 4) in fake_trt.calls
    assert "set_flag" not in fake_trt.names()  # no FP16/INT8 builder flags, ever
    assert fake_trt.names().count("add_optimization_profile") == 3
    assert fake_trt.profiles == [
        {"image": ((1, S, S, 3),) * 3, "tags": ((1, T),) * 3},
        {"image": ((2, S, S, 3), (8, S, S, 3), (8, S, S, 3)), "tags": ((2, T), (8, T), (8, T))},
        {"image": ((9, S, S, 3), (32, S, S, 3), (32, S, S, 3)), "tags": ((9, T), (32, T), (32, T))},
    ]
    assert ("deserialize_cuda_engine", b"PLAN-BYTES") in fake_trt.calls
    assert plan.read_bytes() == b"PLAN-BYTES"
    assert [p.name for p in plan.parent.iterdir()] == ["engine.plan"]  # no temporary left
    assert provenance["tensorrt"] == "10.3.0"
    assert provenance["gpu_name"] == "NVIDIA H200"
    assert provenance["compute_capability"] == "9.0"
    assert provenance["profiles"] == [
        {"min": 1, "opt": 1, "max": 1},
        {"min": 2, "opt": 8, "max": 8},
        {"min": 9, "opt": 32, "max": 32},
    ]
    assert provenance["input_shapes"] == {"image": [S, S, 3], "tags": [T]}
    assert provenance["strongly_typed"] is True and provenance["timing_cache"] is None
    assert provenance["build_seconds"] >= 0 and provenance["plan_bytes"] == len(b"PLAN-BYTES")
    assert check_plan_compatible(provenance, H200) is None
    assert any("building with 3 profile(s)" in m for m in messages)


def test_build_plan_uses_given_input_shapes(fake_trt, onnx_file, tmp_path):
    with pytest.raises(InputError, match="'tags': shape \\(31,\\) disagrees"):
        build_plan(
            onnx_file,
            tmp_path / "engine.plan",
            profiles=batch_profiles([1], 1),
            input_shapes={"image": (S, S, 3), "tags": (T + 1,)},
        )
    assert "build_serialized_network" not in fake_trt.names()


def test_build_plan_loads_and_writes_back_the_timing_cache(fake_trt, onnx_file, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD-CACHE")
    provenance = build_plan(
        onnx_file,
        tmp_path / "engine.plan",
        profiles=batch_profiles([1], 1),
        timing_cache_path=cache,
    )
    assert ("create_timing_cache", b"OLD-CACHE") in fake_trt.calls
    assert ("set_timing_cache", b"OLD-CACHE", False) in fake_trt.calls
    names = fake_trt.names()
    assert names.index("set_timing_cache") < names.index("build_serialized_network")
    assert cache.read_bytes() == b"OLD-CACHE+UPDATED"
    assert provenance["timing_cache"] == "loaded"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "engine.plan",
        "model.fp16.onnx",
        "timing.cache",
    ]


def test_build_plan_starts_a_timing_cache(fake_trt, onnx_file, tmp_path):
    cache = tmp_path / "caches" / "timing.cache"
    provenance = build_plan(
        onnx_file,
        tmp_path / "engine.plan",
        profiles=[BatchProfile(1, 1, 1)],
        timing_cache_path=cache,
    )
    assert ("create_timing_cache", b"") in fake_trt.calls
    assert cache.read_bytes() == b"+UPDATED"
    assert provenance["timing_cache"] == "new"


def test_build_plan_replaces_a_timing_cache_from_another_gpu(monkeypatch, onnx_file, tmp_path):
    fake = FakeTensorRT(cache_matches=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    fake_cuda(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"A10-CACHE")
    messages: list[str] = []
    provenance = build_plan(
        onnx_file,
        tmp_path / "engine.plan",
        profiles=[BatchProfile(1, 1, 1)],
        timing_cache_path=cache,
        log=messages.append,
    )
    assert ("set_timing_cache", b"", False) in fake.calls
    assert provenance["timing_cache"] == "replaced"
    assert cache.read_bytes() == b"+UPDATED"
    assert any("another GPU or TensorRT version" in m for m in messages)


def test_build_plan_reports_parser_errors(monkeypatch, onnx_file, tmp_path):
    fake = FakeTensorRT(parser_errors=[_issue(0), _issue(1)])
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    fake_cuda(monkeypatch)
    plan = tmp_path / "engine.plan"
    with pytest.raises(PlanBuildError) as err:
        build_plan(onnx_file, plan, profiles=[BatchProfile(1, 1, 1)])
    message = str(err.value)
    assert isinstance(err.value, M3Error) and "\n" not in message
    assert f"{onnx_file}: TensorRT 10.3.0 cannot parse the graph" in message
    assert "node 'node_topk_0' (TopK)" in message and "node 'node_topk_1' (TopK)" in message
    assert "build_serialized_network" not in fake.names()
    assert not plan.exists()


def test_build_plan_raises_when_the_build_returns_none(monkeypatch, onnx_file, tmp_path):
    fake = FakeTensorRT(build_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    fake_cuda(monkeypatch)
    plan, cache = tmp_path / "engine.plan", tmp_path / "timing.cache"
    with pytest.raises(PlanBuildError) as err:
        build_plan(onnx_file, plan, profiles=[BatchProfile(1, 1, 1)], timing_cache_path=cache)
    message = str(err.value)
    assert "failed to build a plan (out of memory while timing Conv_17)" in message
    assert "workspace" in message and "--target cpu" in message and "\n" not in message
    assert not plan.exists() and not cache.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.fp16.onnx"]


def test_build_plan_without_the_strongly_typed_flag_passes_zero(monkeypatch, onnx_file, tmp_path):
    """A future TensorRT that drops the (already ignored) flag: networks are strongly typed."""
    fake = FakeTensorRT()
    module = fake.module()
    module.NetworkDefinitionCreationFlag = SimpleNamespace()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    fake_cuda(monkeypatch)
    build_plan(onnx_file, tmp_path / "engine.plan", profiles=[BatchProfile(1, 1, 1)])
    assert ("create_network", 0) in fake.calls


@pytest.mark.parametrize(
    "options, words",
    [
        ({"workspace_bytes": 0}, "workspace"),
        ({"builder_optimization_level": 6}, "optimization level"),
        ({"profiles": []}, "no optimisation profiles"),
    ],
)
def test_build_plan_rejects_bad_options(fake_trt, onnx_file, tmp_path, options, words):
    kwargs = {"profiles": [BatchProfile(1, 1, 1)], **options}
    with pytest.raises(InputError, match=words):
        build_plan(onnx_file, tmp_path / "engine.plan", **kwargs)


def test_build_plan_needs_the_onnx_file(fake_trt, tmp_path):
    with pytest.raises(InputError, match="missing.onnx: ONNX model not found"):
        build_plan(tmp_path / "missing.onnx", tmp_path / "e.plan", profiles=[BatchProfile(1, 1, 1)])


def test_modules_do_not_import_tensorrt_or_cuda_at_top_level():
    folder = Path(m3trt.tensorrt.__file__).parent
    for module in folder.glob("*.py"):
        top = [ln for ln in module.read_text().splitlines() if ln.startswith(("import ", "from "))]
        assert not [
            ln for ln in top if ("import tensorrt" in ln or "cuda" in ln) and "m3trt." not in ln
        ], module
