"""What `m3trt build` leaves on disk when its output holds its inputs, when it is signed, when
it is killed, and when -o is a link: the old bundle and the user's files are never lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main


def build(*args):
    result = CliRunner().invoke(main, ["--quiet", "build", *map(str, args)])
    return result.exit_code, result.output


FP32 = ("--precision", "fp32", "--target", "cpu", "--engine", "onnxruntime")


@pytest.fixture
def old_bundle(tmp_path, int8_bundle):
    out = tmp_path / "model.m3"
    shutil.copytree(int8_bundle, out)
    return out


def test_a_source_inside_the_output_is_refused_not_deleted(old_bundle, tiny_onnx):
    source = old_bundle / "keep" / "source.onnx"
    source.parent.mkdir()
    shutil.copyfile(tiny_onnx, source)
    before = sorted(p.name for p in old_bundle.iterdir())
    code, output = build(source, "-o", old_bundle, "--overwrite", *FP32)
    assert code == 2, output
    assert "SOURCE is inside -o" in output and len(output.strip().splitlines()) == 1
    assert source.is_file() and sorted(p.name for p in old_bundle.iterdir()) == before


def test_calibration_data_inside_the_output_is_refused(old_bundle, tiny_onnx, tiny_data):
    data = old_bundle / "data"
    shutil.copytree(tiny_data.parent, data)
    manifest = data / tiny_data.name
    code, output = build(tiny_onnx, "-o", old_bundle, "--overwrite", "--calib", manifest)
    assert code == 2 and "--calib is inside -o" in output
    assert manifest.is_file()


def _entries(folder: Path) -> list[str]:
    """What is in ``folder`` but the output locks (kept, as every run's)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_a_failed_signature_keeps_the_old_bundle(old_bundle, tiny_onnx, monkeypatch, tmp_path):
    """Signing used to run after the new bundle had replaced the old one: a failure (or Ctrl-C)
    there left an unsigned bundle in place of a signed one."""
    import m3trt.runtime.signing as signing

    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "key.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seen = []

    def interrupted(bundle, private_key):
        seen.append(Path(bundle))
        assert (Path(bundle) / "bundle.json").is_file()  # the finished bundle, still staged
        raise KeyboardInterrupt

    monkeypatch.setattr(signing, "sign_bundle", interrupted)
    manifest = (old_bundle / "bundle.json").read_bytes()
    code, output = build(tiny_onnx, "-o", old_bundle, "--overwrite", "--sign-key", key, *FP32)
    assert code == 130, output
    assert seen and seen[0] != old_bundle and seen[0].parent == old_bundle.parent
    assert (old_bundle / "bundle.json").read_bytes() == manifest
    assert _entries(old_bundle.parent) == ["key.pem", "model.m3"]  # no work or staging left


def test_the_work_folder_is_beside_the_output_and_removed(tmp_path, tiny_onnx, monkeypatch):
    """In $TMPDIR a killed build's work folder (hundreds of MB) stayed forever; beside the
    output the next build of it clears it."""
    import m3trt.build.bundle as bundle

    works = []
    prepare = bundle.prepare_source

    def spy(source, work, opset, reporter):
        works.append(work)
        return prepare(source, work, opset, reporter)

    monkeypatch.setattr(bundle, "prepare_source", spy)
    out = tmp_path / "out" / "fresh.m3"
    code, output = build(tiny_onnx, "-o", out, *FP32)
    assert code == 0, output
    assert works[0].parent == out.parent and works[0].name.startswith(".fresh.m3.tmp-")
    assert _entries(out.parent) == ["fresh.m3"]
    # A leftover of a killed build is cleared by the next build of the same output.
    leftover = out.parent / ".fresh.m3.tmp-12345-0123abcd"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "model.onnx").write_bytes(b"x" * 1000)
    code, output = build(tiny_onnx, "-o", out, "--overwrite", *FP32)
    assert code == 0, output
    assert _entries(out.parent) == ["fresh.m3"]


def test_an_output_link_is_replaced_without_a_leftover(tmp_path, int8_bundle, tiny_onnx):
    target = tmp_path / "real.m3"
    shutil.copytree(int8_bundle, target)
    link = tmp_path / "link.m3"
    link.symlink_to(target)
    code, output = build(tiny_onnx, "-o", link, "--overwrite", *FP32)
    assert code == 0, output
    assert not link.is_symlink() and (link / "bundle.json").is_file()
    assert (target / "bundle.json").is_file()  # the link's target was not touched
    assert _entries(tmp_path) == ["link.m3", "real.m3"]


@pytest.mark.parametrize(
    "options, reason",
    [
        (["--precision", "fp16", "--target", "cpu"], "fp16 is a GPU precision"),
        (["--precision", "int8", "--target", "cpu"], "INT8 needs calibration images"),
        (["--target", "cuda", "--engine", "openvino"], "--target cuda runs on onnxruntime-gpu"),
        (["--target", "cuda", "--precision", "int8"], "--target tensorrt"),
    ],
)
def test_target_options_are_refused_before_the_export(
    tmp_path, tiny_checkpoint, monkeypatch, options, reason
):
    """These failed only after the checkpoint's export (13 s for the quickstart model)."""
    import m3trt.build.bundle as bundle

    def no_export(*_args, **_kw):
        raise AssertionError("the export ran before the options were checked")

    monkeypatch.setattr(bundle, "prepare_source", no_export)
    code, output = build(tiny_checkpoint[0], "-o", tmp_path / "x.m3", *options)
    assert code == 2 and reason in output, output


def test_a_checkpoint_config_that_is_a_fifo_is_named_as_one(tmp_path, tiny_checkpoint):
    """It was "not a checkpoint folder (with config.json)"."""
    import os

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    code, output = build(folder, "-o", tmp_path / "x.m3", *FP32)
    assert code == 2 and "config.json" in output and "FIFO" in output, output
