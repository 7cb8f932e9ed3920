"""Hostile bundles and graphs that cost time or memory before their one-line refusal: a graph
scanned field by field, a graph or signature read whole, an artifact listed under many roles,
``runtime`` entries of the wrong shape, keys written twice in ``bundle.json``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.errors import InputError, M3Error
from m3trt.runtime import bundle as bundle_mod
from m3trt.runtime import graph_contract
from m3trt.runtime.bundle import MAX_ARTIFACTS, load_bundle
from m3trt.runtime.graph_contract import MAX_NODES
from m3trt.runtime.model_io import BundleError
from m3trt.runtime.onnx_scan import (
    BASE_FIELDS,
    FIELDS_PER_NODE,
    MAX_MODEL_FIELDS,
    NotProtobuf,
    flat_graph_problem,
)


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def one_line(*args: object) -> str:
    """The command's output, checked to be one line with exit code 2 (a user error)."""
    code, output = run(*args)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    return output


@pytest.fixture
def bundle(tmp_path: Path, int8_bundle: Path) -> Path:
    copy = tmp_path / "copy.m3"
    shutil.copytree(int8_bundle, copy)
    return copy


def edit(bundle: Path, change) -> None:
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# --------------------------------------------------------------------------------------------------
# 1. The wire scan and the graph read are bounded


def test_field_number_zero_is_refused_at_once():
    # 64 MiB of zeros took 12-17 s to step through (32 million "fields" numbered 0)
    started = time.perf_counter()
    with pytest.raises(NotProtobuf, match="field number 0 at byte 0"):
        flat_graph_problem(bytes(1 << 20), MAX_NODES)
    with pytest.raises(NotProtobuf, match="field number 0 at byte 2"):
        flat_graph_problem(b"\x08\x07" + b"\x80\x00", MAX_NODES)  # a two-byte key of 0
    assert time.perf_counter() - started < 0.5


def test_a_model_proto_of_countless_fields_is_refused():
    # valid protobuf (ir_version 0, over and over), as slow to step through as zeros
    problem = flat_graph_problem(b"\x08\x00" * (MAX_MODEL_FIELDS + 1), MAX_NODES)
    assert problem and f"more than {MAX_MODEL_FIELDS:,} fields in its ModelProto" in problem


def test_the_walk_has_one_budget_of_fields_for_all_levels():
    budget = BASE_FIELDS + FIELDS_PER_NODE * 10
    in_graph = field(7, b"\x10\x00" * budget)  # GraphProto varints
    in_node = field(7, field(1, b"\x10\x00" * budget))  # NodeProto varints in one node
    for data in (in_graph, in_node):
        problem = flat_graph_problem(data, max_nodes=10)
        assert problem and f"more than {budget:,} protobuf fields" in problem
    assert flat_graph_problem(field(7, field(1, b"\x10\x00") * 10), max_nodes=10) is None


def test_real_graphs_pass_the_scan(tiny_onnx: Path, int8_bundle: Path):
    for path in [tiny_onnx, *int8_bundle.glob("*.onnx")]:
        assert flat_graph_problem(path.read_bytes(), MAX_NODES) is None, path


def test_build_refuses_a_file_of_zeros_in_one_line(tmp_path: Path):
    zeros = tmp_path / "zeros.onnx"
    zeros.write_bytes(bytes(1 << 20))
    out = tmp_path / "z.m3"
    output = one_line("build", zeros, "-o", out, "--precision", "fp32", "--target", "cpu")
    assert "zeros.onnx" in output and "field number 0" in output


def test_a_bundle_graph_is_read_with_a_cap(bundle: Path, monkeypatch):
    """check_graph read model.onnx whole, uncapped (3 GiB sparse: 511 s, 3.2 GB); the 2 GiB cap
    is lowered here so that no large file is needed."""
    info = load_bundle(bundle, verify=False).model
    graph = bundle / "model.onnx"
    monkeypatch.setattr(graph_contract, "MAX_SOURCE_BYTES", graph.stat().st_size - 1)
    with pytest.raises(BundleError, match=r"model\.onnx: ONNX graph of [\d,]+ bytes is over"):
        graph_contract.check_graph(info, graph, "bundle.json", bundle, ["model.onnx"])
    output = one_line("inspect", "--no-verify", bundle)  # refused before it is hashed or read
    assert "model.onnx" in output and f"{graph.stat().st_size - 1:,} bytes" in output


# --------------------------------------------------------------------------------------------------
# 2. bundle.sig is read as any input is


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    pytest.importorskip("model_signing", reason="pip install 'm3trt[signing]'")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "pub.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def manifest_only(tmp_path: Path, int8_bundle: Path) -> Path:
    """What verify_bundle needs to reach bundle.sig: a folder with bundle.json."""
    folder = tmp_path / "sig.m3"
    folder.mkdir()
    shutil.copyfile(int8_bundle / "bundle.json", folder / "bundle.json")
    return folder


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_signature_that_is_a_fifo_is_named_as_one(manifest_only: Path, public_key: Path):
    from m3trt.runtime.signing import verify_bundle

    os.mkfifo(manifest_only / "bundle.sig")  # was "bundle is not signed (no bundle.sig)"
    with pytest.raises(InputError, match=r"bundle\.sig: bundle signature is a FIFO"):
        verify_bundle(manifest_only, public_key)
    (manifest_only / "bundle.sig").unlink()
    (manifest_only / "bundle.sig").mkdir()
    with pytest.raises(InputError, match=r"bundle\.sig: bundle signature is a folder"):
        verify_bundle(manifest_only, public_key)


