"""What this host has for TensorRT: the library, cuda-python, a GPU and its compute capability.

Nothing here imports TensorRT or CUDA at module level: the policy is plain Python, testable
without a GPU (tests/test_tensorrt_builder.py runs it against fakes shaped like TensorRT).
"""

from __future__ import annotations

from typing import Any

from m3trt.errors import M3Error

INSTALL_TENSORRT = (
    "pip install 'm3trt[tensorrt]' (TensorRT for CUDA 13; on a CUDA 12 host: "
    "pip install tensorrt-cu12)"
)
INSTALL_CUDA_PYTHON = "pip install cuda-python"
CPU_FALLBACK = "`--target cpu` (ONNX Runtime) works on every machine"


def tensorrt_available() -> tuple[bool, str]:
    """Whether ``import tensorrt`` works and CUDA sees a GPU; the reason (with the fix) if not."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        return False, f"the tensorrt Python package is not importable ({exc}): {INSTALL_TENSORRT}"
    try:
        cudart = _cudart()
    except (ImportError, OSError) as exc:
        return False, f"cuda-python is not importable ({exc}): {INSTALL_CUDA_PYTHON}"
    err, count = cudart.cudaGetDeviceCount()
    if _failed(cudart, err):
        return False, _cuda_failure(cudart, err)
    if not count:
        return False, "CUDA sees no NVIDIA GPU: check the driver with nvidia-smi"
    return True, f"TensorRT {trt.__version__}, {count} NVIDIA GPU(s)"


def require_tensorrt() -> None:
    """Raise a one-line ``M3Error`` naming what is missing and how to get it."""
    ok, reason = tensorrt_available()
    if not ok:
        raise M3Error(f"TensorRT target unavailable: {reason}; {CPU_FALLBACK}")


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name, compute capability ("9.0") and memory of one GPU, via cuda.bindings.runtime."""
    try:
        cudart = _cudart()
    except (ImportError, OSError) as exc:
        raise M3Error(f"cuda-python is not importable ({exc}): {INSTALL_CUDA_PYTHON}") from None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if _failed(cudart, err):
        raise M3Error(f"cannot query GPU {device}: {_cuda_failure(cudart, err)}; {CPU_FALLBACK}")
    return {
        "gpu_name": _c_string(prop.name),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "gpu_memory_bytes": int(prop.totalGlobalMem),
    }


def tensorrt_environment(device: int = 0) -> dict[str, Any]:
    """What a plan depends on, as recorded in bundle provenance: TensorRT version + the GPU."""
    import tensorrt as trt

    return {"tensorrt": trt.__version__, **gpu_info(device)}


def _cudart() -> Any:
    from cuda.bindings import runtime as cudart

    return cudart


def _failed(cudart: Any, err: Any) -> bool:
    return err != cudart.cudaError_t.cudaSuccess


def _cuda_failure(cudart: Any, err: Any) -> str:
    name = getattr(err, "name", str(err))
    if err == cudart.cudaError_t.cudaErrorInsufficientDriver:
        return f"no NVIDIA driver, or one too old for this CUDA ({name}): install or update it"
    if err == cudart.cudaError_t.cudaErrorNoDevice:
        return f"CUDA sees no NVIDIA GPU ({name}): check the driver with nvidia-smi"
    return f"CUDA error {name}: check the NVIDIA driver with nvidia-smi"


def _c_string(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.split("\x00", 1)[0].strip()
