"""Which pip extra brings which optional module: one table, used by ``m3trt doctor`` and by the
CLI's one-line message when a command needs a module this host does not have."""

from __future__ import annotations

# top-level module -> the install line that brings it (DESIGN §8b: cpu / gpu / tensorrt extras)
INSTALL_LINES = {
    "onnxruntime": (
        "pip install 'm3trt[cpu]' (onnxruntime) on a CPU host, or 'm3trt[gpu]' "
        "(onnxruntime-gpu) on an NVIDIA GPU host: never both"
    ),
    "openvino": "pip install 'm3trt[cpu]' (or pip install openvino)",
    "tensorrt": (
        "pip install 'm3trt[tensorrt]' (TensorRT for CUDA 13; on a CUDA 12 host: "
        "pip install tensorrt-cu12)"
    ),
    "cuda": "pip install 'm3trt[gpu]' (cuda-python)",
    "nvimgcodec": "pip install 'm3trt[gpu]' (nvidia-nvimgcodec-cu13 and cupy-cuda13x)",
    "cupy": "pip install 'm3trt[gpu]' (cupy-cuda13x)",
    "torch": "pip install 'm3trt[train]' (torch==2.13.0)",
    "onnxscript": "pip install 'm3trt[train]' (onnxscript)",
    "safetensors": "pip install 'm3trt[train]' (safetensors)",
    "matplotlib": "pip install 'm3trt[plot]' (matplotlib)",
}


def missing_module_message(name: str | None) -> str | None:
    """One line for ``ModuleNotFoundError(name)`` when an extra brings that module, else None."""
    top = (name or "").split(".")[0]
    line = INSTALL_LINES.get(top)
    return None if line is None else f"{top} is not installed: {line}"
