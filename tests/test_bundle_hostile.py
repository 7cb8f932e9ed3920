"""Hostile bundles: every edited field of bundle.json is refused at load with one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.errors import M3Error
from m3trt.runtime.bundle import load_bundle


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def bundle(tmp_path, int8_bundle) -> Path:
    copy = tmp_path / "copy.m3"
    shutil.copytree(int8_bundle, copy)
    return copy


def edit(bundle: Path, change) -> None:
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def refused(bundle: Path, tmp_path: Path, test_images: Path, *words: str) -> str:
    infer = ["infer", bundle, test_images, "-o", tmp_path / "r.jsonl"]
    for command in (["inspect", bundle], infer):
        code, output = run(*command)
        assert code == 2, output
        assert len(output.strip().splitlines()) == 1, output
        assert all(w in output for w in words), output
    assert not (tmp_path / "r.jsonl").exists()
    return output


def image_size(value):
    return lambda d: d["model"]["preprocessing"].__setitem__("image_size", value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (image_size(100000), ["image_size 100000 is outside"]),
        (image_size(128), ["does not match", "'image' has shape"]),
        (lambda d: d["model"].__setitem__("k_max", d["model"]["k_max"] - 1), ["k_max"]),
        (lambda d: d["model"]["tag_vocab"].pop(), ["tag_vocab differs"]),
        (lambda d: d["model"]["label_names"].reverse(), ["label_names differs"]),
        (lambda d: d["model"].__setitem__("use_tags", False), ["use_tags"]),
        (lambda d: d["artifacts"]["engine"].__setitem__("format", ["onnx"]), ["format list"]),
        (lambda d: d["artifacts"]["engine"].__setitem__("file", 7), ["file must be a string"]),
        (lambda d: d["artifacts"]["engine"].__setitem__("precision", {}), ["precision dict"]),
    ],
)
def test_edited_field_is_refused(tmp_path, bundle, test_images, change, words):
    edit(bundle, change)
    refused(bundle, tmp_path, test_images, "bundle.json", *words)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
        ('{"schema_version": ' + "9" * 5000 + "}", ["unusable JSON"]),
        ('{"schema_version": 1, "x": NaN}', ["unusable JSON", "NaN is not a JSON number"]),
        ('{"schema_version": 1, "x": -Infinity}', ["-Infinity is not a JSON number"]),
        # valid JSON that Python reads as inf: it passed, and inspect --json printed Infinity
        ('{"schema_version": 1, "x": 1e999}', ["unusable JSON", "1e999 is beyond any float"]),
    ],
)
def test_hostile_json_is_one_line(tmp_path, bundle, test_images, text, words):
    (bundle / "bundle.json").write_text(text)
    refused(bundle, tmp_path, test_images, "bundle.json", *words)


def test_external_data_must_be_a_hashed_artifact(tmp_path, bundle, test_images):
    import onnx

    manifest = json.loads((bundle / "bundle.json").read_text())
    engine = manifest["artifacts"]["engine"]
    model = onnx.load(str(bundle / engine["file"]))
    onnx.save_model(
        model,
        str(bundle / engine["file"]),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    data = (bundle / engine["file"]).read_bytes()
    engine.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    refused(bundle, tmp_path, test_images, "external data 'weights.bin' is not an artifact")


def test_inspect_never_prints_terminal_escapes(bundle):
    from m3trt.runtime.inspect_bundle import describe_bundle

    loaded = load_bundle(bundle)
    loaded.model.label_names[0] = "\x1b]0;owned\x07\x1b[31mred"
    loaded.provenance["note"] = "\u202eevil"
    text = describe_bundle(loaded)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[31mred" in text


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling"])
def test_an_artifact_that_is_not_a_file_is_named_for_what_it_is(
    tmp_path, bundle, test_images, kind
):
    """A FIFO or a folder in an artifact's place was "missing"."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    path = bundle / manifest["artifacts"]["engine"]["file"]
    path.unlink()
    {"fifo": os.mkfifo, "folder": os.mkdir, "dangling": lambda p: p.symlink_to("/nonexistent")}[
        kind
    ](path)
    says = {"fifo": "is a FIFO (named pipe)", "folder": "is a folder", "dangling": "dangling"}
    refused(bundle, tmp_path, test_images, path.name, says[kind])


def test_a_bundle_path_that_is_a_fifo_is_named_as_one(tmp_path):
    fifo = tmp_path / "x.m3"
    os.mkfifo(fifo)
    with pytest.raises(M3Error, match="not an m3trt bundle: it is a FIFO"):  # was: no bundle.json
        load_bundle(fifo)
