"""The engine bundle schema (DESIGN §3.4): a folder ``NAME.m3/`` with ``bundle.json`` and its
artifacts, and the checks made when one is loaded.

Loading checks the schema version, the artifact paths, sizes and sha256 hashes, and turns every
problem into a one-line ``BundleError`` naming the file and the fix. Writing lives in
``bundle_writer``; the model's I/O contract in ``model_io``. Runtime path: never imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath
from typing import Any

from m3trt import __version__
from m3trt.constants import PRECISIONS, TARGETS
from m3trt.runtime.model_io import (
    REBUILD,
    ModelInfo,
    check_int,
)
from m3trt.runtime.model_io import bundle_error as _error
from m3trt.runtime.model_io import one_line as _one_line

SCHEMA_VERSION = 2
BUNDLE_FILE = "bundle.json"
BUNDLE_SUFFIX = ".m3"
# Artifact formats: a plain, portable ONNX graph (any ONNX engine); an ONNX graph ONNX Runtime
# optimized offline for its CPU provider (contrib ops, CPU kernels: ONNX Runtime CPU only); a
# serialized TensorRT plan; side files.
ONNX = "onnx"
ONNX_ORT_CPU = "onnx-ort-cpu"
TENSORRT_PLAN = "tensorrt-plan"
FORMATS = (ONNX, ONNX_ORT_CPU, TENSORRT_PLAN, "json", "binary")
REFERENCE = "reference"  # the FP32 fused graph, always present
ENGINE = "engine"  # the target's artifact
GRAPH = "graph"  # the portable ONNX graph of the target's precision (Q/DQ, FP16)
CHUNK = 1 << 20  # hash and copy in 1 MiB chunks: a multi-GB plan never sits in memory
REQUIRED_KEYS = ("schema_version", "model", "target", "precision", "artifacts")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# --------------------------------------------------------------------------------------------------
# Bundle description


@dataclass
class Artifact:
    """One file of the bundle; ``file`` is a POSIX path relative to the bundle folder."""

    role: str
    file: str
    sha256: str
    bytes: int
    format: str | None = None
    precision: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["role"]  # the key of the artifacts mapping
        return data

    @classmethod
    def from_json(cls, role: str, data: Any, source: str) -> Artifact:
        where = f"{source}: artifact {role!r}"
        if not isinstance(data, dict):
            raise _error(f"{where} must be a JSON object; {REBUILD}")
        try:
            art = cls(
                role=role,
                file=_check_str(data["file"], "file"),
                sha256=_check_str(data["sha256"], "sha256").lower(),
                bytes=check_int(data["bytes"], "bytes"),
                format=_check_choice(data.get("format"), "format", FORMATS),
                precision=_check_choice(data.get("precision"), "precision", PRECISIONS),
            )
        except KeyError as exc:
            raise _error(f"{where} lacks {exc}; {REBUILD}") from None
        except TypeError as exc:
            raise _error(f"{where}: {exc}; {REBUILD}") from None
        if not _SHA256.match(art.sha256):
            raise _error(f"{where} has an invalid sha256 {art.sha256!r}; {REBUILD}")
        if art.bytes < 0:
            raise _error(f"{where} has a negative size; {REBUILD}")
        _safe_relative(art.file, where)
        return art


def _check_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        raise TypeError(f"{name} {shown[:40]} is not one of {', '.join(choices)}")
    return value


@dataclass
class Bundle:
    """A loaded (or just written) bundle: metadata only; artifacts stay on disk."""

    path: Path
    schema_version: int
    model: ModelInfo
    target: str
    precision: str
    artifacts: dict[str, Artifact]
    provenance: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    # Per device, the engine kind and artifact the build measured fastest: {"cpu": {"engine",
    # "artifact", "ms"}}; ``open_engine`` tries it first.
    runtime: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The folder name without ``.m3``: what users call the bundle."""
        return self.path.name.removesuffix(BUNDLE_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        return self.path / BUNDLE_FILE

    @property
    def engine_artifact(self) -> Artifact:
        """The artifact the runtime should run: the target artifact, else the FP32 reference."""
        return self.artifacts.get(ENGINE) or self.artifacts[REFERENCE]

    def artifact_path(self, role: str) -> Path:
        """Absolute path of the artifact with ``role``; a clear error when the bundle lacks it."""
        if role not in self.artifacts:
            have = ", ".join(sorted(self.artifacts)) or "none"
            raise _error(f"{self.manifest_path}: no {role!r} artifact (has: {have}); {REBUILD}")
        return self.path / self.artifacts[role].file

    def to_json(self) -> dict[str, Any]:
        """The content of ``bundle.json`` (no path: a bundle can be moved or copied)."""
        return {
            "schema_version": self.schema_version,
            "model": self.model.to_json(),
            "target": self.target,
            "precision": self.precision,
            "artifacts": {role: a.to_json() for role, a in sorted(self.artifacts.items())},
            "provenance": self.provenance,
            "accuracy": self.accuracy,
            "latency": self.latency,
            "runtime": self.runtime,
            "extra": self.extra,
        }


def _safe_relative(file: str, where: str) -> PurePosixPath:
    """Refuse artifact paths that could read outside the bundle (absolute, ``..``, drive)."""
    rel = PurePosixPath(file)
    if (
        not file
        or rel.is_absolute()
        or "\\" in file
        or ":" in rel.parts[0]
        or any(part in ("..", ".", "") for part in rel.parts)
        or rel.name == BUNDLE_FILE
    ):
        raise _error(f"{where} path {file!r} escapes the bundle folder; refusing it; {REBUILD}")
    return rel


# --------------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks (plans can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """Installed versions for provenance, read from package metadata (nothing is imported)."""
    versions = {"m3trt": __version__}
    for dist in ("onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------------------------------
# Loading


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load ``NAME.m3/`` or its ``bundle.json``; ``verify=False`` skips hashing, not the checks."""
    from m3trt.runtime.graph_contract import check_graph, check_model_info

    folder = _bundle_folder(Path(path))
    manifest = folder / BUNDLE_FILE
    bundle = _parse_bundle(_read_manifest(manifest), folder)
    check_model_info(bundle.model, str(manifest))
    by_file = _by_file(bundle.artifacts.values())
    for file, entries in by_file.items():
        _check_file(bundle, file, entries, verify=verify)
    for file, entries in by_file.items():
        if any(_is_graph(a) for a in entries):
            check_graph(bundle.model, folder / file, str(manifest), folder, list(by_file))
    return bundle


def _by_file(artifacts: Iterable[Artifact]) -> dict[str, list[Artifact]]:
    """Artifacts grouped by the file they name: one file listed under 40 roles was hashed and
    parsed 40 times (4.6 s instead of 0.6 s); now each file is read once."""
    groups: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        groups.setdefault(str(PurePosixPath(artifact.file)), []).append(artifact)
    return groups


def _is_graph(artifact: Artifact) -> bool:
    """Whether the artifact is an ONNX graph (checked against bundle.json when loaded)."""
    if artifact.format is None:
        return artifact.file.endswith(".onnx")
    return artifact.format in (ONNX, ONNX_ORT_CPU)


def _not_a_file(path: Path) -> str:
    """What stands where a regular file should: "is missing", "is a FIFO (named pipe)"..."""
    from m3trt.data.safe_open import file_kind

    try:
        return f"is {file_kind(path.stat().st_mode)}, not a regular file"
    except OSError:
        return "is a dangling symbolic link" if path.is_symlink() else "is missing"


def _bundle_folder(path: Path) -> Path:
    if path.is_file():
        if path.name != BUNDLE_FILE:
            raise _error(
                f"{path}: not an m3trt bundle (expected a NAME.m3 folder or its {BUNDLE_FILE}); "
                "build one with `m3trt build`"
            )
        return path.parent
    if not path.exists():
        raise _error(
            f"{path}: bundle folder not found; check the path or build it with `m3trt build`"
        )
    if not path.is_dir():  # a FIFO or a device named NAME.m3
        what = _not_a_file(path).removesuffix(", not a regular file")
        raise _error(f"{path}: not an m3trt bundle: it {what}, not a NAME.m3 folder")
    if not os.path.lexists(path / BUNDLE_FILE):  # one that is a FIFO or a loop: said when read
        raise _error(f"{path}: not an m3trt bundle: no {BUNDLE_FILE}; build it with `m3trt build`")
    return path


MAX_MANIFEST_BYTES = 64 << 20  # bundle.json holds metadata, never weights
MAX_ARTIFACTS = 64  # m3trt writes 2-4; each is stat'ed, maybe hashed and parsed at load


def _read_manifest(manifest: Path) -> dict[str, Any]:
    from m3trt.data.safe_open import read_regular
    from m3trt.errors import InputError

    try:
        text = read_regular(manifest, "bundle manifest", MAX_MANIFEST_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError, InputError) as exc:
        reason = exc if isinstance(exc, InputError) else f"{manifest}: cannot be read ({exc})"
        raise _error(f"{reason}; {REBUILD}") from None
    try:
        data = json.loads(
            text,
            parse_constant=_not_json_number,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise _error(f"{manifest}: not valid JSON ({exc}); {REBUILD}") from None
    except _DuplicateKey as exc:
        raise _error(f"{manifest}: {exc}; the file is malformed; {REBUILD}") from None
    except RecursionError:
        raise _error(f"{manifest}: JSON nested too deeply; {REBUILD}") from None
    except ValueError as exc:  # an integer longer than Python converts
        reason = _one_line(exc).split(";")[0][:120]  # not the advice to Python programmers
        raise _error(f"{manifest}: unusable JSON ({reason}); {REBUILD}") from None
    if not isinstance(data, dict):
        raise _error(f"{manifest}: must hold a JSON object; {REBUILD}")
    _check_schema(data, manifest)
    return data


class _DuplicateKey(ValueError):
    """A key written twice in one JSON object."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Python's reader keeps the last of two equal keys: a second ``"precision"`` hidden further
    down would win unseen (by ``inspect`` or a reviewer reading the first)."""
    data = dict(pairs)
    if len(data) == len(pairs):
        return data
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"key {json.dumps(key[:80], ensure_ascii=False)} appears twice")
        seen.add(key)
    raise AssertionError("unreachable: dict() dropped no key")


def _not_json_number(name: str) -> float:
    """m3trt writes bundle.json without NaN or infinities (``allow_nan=False``); Python's reader
    would take them, and a NaN then passes every range check and reaches ``inspect --json``."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """``1e999`` is valid JSON that Python reads as infinity, past ``_not_json_number``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond any float")
    return value


def _check_schema(data: dict[str, Any], manifest: Path) -> None:
    version = data.get("schema_version")
    if version is None:
        raise _error(f"{manifest}: no schema_version, not an m3trt bundle; {REBUILD}")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _error(f"{manifest}: schema_version {version!r} is not an integer; {REBUILD}")
    if version > SCHEMA_VERSION:
        raise _error(
            f"{manifest}: made by a newer m3trt (schema {version}, this m3trt reads up to "
            f"{SCHEMA_VERSION}); upgrade m3trt"
        )
    if version < 1:
        raise _error(
            f"{manifest}: unknown bundle schema {version} (this m3trt reads 1 to "
            f"{SCHEMA_VERSION}); {REBUILD}"
        )


def _parse_bundle(data: dict[str, Any], folder: Path) -> Bundle:
    manifest = folder / BUNDLE_FILE
    source = str(manifest)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _error(f"{source}: missing required key(s) {', '.join(missing)}; {REBUILD}")
    target, precision, artifacts = data["target"], data["precision"], data["artifacts"]
    if target not in TARGETS:
        raise _error(f"{source}: unknown target {target!r} (expected {' or '.join(TARGETS)})")
    if precision not in PRECISIONS:
        raise _error(
            f"{source}: unknown precision {precision!r} (expected {', '.join(PRECISIONS)})"
        )
    if not isinstance(artifacts, dict):
        raise _error(f"{source}: 'artifacts' must be a JSON object; {REBUILD}")
    if REFERENCE not in artifacts:
        raise _error(f"{source}: no {REFERENCE!r} artifact (the FP32 model); {REBUILD}")
    if len(artifacts) > MAX_ARTIFACTS:
        raise _error(
            f"{source}: {len(artifacts):,} artifacts, more than the {MAX_ARTIFACTS} any bundle "
            f"needs (m3trt writes 2-4); {REBUILD}"
        )
    sections = {}
    for key in ("provenance", "accuracy", "latency", "runtime", "extra"):
        sections[key] = data.get(key) or {}
        if not isinstance(sections[key], dict):
            raise _error(f"{source}: {key!r} must be a JSON object; {REBUILD}")
    _check_runtime(sections["runtime"], source)
    parsed = {
        str(role): Artifact.from_json(str(role), art, source)
        for role, art in sorted(artifacts.items())
    }
    if data["schema_version"] == 1 and target == "cpu" and ENGINE in parsed:
        # Schema 1 wrote ONNX Runtime's offline-optimized CPU graph as plain "onnx".
        parsed[ENGINE].format = ONNX_ORT_CPU
    return Bundle(
        path=folder,
        schema_version=data["schema_version"],
        model=ModelInfo.from_json(data["model"], source),
        target=target,
        precision=precision,
        artifacts=parsed,
        **sections,
    )


def _check_runtime(runtime: dict[str, Any], source: str) -> None:
    """Each ``runtime`` entry is what the build wrote, ``{"engine": ..., "artifact": ...}``: the
    engine registry reads them as objects of strings ({"cpu": "x"} crashed infer and eval)."""
    for device, entry in runtime.items():
        if not isinstance(entry, dict):
            kind = "null" if entry is None else type(entry).__name__
            where = f"{source}: runtime entry {device[:40]!r}"
            raise _error(f"{where} must be a JSON object, not {kind}; {REBUILD}")
        for name in ("engine", "artifact"):
            if name in entry and not isinstance(entry[name], str):
                raise _error(
                    f"{source}: runtime entry {device[:40]!r}: {name} must be a string; {REBUILD}"
                )


def _check_file(bundle: Bundle, file: str, entries: list[Artifact], *, verify: bool) -> None:
    """One file of the bundle against every artifact entry that names it; hashed once."""
    from m3trt.runtime.graph_contract import MAX_SOURCE_BYTES, oversize

    path = bundle.path / file
    if not path.is_file():
        raise _error(f"{path} {_not_a_file(path)}; {REBUILD}")
    if not path.resolve().is_relative_to(bundle.path.resolve()):  # a symlink pointing out
        raise _error(f"{path} links outside the bundle folder; refusing it; {REBUILD}")
    size = path.stat().st_size
    for artifact in entries:
        if size < artifact.bytes:
            raise _error(f"{path} is truncated: {size} bytes, expected {artifact.bytes}; {REBUILD}")
        if size > artifact.bytes:
            raise _error(
                f"{path} has been modified or corrupted ({size} bytes, expected "
                f"{artifact.bytes}); {REBUILD}"
            )
    if size > MAX_SOURCE_BYTES and any(_is_graph(a) for a in entries):  # before hashing it
        raise _error(oversize(path, "ONNX graph", size, REBUILD))
    if not verify:
        return
    digest = sha256_file(path)
    if any(artifact.sha256 != digest for artifact in entries):
        raise _error(f"{path} has been modified or corrupted (sha256 mismatch); {REBUILD}")
