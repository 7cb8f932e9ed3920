"""The engine bundle: round trip, determinism, tamper/truncation/schema errors, safe overwrite."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto, helper

from m3trt.errors import InputError
from m3trt.runtime import bundle_writer as bundle_mod
from m3trt.runtime.bundle import (
    BUNDLE_FILE,
    SCHEMA_VERSION,
    Bundle,
    load_bundle,
    sha256_file,
)
from m3trt.runtime.bundle_writer import write_bundle
from m3trt.runtime.inspect_bundle import describe_bundle, inspect_json
from m3trt.runtime.model_io import BundleError, ModelInfo

LABELS = ["airport", "animal", "beach", "bear", "birds", "boats", "book"]


def model_info() -> ModelInfo:
    return ModelInfo(
        label_names=list(LABELS),
        tag_vocab=["nikon", "park", "puppy"],
        preprocessing={
            "image_size": 32,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "resize": "squash",
        },
        k_max=3,
        backbone="resnet18",
        multi_scale=True,
        use_tags=True,
        quantity_head=True,
    )


def save_onnx(path: Path, op: str, info: ModelInfo | None) -> Path:
    """A tiny but real ONNX graph with the I/O contract of DESIGN §3.3 (which loading checks
    against bundle.json), optionally carrying the m3trt metadata; ``op`` varies the weights."""
    import numpy as np

    c = len(LABELS)
    weights = np.full((3, c), 0.5 if op == "Add" else 0.25, np.float32)
    nodes = [
        helper.make_node("MatMul", ["tags", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("ReduceSum", ["scores"], ["quantity"], keepdims=0),
        helper.make_node("Cast", ["quantity"], ["k"], to=TensorProto.INT32),
        helper.make_node("TopK", ["scores", "three"], ["values", "indices"]),
        helper.make_node("Cast", ["indices"], ["topk"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 32, 32, 3]),
            helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", c]),
            helper.make_tensor_value_info("quantity", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("topk", TensorProto.INT32, ["batch", 3]),
        ],
        initializer=[
            onnx.numpy_helper.from_array(weights, "w"),
            onnx.numpy_helper.from_array(np.array([3], np.int64), "three"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if info is not None:
        helper.set_model_props(model, info.to_onnx_metadata())
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def sources(tmp_path) -> dict:
    src = tmp_path / "src"
    src.mkdir()
    info = model_info()
    (src / "calibration.json").write_text('{"method": "entropy", "ranges": {"x": [0, 1]}}\n')
    return {
        "reference": (save_onnx(src / "model.onnx", "Identity", info), "onnx", "fp32"),
        "engine": (save_onnx(src / "model.int8.onnx", "Add", info), "onnx", "int8"),
        "calibration": (src / "calibration.json", "json", None),
    }


def build(folder: Path, files: dict, **kwargs) -> Bundle:
    return write_bundle(
        folder,
        model=model_info(),
        target="cpu",
        precision="int8",
        files=files,
        provenance={"onnx": "1.17.0", "calibration": {"method": "entropy", "count": 64}},
        accuracy={"of1_drop": 0.0012345678, "label_set_agreement": 0.98, "k_agreement": 1.0},
        latency={"b1": {"median_ms": 5.61234}},
        **kwargs,
    )


@pytest.fixture
def built(tmp_path, sources) -> Bundle:
    return build(tmp_path / "tiny.m3", sources)


def error_of(path, **kwargs) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def edit_manifest(folder: Path, change) -> None:
    path = folder / BUNDLE_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(built, sources):
    loaded = load_bundle(built.path)
    assert loaded == built
    assert loaded.model == model_info()
    assert loaded.model.num_labels == len(LABELS)
    assert loaded.model.num_tags == 3
    assert loaded.model.image_size == 32
    assert set(loaded.artifacts) == {"reference", "engine", "calibration"}
    for role, (src, fmt, prec) in sources.items():
        art = loaded.artifacts[role]
        assert art.sha256 == sha256_file(src)
        assert art.bytes == src.stat().st_size
        assert (art.format, art.precision) == (fmt, prec)
        assert loaded.artifact_path(role).read_bytes() == src.read_bytes()
        assert not loaded.artifact_path(role).samefile(src)  # a copy, not a link
    assert loaded.engine_artifact.file == "model.int8.onnx"
    assert loaded.provenance["m3trt"]
    assert load_bundle(built.path / BUNDLE_FILE) == loaded
    assert ModelInfo.from_onnx_file(loaded.artifact_path("reference")) == loaded.model


def test_no_engine_runs_reference(tmp_path, sources):
    bundle = build(tmp_path / "ref.m3", {"reference": sources["reference"]})
    assert bundle.engine_artifact.role == "reference"
    with pytest.raises(BundleError, match="no 'engine' artifact"):
        bundle.artifact_path("engine")


def test_deterministic(tmp_path, sources):
    a = build(tmp_path / "a.m3", sources)
    b = build(tmp_path / "b.m3", sources)
    assert (a.path / BUNDLE_FILE).read_bytes() == (b.path / BUNDLE_FILE).read_bytes()
    assert inspect_json(a)["path"] == str(a.path)


def test_flipped_byte(built):
    path = built.artifact_path("engine")
    data = bytearray(path.read_bytes())
    data[data.find(b"\x00\x00\x00\x3f") + 3] ^= 0x01  # one weight: the graph still parses
    path.write_bytes(bytes(data))
    message = error_of(built.path)
    assert "model.int8.onnx" in message and "sha256" in message and "m3trt build" in message
    load_bundle(built.path, verify=False)  # the fast path does not hash


def test_truncated(built):
    path = built.artifact_path("reference")
    path.write_bytes(path.read_bytes()[:-5])
    message = error_of(built.path, verify=False)
    assert "model.onnx is truncated" in message and "expected" in message


def test_missing_artifact(built):
    built.artifact_path("engine").unlink()
    assert "model.int8.onnx is missing" in error_of(built.path, verify=False)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (
            SCHEMA_VERSION + 1,
            f"made by a newer m3trt (schema {SCHEMA_VERSION + 1}, "
            f"this m3trt reads up to {SCHEMA_VERSION})",
        ),
        (0, "unknown bundle schema 0"),
        ("1", "is not an integer"),
        (None, "no schema_version"),
    ],
)
def test_schema_version(built, version, expected):
    edit_manifest(built.path, lambda d: d.update(schema_version=version))
    message = error_of(built.path)
    assert expected in message and BUNDLE_FILE in message


def test_required_key_missing(built):
    edit_manifest(built.path, lambda d: d.pop("artifacts"))
    assert "missing required key(s) artifacts" in error_of(built.path)


def test_invalid_json(built):
    (built.path / BUNDLE_FILE).write_text('{"schema_version": 1,\n oops')
    assert "bundle.json: not valid JSON" in error_of(built.path)


def test_not_a_bundle(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.m3")
    (tmp_path / "empty.m3").mkdir()
    assert "not an m3trt bundle: no bundle.json" in error_of(tmp_path / "empty.m3")
    assert issubclass(BundleError, InputError)


@pytest.mark.parametrize("file", ["../outside.onnx", "/etc/passwd", "sub/../../x"])
def test_escaping_path_refused(built, file):
    edit_manifest(built.path, lambda d: d["artifacts"]["engine"].update(file=file))
    assert "escapes the bundle folder" in error_of(built.path)


def test_symlink_out_refused(built, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(built.artifact_path("engine"), outside)
    built.artifact_path("engine").unlink()
    os.symlink(outside, built.artifact_path("engine"))
    assert "outside the bundle folder" in error_of(built.path)


def test_overwrite(tmp_path, sources, built):
    with pytest.raises(BundleError, match="already exists; use --overwrite") as info:
        build(built.path, sources)
    assert "\n" not in str(info.value)
    (built.path / "stale.bin").write_bytes(b"old")
    new = build(built.path, {"reference": sources["reference"]}, overwrite=True)
    assert set(load_bundle(new.path).artifacts) == {"reference"}
    assert not (built.path / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tiny.m3"]  # no leftovers


def test_failed_write_keeps_old_bundle(tmp_path, sources, built, monkeypatch):
    before = (built.path / BUNDLE_FILE).read_bytes()
    bad = dict(sources, engine=(tmp_path / "src" / "gone.plan", "tensorrt-plan", "int8"))
    with pytest.raises(BundleError, match="gone.plan: the 'engine' artifact does not exist"):
        build(built.path, bad, overwrite=True)

    real_copy, calls = shutil.copyfile, []

    def broken_copy(src, dst):  # the second artifact fails half-way through the build
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(bundle_mod.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        build(built.path, sources, overwrite=True)
    assert (built.path / BUNDLE_FILE).read_bytes() == before
    assert load_bundle(built.path) == built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tiny.m3"]


def test_a_bundle_written_meanwhile_is_kept(tmp_path, sources, built, monkeypatch):
    """Another run wrote the bundle after this one's check: it is not replaced."""
    folder = tmp_path / "late.m3"
    real_copy = shutil.copyfile

    def copy_while_another_run_writes(src, dst, **kw):
        if not folder.exists():
            shutil.copytree(built.path, folder, copy_function=lambda s, d: real_copy(s, d))
        return real_copy(src, dst, **kw)

    monkeypatch.setattr(bundle_mod.shutil, "copyfile", copy_while_another_run_writes)
    with pytest.raises(BundleError, match="already exists; use --overwrite"):
        build(folder, sources)
    assert load_bundle(folder).artifacts == built.artifacts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.m3", "src", "tiny.m3"]