def test_a_huge_signature_is_refused_before_it_is_read(manifest_only: Path, public_key: Path):
    from m3trt.runtime.signing import MAX_SIGNATURE_BYTES, verify_bundle

    with open(manifest_only / "bundle.sig", "wb") as f:  # sparse: 1 GiB took 2.2 GB
        f.truncate(MAX_SIGNATURE_BYTES + 1)
    with pytest.raises(InputError, match=f"the limit is {MAX_SIGNATURE_BYTES:,} bytes"):
        verify_bundle(manifest_only, public_key)


# --------------------------------------------------------------------------------------------------
# 3. runtime entries are objects


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("x", "must be a JSON object, not str"),
        (None, "must be a JSON object, not null"),
        ({"engine": ["onnxruntime"]}, "engine must be a string"),
    ],
)
def test_a_runtime_entry_of_the_wrong_shape_is_refused(bundle: Path, entry, words):
    edit(bundle, lambda d: d.__setitem__("runtime", {"cpu": entry}))
    with pytest.raises(BundleError, match=f"runtime entry 'cpu':? {words}"):
        load_bundle(bundle, verify=False)


def test_infer_on_a_runtime_string_is_one_line(tmp_path: Path, bundle: Path, test_images: Path):
    # was AttributeError: 'str' object has no attribute 'get' (exit 1); inspect accepted it
    edit(bundle, lambda d: d.__setitem__("runtime", {"cpu": "x"}))
    for command in (
        ["inspect", bundle],
        ["infer", bundle, test_images, "-o", tmp_path / "r.jsonl"],
    ):
        assert "runtime entry 'cpu' must be a JSON object" in one_line(*command)


def test_the_registry_ignores_a_runtime_entry_made_in_code(int8_bundle: Path):
    import dataclasses

    from m3trt.runtime.engines.registry import REGISTRY, preferred_kinds

    chosen = dataclasses.replace(load_bundle(int8_bundle, verify=False), runtime={"cpu": "x"})
    assert preferred_kinds(chosen, "cpu") == list(REGISTRY)


# --------------------------------------------------------------------------------------------------
# 4. One file under many roles is read once; absurd artifact counts are refused


def add_roles(bundle: Path, count: int, **changes: object) -> None:
    def change(data):
        for i in range(count):
            data["artifacts"][f"extra{i}"] = {**data["artifacts"]["reference"], **changes}

    edit(bundle, change)


def test_a_file_under_many_roles_is_hashed_and_checked_once(bundle: Path, monkeypatch):
    hashed, checked = [], []
    real_hash, real_check = bundle_mod.sha256_file, graph_contract.check_graph
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    monkeypatch.setattr(
        graph_contract, "check_graph", lambda *a: checked.append(a[1]) or real_check(*a)
    )
    add_roles(bundle, 20)  # 40 roles: 4.6 s instead of 0.6 s
    loaded = load_bundle(bundle)
    files = {a.file for a in loaded.artifacts.values()}
    assert len(loaded.artifacts) == len(files) + 20
    assert sorted(p.name for p in hashed) == sorted(files)
    assert len(checked) == len(set(checked))


def test_every_role_of_a_shared_file_is_still_checked(bundle: Path):
    add_roles(bundle, 1, sha256="0" * 64)
    with pytest.raises(BundleError, match=r"model\.onnx has been modified .*sha256 mismatch"):
        load_bundle(bundle)
    add_roles(bundle, 1, bytes=1)
    with pytest.raises(BundleError, match=r"model\.onnx has been modified .*expected 1\)"):
        load_bundle(bundle, verify=False)


def test_an_absurd_number_of_artifacts_is_refused(bundle: Path):
    add_roles(bundle, MAX_ARTIFACTS)  # a 64 MiB bundle.json holds hundreds of thousands
    output = one_line("inspect", "--no-verify", bundle)
    assert "bundle.json" in output and f"artifacts, more than the {MAX_ARTIFACTS}" in output


# --------------------------------------------------------------------------------------------------
# 5. Keys written twice


@pytest.mark.parametrize(
    ("before", "after", "key"),
    [
        ('"precision": ', '"precision": "fp16", "precision": ', "precision"),
        ('"file": "model.onnx"', '"file": "model.onnx", "file": "model.onnx"', "file"),
    ],
)
def test_a_key_written_twice_is_refused(bundle: Path, before: str, after: str, key: str):
    path = bundle / "bundle.json"
    text = json.dumps(json.loads(path.read_text()))  # one line: the replacement is exact
    assert before in text
    path.write_text(text.replace(before, after, 1))
    output = one_line("inspect", bundle)
    assert "bundle.json" in output and f'key "{key}" appears twice' in output
    with pytest.raises(M3Error, match=f'key "{key}" appears twice'):
        load_bundle(bundle, verify=False)


def test_signing_without_the_library_is_refused_before_the_build(tmp_path, tiny_onnx, monkeypatch):
    """`check_signing_key` needed only cryptography: the build ran, then failed at its end."""
    import sys

    from click.testing import CliRunner

    from m3trt.cli import main

    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    monkeypatch.setitem(sys.modules, "model_signing", None)  # not installed
    out = tmp_path / "x.m3"
    result = CliRunner().invoke(
        main,
        ["build", str(tiny_onnx), "-o", str(out), "--precision", "fp32", "--sign-key", str(key)],
    )
    assert result.exit_code == 2 and "pip install 'm3trt[signing]'" in result.output
    assert not out.exists()
