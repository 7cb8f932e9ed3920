"""m3trt build / inspect through the CLI: CPU bundles, precision auto, refusals, validation."""

import json
import shutil

import pytest
from click.testing import CliRunner

from m3trt.build.options import Candidate, choose
from m3trt.cli import main
from m3trt.runtime.bundle import load_bundle


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def test_int8_cpu_bundle(int8_bundle):
    bundle = load_bundle(int8_bundle)
    assert (bundle.target, bundle.precision) == ("cpu", "int8")
    assert set(bundle.artifacts) == {"reference", "engine", "graph", "calibration"}
    assert bundle.engine_artifact.file == "model.int8.onnx"
    # ONNX Runtime's offline CPU graph, and the portable Q/DQ graph other engines read
    assert bundle.artifacts["engine"].format == "onnx-ort-cpu"
    assert bundle.artifacts["graph"].format == "onnx"
    assert bundle.runtime["cpu"]["engine"] == "onnxruntime"  # as the fixture asks
    assert bundle.accuracy["of1_drop"] <= 0.035  # the fixture's budget: two labels of 30 images
    assert bundle.provenance["calibration"]["method"] == "percentile"
    assert bundle.provenance["calibration"]["cache_hit"] is False
    assert bundle.latency["engine_ms"] > 0 and bundle.latency["batch_size"] >= 1


def test_rebuild_reuses_the_calibration_cache(tmp_path, int8_bundle, tiny_onnx, tiny_data):
    """On a copy (the shared fixture stays ONNX Runtime's), with every installed engine timed."""
    bundle = tmp_path / "tiny.m3"
    shutil.copytree(int8_bundle, bundle)
    code, output = run(
        "build",
        tiny_onnx,
        "-o",
        bundle,
        "--precision",
        "int8",
        "--target",
        "cpu",
        "--calib",
        tiny_data,
        "--calib-count",
        "64",
        "--max-of1-drop",
        "3.5",  # as the fixture: two labels of the tiny model's 30 validation images
        "--overwrite",
    )
    assert code == 0, output
    rebuilt = load_bundle(bundle)
    assert rebuilt.provenance["calibration"]["cache_hit"] is True
    # auto: every installed engine was timed and recorded, the faster one kept
    candidates = rebuilt.provenance["candidates"]
    assert {c["engine"] for c in candidates} == {"onnxruntime", "openvino"}
    assert rebuilt.runtime["cpu"]["engine"] in ("onnxruntime", "openvino")


def test_existing_bundle_is_not_overwritten(int8_bundle, tiny_onnx):
    code, output = run(
        "build", tiny_onnx, "-o", int8_bundle, "--precision", "fp32", "--target", "cpu"
    )
    assert code == 2 and "already exists; pass --overwrite" in output


def test_precision_auto_keeps_fp32_when_no_int8_graph_fits(tmp_path, tiny_onnx, tiny_data):
    common = ["--target", "cpu", "--calib", tiny_data, "--calib-count", "64"]
    impossible = ["--max-of1-drop", "0", "--max-disagreement", "0"]  # not one label may change
    out = tmp_path / "auto.m3"
    code, output = run("build", tiny_onnx, "-o", out, *common, *impossible)
    assert code == 0, output
    bundle = load_bundle(out)
    assert bundle.precision == "fp32" and "calibration" not in bundle.artifacts
    assert "stays over the accuracy budget" in bundle.provenance["int8_not_kept"]
    # An explicit --precision int8 still fails (test_calibration: the guard's clear error).


def test_precision_auto_keeps_the_fastest_within_budget(tmp_path, tiny_onnx, tiny_data):
    out = tmp_path / "auto.m3"
    code, output = run(
        "build",
        tiny_onnx,
        "-o",
        out,
        "--target",
        "cpu",
        "--calib",
        tiny_data,
        "--calib-count",
        "64",
        "--max-of1-drop",
        "3.5",
    )
    assert code == 0, output
    bundle = load_bundle(out)
    candidates = bundle.provenance["candidates"]
    assert {c["precision"] for c in candidates} == {"fp32", "int8"}
    fits = [c for c in candidates if not c["over_budget"]]
    assert bundle.precision == min(fits, key=lambda c: c["latency_ms"])["precision"]


def test_choose_uses_measurements_and_the_budget(tmp_path):
    fast_int8 = Candidate("int8", tmp_path, {}, latency_ms=10.0)
    fp32 = Candidate("fp32", tmp_path, {}, latency_ms=30.0)
    assert choose([fast_int8, fp32]).precision == "int8"
    slow_int8 = Candidate("int8", tmp_path, {}, latency_ms=40.0)
    assert choose([slow_int8, fp32]).precision == "fp32"  # INT8 is not always faster
    broken = Candidate("int8", tmp_path, {}, latency_ms=1.0, reasons=["O-F1 drops 5 points"])
    assert choose([broken, fp32]).precision == "fp32"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--target", "cpu"], "INT8 needs calibration images"),
        (["--precision", "fp16", "--target", "cpu"], "fp16 is a GPU precision"),
        (["--target", "tensorrt"], "tensorrt"),
        (["-o2"], ""),
    ],
)
def test_build_refusals_are_one_line(tmp_path, tiny_onnx, args, message):
    if args == ["-o2"]:
        code, output = run("build", tiny_onnx, "-o", tmp_path / "no-suffix")
        assert code == 2 and "must end with .m3" in output
        return
    code, output = run("build", tiny_onnx, "-o", tmp_path / "x.m3", *args)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], output


def test_build_refuses_a_foreign_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    code, output = run("build", tmp_path / "other.onnx", "-o", tmp_path / "x.m3")
    assert code == 2 and "not an m3trt model" in output


def test_inspect_and_its_validation(tmp_path, int8_bundle):
    import shutil

    code, output = run("inspect", int8_bundle)
    assert code == 0 and "int8" in output and "model.int8.onnx" in output
    code, output = run("inspect", int8_bundle, "--json")
    assert json.loads(output)["precision"] == "int8"

    flipped = tmp_path / "flipped.m3"
    shutil.copytree(int8_bundle, flipped)
    data = bytearray((flipped / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (flipped / "model.int8.onnx").write_bytes(bytes(data))
    code, output = run("inspect", flipped)
    assert code == 2 and "model.int8.onnx" in output and "sha256" in output

    missing = tmp_path / "missing.m3"
    shutil.copytree(int8_bundle, missing)
    (missing / "calibration.json").unlink()
    code, output = run("inspect", missing)
    assert code == 2 and "calibration.json" in output and "missing" in output

    future = tmp_path / "future.m3"
    shutil.copytree(int8_bundle, future)
    meta = json.loads((future / "bundle.json").read_text())
    meta["schema_version"] = 99
    (future / "bundle.json").write_text(json.dumps(meta))
    code, output = run("inspect", future)
    assert code == 2 and "newer m3trt" in output
