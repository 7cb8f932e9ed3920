"""``m3trt doctor``: what this host can run and build, and the install line for what is missing.

It reports what really works, not what is installed: ONNX Runtime's providers are tried on a
one-node graph (onnxruntime-gpu lists the CUDA provider even where it cannot load), the GPU is
asked through cuda-python, TensorRT is imported. No torch, nothing written, nothing fatal: every
probe that fails becomes a line of the report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from m3trt.errors import terminal_safe
from m3trt.installs import INSTALL_LINES

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


@dataclass
class Report:
    """Everything doctor found; ``to_json`` for ``--json``, ``lines`` for people."""

    gpus: list[dict[str, Any]] = field(default_factory=list)
    driver: str | None = None
    cuda_runtime: str | None = None
    gpu_problem: str | None = None
    onnxruntime: dict[str, Any] = field(default_factory=dict)
    openvino: str | None = None
    tensorrt: str | None = None
    cuda_python: str | None = None
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_version(number: int) -> str:
    """CUDA's integer versions (12060, 13000) as "12.6", "13.0"."""
    return f"{number // 1000}.{(number % 1000) // 10}"


def probe_gpus(report: Report) -> None:
    """GPUs, driver and CUDA runtime through cuda-python, as the TensorRT engine sees them."""
    try:
        from cuda.bindings import runtime as cudart
    except (ImportError, OSError) as exc:
        smi_problem = _nvidia_smi(report)
        if smi_problem is not None:  # a driver that does not load is what doctor is for
            report.gpu_problem = smi_problem
            return
        if report.driver is None:  # a CPU host: cuda-python would find nothing either
            report.gpu_problem = "no NVIDIA driver found (no nvidia-smi)"
            return
        report.gpu_problem = f"cuda-python is not importable ({exc}), so GPUs are not listed"
        report.missing.append(f"cuda-python: {INSTALL_LINES['cuda']}")
        return
    from m3trt.tensorrt.environment import _cuda_failure

    success = cudart.cudaError_t.cudaSuccess
    err, runtime_version = cudart.cudaRuntimeGetVersion()
    if err == success:
        report.cuda_runtime = _cuda_version(int(runtime_version))
    err, driver_version = cudart.cudaDriverGetVersion()
    if err == success and driver_version:
        report.driver = f"supports CUDA {_cuda_version(int(driver_version))}"
    err, count = cudart.cudaGetDeviceCount()
    if err != success:
        report.gpu_problem = _cuda_failure(cudart, err)
        return
    for device in range(int(count)):
        err, prop = cudart.cudaGetDeviceProperties(device)
        if err != success:
            report.gpu_problem = f"GPU {device}: {_cuda_failure(cudart, err)}"
            continue
        name = prop.name.decode("utf-8", "replace") if isinstance(prop.name, bytes) else prop.name
        report.gpus.append(
            {
                "index": device,
                "name": str(name).split("\x00", 1)[0].strip(),
                "compute_capability": f"{prop.major}.{prop.minor}",
                "memory_gib": round(int(prop.totalGlobalMem) / (1 << 30), 1),
            }
        )
    if not report.gpus and report.gpu_problem is None:
        report.gpu_problem = "CUDA sees no NVIDIA GPU"
    smi_problem = _nvidia_smi(report)
    if smi_problem is not None and report.gpu_problem is None and not report.gpus:
        report.gpu_problem = smi_problem


SMI_TIMEOUT_S = 10.0


def _nvidia_smi(report: Report) -> str | None:
    """The driver's own version string, when nvidia-smi is on PATH (it is wherever a driver is);
    returns why it gave none (it failed, hung, or printed no version), None when it is absent
    or answered. Its output is read from a file, at most 64 KiB of it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(query, stdout=out, stderr=err)
            try:
                code = proc.wait(timeout=SMI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return f"nvidia-smi did not answer within {SMI_TIMEOUT_S:g} s"
            texts = []
            for f in (out, err):  # a warning on stderr is no reason to doubt stdout's version
                f.seek(0)
                texts.append(f.read(64 << 10).decode("utf-8", "replace"))
    except OSError as exc:
        return f"nvidia-smi cannot run ({exc.strerror or exc})"
    first, said = (terminal_safe(t.strip().split("\n")[0].strip())[:200] for t in texts)
    if code != 0:
        return f"nvidia-smi failed (exit {code}): {first or said or 'no output'}"
    if not re.fullmatch(r"\d+(\.\d+)+", first):
        return f"nvidia-smi gave no driver version ({first or 'no output'})"
    report.driver = first + (f" ({report.driver})" if report.driver else "")
    return None


def _identity_model() -> bytes:
    """A one-node graph: enough for ONNX Runtime to load a provider, or say it cannot."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by every onnxruntime m3trt supports
    return model.SerializeToString()