def test_sources_inside_folder_are_moved_in(tmp_path, sources):
    folder = tmp_path / "staged.m3"
    (folder / "work").mkdir(parents=True)
    plan = folder / "work" / "engine.plan"
    plan.write_bytes(b"\x00plan" * 100)
    files = {"reference": sources["reference"], "engine": (plan, None, "int8")}
    bundle = build(folder, files)
    art = load_bundle(folder).artifacts["engine"]
    assert (art.file, art.format) == ("work/engine.plan", "tensorrt-plan")
    assert bundle.artifact_path("engine").read_bytes() == b"\x00plan" * 100


def test_write_refuses_bad_names(tmp_path, sources):
    with pytest.raises(BundleError, match=r"must end with \.m3"):
        build(tmp_path / "out", sources)
    (tmp_path / "busy.m3").mkdir()
    (tmp_path / "busy.m3" / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds other files"):
        build(tmp_path / "busy.m3", sources)
    with pytest.raises(BundleError, match="'reference' artifact"):
        build(tmp_path / "noref.m3", {"engine": sources["engine"]})


def test_onnx_metadata_round_trip(tmp_path):
    info = model_info()
    props = info.to_onnx_metadata()
    assert set(props) == {
        "m3trt.label_names",
        "m3trt.tag_vocab",
        "m3trt.preprocessing",
        "m3trt.model",
        "m3trt.version",
    }
    assert all(isinstance(v, str) for v in props.values())
    assert ModelInfo.from_onnx_metadata(props) == info
    assert ModelInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_missing_onnx_metadata(tmp_path):
    bare = save_onnx(tmp_path / "bare.onnx", "Identity", None)
    with pytest.raises(BundleError) as info:
        ModelInfo.from_onnx_file(bare)
    message = str(info.value)
    assert "bare.onnx is not an m3trt model (no m3trt.* metadata)" in message
    assert "m3trt export" in message and "\n" not in message
    props = model_info().to_onnx_metadata()
    del props["m3trt.tag_vocab"]
    with pytest.raises(BundleError, match="no m3trt.tag_vocab metadata"):
        ModelInfo.from_onnx_metadata(props)


def test_describe(built):
    text = describe_bundle(load_bundle(built.path))
    for needle in (
        "tiny",
        "cpu",
        "int8",
        f"labels         {len(LABELS)}: airport, animal",
        "(+2 more)",
        "model.onnx",
        "model.int8.onnx",
        "calibration.json",
        "of1_drop",
        "0.001235",  # 4 significant digits
        "median_ms",
        "K_max",
    ):
        assert needle in text, needle


def test_runtime_modules_do_not_import_torch_or_onnx():
    code = (
        "import sys, m3trt.runtime.bundle, m3trt.runtime.inspect_bundle;"
        "bad = {'torch', 'onnx'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
