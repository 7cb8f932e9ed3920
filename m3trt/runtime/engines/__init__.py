"""Engines: one interface over ONNX Runtime, OpenVINO and TensorRT (``base``, ``registry``)."""

from m3trt.runtime.engines.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    SplitTiming,
    TensorSpec,
)
from m3trt.runtime.engines.registry import (
    REGISTRY,
    DeviceChoice,
    EngineKind,
    describe,
    open_engine,
    open_path,
    register,
)

__all__ = [
    "REGISTRY",
    "DeviceChoice",
    "Engine",
    "EngineError",
    "EngineKind",
    "EngineUnavailable",
    "SplitTiming",
    "TensorSpec",
    "describe",
    "open_engine",
    "open_path",
    "register",
]
