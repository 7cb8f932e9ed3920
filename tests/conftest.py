"""Shared fixtures: a tiny deterministic synthetic dataset and a model trained on it once."""

from pathlib import Path

import pytest

from m3trt.data.synth import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=200, size=64, seed=3)
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def tiny_options():
    from m3trt.train.loop import TrainOptions

    return TrainOptions(
        backbone="resnet18",
        image_size=64,
        epochs=8,
        batch_size=16,
        lr=1e-3,
        seed=0,
        tag_hidden=64,
        visual_dim=64,
        tag_min_count=1,
        threads=2,
        # The quantization tests (guard, precision auto) need labels that depend on the image;
        # fitted on 30 val images the late fusion makes this tiny model's labels come from its
        # tags. tests/test_late_fusion.py fuses a copy (seconds) and checks its export parity.
        late_fusion=False,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data, tiny_options):
    from m3trt.train.loop import train

    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    result = train(tiny_data, out, tiny_options)
    return out, result


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint):
    """The trained tiny checkpoint exported to ONNX (FP32 reference graph)."""
    from m3trt.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_checkpoint(tiny_checkpoint[0], out, parity_images=2)
    return out


@pytest.fixture(scope="session")
def tiny_sets(tiny_onnx, tiny_data):
    """Calibration (train split) and validation (val split) images for the tiny model."""
    from m3trt.calibration.data import load_image_set
    from m3trt.runtime.model_io import ModelInfo

    info = ModelInfo.from_onnx_file(tiny_onnx)
    kw = dict(image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab)
    calib = load_image_set(tiny_data, count=64, splits=["train"], **kw)
    val = load_image_set(tiny_data, splits=["val"], **kw)
    return calib, val


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, tiny_onnx, tiny_data):
    """A CPU INT8 bundle of the tiny model, built through the CLI for ONNX Runtime: with
    ``--engine auto`` the build keeps whichever engine timed faster, so the tests that read the
    bundle's engine, artifact or exact scores would depend on the machine's load (on an AVX-512
    host OpenVINO won under load). ``test_build.py`` builds with ``auto`` on a copy."""
    from click.testing import CliRunner

    from m3trt.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny.m3"
    args = ["--quiet", "build", str(tiny_onnx), "-o", str(out), "--precision", "int8"]
    args += ["--target", "cpu", "--engine", "onnxruntime"]
    args += ["--calib", str(tiny_data), "--calib-count", "64"]
    # Its validation split has 30 images: one changed label is 1.5 points of O-F1; allow two.
    args += ["--max-of1-drop", "3.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def test_images(tmp_path_factory, tiny_data):
    """The tiny set's test split as a folder tree of JPEGs and PNGs (with a subfolder)."""
    import shutil

    from m3trt.data.manifest import read_manifest

    out = tmp_path_factory.mktemp("photos")
    records = read_manifest(tiny_data).split("test")[:24]
    for i, record in enumerate(records):
        folder = out / ("sub" if i % 3 == 0 else "")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(record.path, folder / record.path.name)
    return out
