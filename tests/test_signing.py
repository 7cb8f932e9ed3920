"""Signed bundles (OpenSSF model signing): what hashes cannot catch, a signature does."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("model_signing", reason="pip install 'm3trt[signing]'")

from m3trt.cli import main
from m3trt.runtime.signing import SIGNATURE_FILE, sign_bundle, verify_bundle


def write_keys(folder: Path, name: str, kind: str = "ec") -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return write_keys(folder, "ours"), write_keys(folder, "theirs")


@pytest.fixture
def signed(tmp_path, int8_bundle, keys):
    bundle = tmp_path / "signed.m3"
    shutil.copytree(int8_bundle, bundle)
    sign_bundle(bundle, keys[0][0])
    return bundle


def swap_and_rehash(bundle: Path) -> None:
    """What a hash cannot catch: another model in place, its sha256 updated in bundle.json."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    engine = next(r for r in manifest["artifacts"] if r != "reference")
    target = bundle / manifest["artifacts"][engine]["file"]
    shutil.copyfile(bundle / manifest["artifacts"]["reference"]["file"], target)
    data = target.read_bytes()
    manifest["artifacts"][engine]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["artifacts"][engine]["bytes"] = len(data)
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


def test_signed_bundle_runs_and_tampering_is_refused(tmp_path, signed, keys, test_images):
    (_, public), (_, other) = keys
    code, output = run(
        "infer", signed, test_images, "-o", tmp_path / "a.jsonl", "--verify-key", public
    )
    assert code == 0, output
    code, output = run(
        "infer", signed, test_images, "-o", tmp_path / "b.jsonl", "--verify-key", other
    )
    assert code == 2 and "signature check failed" in output and len(output.splitlines()) == 1
    swap_and_rehash(signed)
    # The hashes agree with the swapped model: without a key, it runs.
    assert run("infer", signed, test_images, "-o", tmp_path / "c.jsonl")[0] == 0
    code, output = run(
        "infer", signed, test_images, "-o", tmp_path / "d.jsonl", "--verify-key", public
    )
    assert code == 2 and "changed since it was signed" in output, output
    assert not (tmp_path / "d.jsonl").exists()


def test_unsigned_bundle_is_refused_under_a_key(
    tmp_path, int8_bundle, keys, tiny_data, monkeypatch
):
    public = keys[0][1]
    out = tmp_path / "a.jsonl"
    code, output = run("infer", int8_bundle, tiny_data.parent, "-o", out, "--verify-key", public)
    assert code == 2 and "is not signed" in output and not out.exists()
    code, output = run("eval", int8_bundle, tiny_data, "--verify-key", public)
    assert code == 2 and "is not signed" in output
    monkeypatch.setenv("M3TRT_VERIFY_KEY", str(public))  # the trusted-key setting
    code, output = run("infer", int8_bundle, tiny_data.parent, "-o", out)
    assert code == 2 and "is not signed" in output


def test_extra_file_and_removed_signature(signed, keys):
    public = keys[0][1]
    verify_bundle(signed, public)
    (signed / "extra.onnx").write_bytes(b"smuggled")
    with pytest.raises(Exception, match="signature check failed"):
        verify_bundle(signed, public)
    (signed / "extra.onnx").unlink()
    (signed / SIGNATURE_FILE).unlink()
    with pytest.raises(Exception, match="not signed"):
        verify_bundle(signed, public)


def test_build_signs_and_checks_the_key_first(tmp_path, tiny_onnx, keys):
    rsa_private, _ = write_keys(tmp_path, "rsa", kind="rsa")
    out = tmp_path / "never.m3"
    code, output = run(
        "build", tiny_onnx, "-o", out, "--precision", "fp32", "--sign-key", rsa_private
    )
    assert code == 2 and "not an elliptic-curve key" in output and not out.exists()
    (private, public) = keys[0]
    out = tmp_path / "fp32.m3"
    code, output = run(
        "build",
        tiny_onnx,
        "-o",
        out,
        "--precision",
        "fp32",
        "--target",
        "cpu",
        "--sign-key",
        private,
    )
    assert code == 0, output
    assert (out / SIGNATURE_FILE).is_file()
    verify_bundle(out, public)


def test_signed_through_a_relative_path_verifies_anywhere(
    tmp_path, int8_bundle, keys, monkeypatch, test_images
):
    """The library keeps a relative ignored path as given; signing ``rel.m3`` from its parent
    recorded ``rel.m3/bundle.sig`` and the bundle then failed its own check."""
    private, public = keys[0]
    shutil.copytree(int8_bundle, tmp_path / "rel.m3")
    monkeypatch.chdir(tmp_path)
    sign_bundle("rel.m3", private)
    verify_bundle("rel.m3", public)
    monkeypatch.chdir(tmp_path / "rel.m3")
    verify_bundle(".", public)
    moved = tmp_path / "elsewhere" / "moved.m3"
    shutil.copytree(tmp_path / "rel.m3", moved)
    verify_bundle(moved, public)
    out = tmp_path / "rows.jsonl"
    code, output = run("infer", "../rel.m3", test_images, "-o", out, "--verify-key", public)
    assert code == 0, output
