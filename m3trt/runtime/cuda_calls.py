"""cuda-python's runtime (``cuda.bindings.runtime``) with every call's error code checked.

cuda-python returns ``(cudaError_t, *values)`` from every call and never raises, so an unchecked
call silently goes on with a stale buffer. ``CudaCalls("cudaMalloc", n)`` returns the value(s)
or raises one line naming the call and the error
(``CUDA cudaMalloc failed: cudaErrorMemoryAllocation``).
Shared by the TensorRT engine and the GPU folder pipeline.
"""

from __future__ import annotations

from typing import Any

from m3trt.runtime.engines.base import EngineError

INSTALL_CUDA = "pip install 'm3trt[gpu]' (cuda-python)"


class CudaCalls:
    """Call ``cuda.bindings.runtime`` functions by name, errors raised as ``EngineError``."""

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart

    def __call__(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA {name} failed: {getattr(err, 'name', err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    @property
    def h2d(self) -> Any:
        return self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice

    @property
    def d2h(self) -> Any:
        return self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost


def cuda_calls() -> CudaCalls:
    """The checked runtime, or ModuleNotFoundError (the CLI turns it into the install line)."""
    from cuda.bindings import runtime as cudart

    return CudaCalls(cudart)
