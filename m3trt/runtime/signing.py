"""Signed bundles: the OpenSSF model-signing format over every file of ``NAME.m3/``.

What the hashes in ``bundle.json`` promise: that each artifact is the file the build wrote, so a
flipped byte, a truncated copy or a half-finished download is caught. What they do not promise:
who wrote it. Anyone who can replace ``model.onnx`` can also rewrite its sha256 in
``bundle.json``. A signature does: ``m3trt build --sign-key key.pem`` signs the whole folder
(``bundle.json`` and every artifact, by the library's own manifest of file hashes) with an
elliptic-curve private key and stores the signature as ``NAME.m3/bundle.sig``; ``--verify-key
pub.pem`` (or ``M3TRT_VERIFY_KEY``) refuses a bundle that is unsigned, signed by another key, or
changed in any file since it was signed (files added, removed or edited).

``model-signing`` is an optional dependency (``pip install 'm3trt[signing]'``), imported only here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from m3trt.data.safe_open import open_regular
from m3trt.errors import InputError

SIGNATURE_FILE = "bundle.sig"
MAX_KEY_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 1 << 20  # generous: the quickstart bundle's signature is 2.3 kB
INSTALL_HINT = "signed bundles need model-signing: pip install 'm3trt[signing]'"


def _library():
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as exc:
        raise InputError(f"{INSTALL_HINT} ({exc})") from None
    return hashing, signing, verifying


def _bundle_dir(bundle: str | os.PathLike) -> Path:
    path = Path(bundle)
    if path.name == "bundle.json":
        path = path.parent
    if not (path / "bundle.json").is_file():
        raise InputError(f"{path}: not an m3trt bundle (no bundle.json)")
    return path


def _hashing(hashing, bundle: Path):
    """Every file of the bundle but the signature itself; links are refused, not followed.
    ``bundle`` must be absolute: the library records a relative ignored path as given and reads
    it back relative to the bundle, so ``x.m3/bundle.sig`` signed from the bundle's parent was
    never ignored again, and a bundle signed through a relative path failed its own check."""
    config = hashing.Config().set_ignored_paths(paths=[bundle / SIGNATURE_FILE])
    return config.set_allow_symlinks(False)


def _key_file(key: str | os.PathLike, what: str) -> Path:
    """A PEM key file checked as any input is (a regular file; PEM keys are a few kB, so a big
    one is refused before the library reads it whole)."""
    path = Path(key)
    try:
        open_regular(path, what, MAX_KEY_BYTES).close()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found (a PEM file)") from None
    return path


def check_signing_key(private_key: str | os.PathLike) -> Path:
    """Fail early (before a long build) on a missing or unusable private key, or a missing
    library (without model-signing the whole build ran before its last step failed)."""
    key = _key_file(private_key, "signing key")
    _library()
    try:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as exc:
        raise InputError(f"{INSTALL_HINT} ({exc})") from None
    try:
        loaded = load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{key}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise InputError(f"{key}: not an elliptic-curve key (make one: openssl ecparam -genkey)")
    return key


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Sign every file of ``bundle`` with an elliptic-curve private key (PEM); returns the
    signature's path (``bundle/bundle.sig``)."""
    hashing, signing, _ = _library()
    folder = _bundle_dir(bundle)
    key = _key_file(private_key, "signing key")
    signature = folder / SIGNATURE_FILE
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key)
    except Exception as exc:  # the library raises ValueError/TypeError/cryptography errors
        raise InputError(f"{key}: not a usable elliptic-curve private key in PEM ({exc})") from None
    where = Path(os.path.abspath(folder))
    config.set_hashing_config(_hashing(hashing, where)).sign(where, where / SIGNATURE_FILE)
    return signature


def verify_bundle(bundle: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Raise InputError (one line naming the bundle) unless ``bundle`` carries a valid signature
    by ``public_key`` over exactly the files it holds now."""
    hashing, _, verifying = _library()
    folder = _bundle_dir(bundle)
    key = _key_file(public_key, "verification key")
    _check_signature_file(folder)
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=key)
    except Exception as exc:
        raise InputError(f"{key}: not a usable elliptic-curve public key in PEM ({exc})") from None
    try:
        where = Path(os.path.abspath(folder))
        config.set_hashing_config(_hashing(hashing, where)).verify(where, where / SIGNATURE_FILE)
    except Exception as exc:  # wrong key, changed files, a malformed signature file
        raise InputError(f"{folder}: signature check failed ({_why(exc)})") from None


def _check_signature_file(folder: Path) -> None:
    """``bundle.sig`` checked as any input is before the library reads it whole: a regular file
    (a FIFO was reported as "no bundle.sig") of at most ``MAX_SIGNATURE_BYTES`` (a 1 GiB
    sparse one took 2.2 GB)."""
    signature = folder / SIGNATURE_FILE
    try:
        open_regular(signature, "bundle signature", MAX_SIGNATURE_BYTES).close()
    except FileNotFoundError:
        raise InputError(
            f"{folder}: bundle is not signed (no {SIGNATURE_FILE}) and --verify-key was given"
        ) from None


def _why(exc: Exception) -> str:
    """The library's reason, short: which files changed, rather than their digests."""
    text = " ".join(str(exc).split())
    # The library may nest its message in a list's repr, so the quotes can come escaped.
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
    if changed:
        return "changed since it was signed: " + ", ".join(changed)
    return text[:200] or type(exc).__name__
