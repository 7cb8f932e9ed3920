"""ONNX Runtime CPU sessions with m3trt's settings (threads = cores, quiet logs).

One place for build, calibration checks, parity and benchmarks; the folder runtime will grow its
own engine classes on top of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def session_options(threads: int | None = None):
    """m3trt's ONNX Runtime settings: one intra-op thread per core unless told, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    return options


def cpu_session(model: Any, threads: int | None = None):
    """A CPUExecutionProvider session from a path or an ``onnx.ModelProto``."""
    import onnxruntime as ort

    options = session_options(threads)
    source = str(model) if isinstance(model, str | Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