def probe_onnxruntime(report: Report) -> None:
    """The flavour (distribution), the providers it lists, and those that really load."""
    flavours = {d: v for d in ORT_DISTRIBUTIONS if (v := _version(d))}
    info: dict[str, Any] = {"distributions": flavours, "listed": [], "loaded": []}
    report.onnxruntime = info
    if len(flavours) > 1:
        info["problem"] = (
            "onnxruntime and onnxruntime-gpu are both installed and share one module: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then install one extra"
        )
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        info["problem"] = f"onnxruntime is not importable ({exc})"
        report.missing.append(f"onnxruntime: {INSTALL_LINES['onnxruntime']}")
        return
    info["version"] = getattr(ort, "__version__", None)
    info["listed"] = list(ort.get_available_providers())
    model = _identity_model()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for provider in (CUDA_PROVIDER, CPU_PROVIDER):
        if provider not in info["listed"]:
            continue
        try:
            session = ort.InferenceSession(model, options, providers=[provider])
        except Exception as exc:  # a provider whose libraries are missing raises here
            info.setdefault("failed", {})[provider] = str(exc).splitlines()[0][:200]
            continue
        if provider in session.get_providers():
            info["loaded"].append(provider)
        else:
            info.setdefault("failed", {})[provider] = "listed but fell back to the CPU"


def probe_libraries(report: Report) -> None:
    report.openvino = _version("openvino")
    report.cuda_python = _version("cuda-python") or _version("cuda-bindings")
    try:
        report.tensorrt = importlib.import_module("tensorrt").__version__
    except (ImportError, OSError, AttributeError):
        report.tensorrt = None
    if report.tensorrt is None and (report.gpus or report.driver):  # no use without a GPU
        report.missing.append(f"tensorrt: {INSTALL_LINES['tensorrt']}")


def build_targets(report: Report) -> dict[str, dict[str, Any]]:
    """Which ``m3trt build`` targets and precisions work here, and what each needs."""
    ort = report.onnxruntime
    has_ort = "version" in ort
    cpu_ort = CPU_PROVIDER in ort.get("loaded", [])
    cuda_ort = CUDA_PROVIDER in ort.get("loaded", [])
    has_gpu = bool(report.gpus)
    targets: dict[str, dict[str, Any]] = {}
    targets["cpu"] = {
        "precisions": ["fp32", "int8"] if cpu_ort else [],
        "engines": [e for e, ok in (("onnxruntime", cpu_ort), ("openvino", report.openvino)) if ok],
        "note": None if cpu_ort else f"needs onnxruntime: {INSTALL_LINES['onnxruntime']}",
    }
    if cuda_ort:
        note = "timed on the GPU with onnxruntime-gpu's CUDA provider"
    elif has_ort:
        note = (
            "builds here, accuracy checked on the CPU, no GPU timing (the CUDA provider does not "
            "load: pip install 'm3trt[gpu]' on a GPU host)"
        )
    else:
        note = f"needs onnxruntime: {INSTALL_LINES['onnxruntime']}"
    targets["cuda"] = {
        "precisions": ["fp32", "fp16"] if has_ort else [],
        "gpu_timing": cuda_ort,
        "note": note,
    }
    trt_ok = report.tensorrt is not None and report.cuda_python is not None and has_gpu
    why = []
    if report.tensorrt is None:
        why.append(f"TensorRT ({INSTALL_LINES['tensorrt']})")
    if report.cuda_python is None:
        why.append(f"cuda-python ({INSTALL_LINES['cuda']})")
    if not has_gpu:
        why.append(f"an NVIDIA GPU ({report.gpu_problem or 'none seen'})")
    targets["tensorrt"] = {
        "precisions": ["fp32", "fp16", "int8"] if trt_ok else [],
        "note": None if trt_ok else "needs " + ", ".join(why),
    }
    return targets


def diagnose() -> Report:
    report = Report()
    probe_gpus(report)
    probe_onnxruntime(report)
    probe_libraries(report)
    report.targets = build_targets(report)
    return report


def format_report(report: Report) -> str:
    """The report as aligned lines, one topic per line."""
    rows: list[tuple[str, str]] = []
    if report.gpus:
        for gpu in report.gpus:
            rows.append(
                (
                    f"GPU {gpu['index']}",
                    f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
                    f"{gpu['memory_gib']} GiB",
                )
            )
    else:
        rows.append(("GPU", f"none ({report.gpu_problem or 'not seen'})"))
    rows.append(("NVIDIA driver", report.driver or "not found"))
    rows.append(("CUDA runtime", report.cuda_runtime or "not found"))
    ort = report.onnxruntime
    flavour = ", ".join(f"{d} {v}" for d, v in ort.get("distributions", {}).items()) or "none"
    rows.append(("onnxruntime", flavour))
    if ort.get("listed"):
        rows.append(("  providers listed", ", ".join(ort["listed"])))
        rows.append(("  providers loaded", ", ".join(ort["loaded"]) or "none"))
    for provider, why in ort.get("failed", {}).items():
        rows.append((f"  {provider}", f"does not load: {why}"))
    if ort.get("problem"):
        rows.append(("  problem", ort["problem"]))
    rows.append(("openvino", report.openvino or "not installed"))
    rows.append(("TensorRT", report.tensorrt or "not installed"))
    rows.append(("cuda-python", report.cuda_python or "not installed"))
    for target, info in report.targets.items():
        precisions = ", ".join(info["precisions"]) or "unavailable"
        text = precisions + (f" ({info['note']})" if info.get("note") else "")
        rows.append((f"build --target {target}", text))
    for line in report.missing:
        rows.append(("missing", line))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
