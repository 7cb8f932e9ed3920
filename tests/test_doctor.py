"""``m3trt doctor``: a clean report on this GPU-less machine, and the GPU lines against fakes."""

from __future__ import annotations

import json
import os
import sys

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.doctor import diagnose, format_report
from m3trt.installs import missing_module_message
from tests.fake_gpu import CudaError, FakeCudaRuntime, FakeTensorRT11


def test_doctor_reports_this_host_cleanly():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "onnxruntime" in out and "providers loaded" in out and "CPUExecutionProvider" in out
    assert "build --target cpu" in out and "fp32, int8" in out
    assert "build --target tensorrt" in out
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert "CPUExecutionProvider" in report["onnxruntime"]["loaded"]
    assert set(report["targets"]) == {"cpu", "cuda", "tensorrt"}
    assert report["targets"]["cpu"]["precisions"] == ["fp32", "int8"]
    if not report["gpus"]:  # this machine: the cuda target builds but is not timed on a GPU
        assert report["targets"]["cuda"]["gpu_timing"] is False
        assert report["targets"]["tensorrt"]["precisions"] == []
        assert "needs" in report["targets"]["tensorrt"]["note"]


def test_doctor_without_cuda_python_or_tensorrt_says_how_to_install(monkeypatch):
    import m3trt.doctor as doctor

    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda r: setattr(r, "driver", "580.65"))
    report = diagnose()  # a driver, no cuda-python: install it to see the GPUs
    assert report.gpus == [] and "cuda-python is not importable" in report.gpu_problem
    assert any("m3trt[tensorrt]" in line for line in report.missing)
    assert any(line.startswith("cuda-python: ") for line in report.missing)
    assert "GPU" in format_report(report)


def test_doctor_on_a_host_without_a_driver_does_not_blame_cuda_python(monkeypatch):
    """'GPU none (cuda-python is not importable)' read as if a package hid the GPU."""
    import m3trt.doctor as doctor

    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setattr(doctor, "_nvidia_smi", lambda r: None)
    report = diagnose()
    assert report.gpu_problem == "no NVIDIA driver found (no nvidia-smi)"
    assert not any(line.startswith("cuda-python: ") for line in report.missing)
    assert not any(line.startswith("tensorrt: ") for line in report.missing)  # no GPU, no use


def test_doctor_sees_a_gpu_and_tensorrt_through_cuda_python(monkeypatch):
    cuda = FakeCudaRuntime()
    cuda.install(monkeypatch)
    FakeTensorRT11(cuda).install(monkeypatch)
    monkeypatch.setattr("m3trt.doctor._version", lambda d: "13.0.0" if "cuda" in d else None)
    report = diagnose()
    assert report.gpus == [
        {"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": 150.0}
    ]
    assert report.cuda_runtime == "13.0" and report.tensorrt == "11.4.0"
    assert report.targets["tensorrt"]["precisions"] == ["fp32", "fp16", "int8"]
    text = format_report(report)
    assert "NVIDIA H200, compute capability 9.0" in text and "TensorRT" in text


def test_doctor_reports_a_driver_failure(monkeypatch):
    cuda = FakeCudaRuntime(fail={"cudaGetDeviceCount": CudaError.cudaErrorInsufficientDriver})
    cuda.install(monkeypatch)
    report = diagnose()
    assert report.gpus == [] and "no NVIDIA driver" in report.gpu_problem
    assert "needs" in report.targets["tensorrt"]["note"]


def test_a_missing_optional_module_is_one_line_with_the_install_line():
    assert "m3trt[cpu]" in missing_module_message("onnxruntime.quantization")
    assert "m3trt[gpu]" in missing_module_message("onnxruntime")
    assert missing_module_message("numpy") is None
    assert missing_module_message(None) is None


def test_the_cli_turns_a_missing_optional_module_into_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as without [train]
    monkeypatch.delitem(sys.modules, "m3trt.export.onnx_export", raising=False)
    result = CliRunner().invoke(main, ["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: torch is not installed: pip install 'm3trt[train]' (torch==2.13.0)"
    )


@pytest.mark.parametrize(
    "script, says",
    [
        (
            'echo "NVIDIA-SMI has failed: no driver"; exit 9',
            "nvidia-smi failed (exit 9): NVIDIA-SMI",
        ),
        ("sleep 30", "nvidia-smi did not answer within 0.5 s"),
        ("head -c 30000000 /dev/zero | tr '\\0' a", "nvidia-smi gave no driver version (aaaa"),
        ("echo 580.65.06", None),
        ("echo 'WARNING: infoROM is corrupted' >&2; echo 580.65.06", None),
    ],
)
def test_a_broken_nvidia_smi_is_reported_not_taken_for_none(tmp_path, monkeypatch, script, says):
    """A driver that fails to load made nvidia-smi exit 9, which doctor read as "no NVIDIA
    driver found (no nvidia-smi)"; one that hung, the same after 10 s; 300 MB of output was
    read whole and printed as the driver version (30 MB here)."""
    import m3trt.doctor as doctor

    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(doctor, "SMI_TIMEOUT_S", 0.5 if "sleep" in script else 20)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    report = doctor.Report()
    doctor.probe_gpus(report)
    if says is None:
        assert report.driver == "580.65.06"
    else:
        assert report.gpu_problem.startswith(says), report.gpu_problem
        assert len(report.gpu_problem) < 300
