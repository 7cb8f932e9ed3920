"""The engine bundle (DESIGN §3.4): a folder ``NAME.m3/`` with ``bundle.json`` and its artifacts.

Writing is crash-safe: the bundle is assembled in a hidden sibling folder, ``bundle.json`` is
written last and atomically, and the finished folder is swapped in with a rename, so a
half-written bundle never looks valid and a failed rebuild leaves the old bundle intact. Loading
checks the schema version, the artifact paths, sizes and sha256 hashes, and turns every problem
into a one-line ``BundleError`` naming the file and the fix. Runtime path: never imports torch
(``onnx`` only inside the one function that reads an ``.onnx`` file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from m3trt import __version__
from m3trt.errors import InputError

SCHEMA_VERSION = 1
BUNDLE_FILE = "bundle.json"
BUNDLE_SUFFIX = ".m3"
TARGETS = ("cpu", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
FORMATS = ("onnx", "tensorrt-plan", "json", "binary")
REFERENCE = "reference"
ENGINE = "engine"
REBUILD = "rebuild the bundle with `m3trt build`"
EXPORT = "export it with `m3trt export`"
CHUNK = 1 << 20  # hash and copy in 1 MiB chunks: a multi-GB plan never sits in memory

META_PREFIX = "m3trt."
META_LABELS = "m3trt.label_names"
META_TAGS = "m3trt.tag_vocab"
META_PREPROCESSING = "m3trt.preprocessing"
META_MODEL = "m3trt.model"
META_VERSION = "m3trt.version"
META_KEYS = (META_LABELS, META_TAGS, META_PREPROCESSING, META_MODEL, META_VERSION)
MODEL_FLAGS = ("k_max", "backbone", "multi_scale", "use_tags", "quantity_head")
REQUIRED_KEYS = ("schema_version", "model", "target", "precision", "artifacts")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(InputError):
    """A bundle (or an ONNX model meant for one) is missing, malformed, tampered or too new."""


def _one_line(text: object) -> str:
    """Error messages are printed as one line by the CLI; embedded exception text may not be."""
    return " ".join(str(text).split())


def _error(message: str) -> BundleError:
    return BundleError(_one_line(message))


# --------------------------------------------------------------------------------------------------
# JSON helpers


def _jsonable(value: Any) -> Any:
    """Plain JSON values, so that the written file and the returned Bundle agree exactly.

    numpy scalars/arrays (from metrics) become Python numbers/lists, tuples become lists, paths
    strings, and NaN/inf become null (strict JSON has no NaN).
    """
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return _jsonable(value.tolist())
    raise TypeError(f"cannot store {type(value).__name__} in bundle.json: {value!r}")


def _dumps(data: Any) -> str:
    """Deterministic text: sorted keys, fixed indentation, no timestamps, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _compact(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# Model metadata


@dataclass
class ModelInfo:
    """What the runtime needs to feed the graph and name its outputs (DESIGN §3.3)."""

    label_names: list[str]
    tag_vocab: list[str]
    preprocessing: dict[str, Any]
    k_max: int
    backbone: str
    multi_scale: bool
    use_tags: bool
    quantity_head: bool

    def __post_init__(self) -> None:
        # asdict(Preprocessing) holds tuples; normalise so a JSON round trip compares equal.
        self.label_names = [str(n) for n in self.label_names]
        self.tag_vocab = [str(t) for t in self.tag_vocab]
        self.preprocessing = _jsonable(dict(self.preprocessing))

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def num_tags(self) -> int:
        return len(self.tag_vocab)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["image_size"])

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str = BUNDLE_FILE, fix: str = REBUILD) -> ModelInfo:
        """Parse and validate; errors name ``source`` and end with ``fix``."""
        if not isinstance(data, dict):
            raise _error(f"{source}: 'model' must be a JSON object; {fix}")
        try:
            info = cls(
                label_names=_str_list(data["label_names"], "label_names"),
                tag_vocab=_str_list(data["tag_vocab"], "tag_vocab"),
                preprocessing=dict(data["preprocessing"]),
                k_max=_int(data["k_max"], "k_max"),
                backbone=str(data["backbone"]),
                multi_scale=_bool(data["multi_scale"], "multi_scale"),
                use_tags=_bool(data["use_tags"], "use_tags"),
                quantity_head=_bool(data["quantity_head"], "quantity_head"),
            )
            _int(info.preprocessing["image_size"], "preprocessing.image_size")
        except KeyError as exc:
            raise _error(f"{source}: model metadata lacks {exc}; {fix}") from None
        except (TypeError, ValueError) as exc:
            raise _error(f"{source}: invalid model metadata ({exc}); {fix}") from None
        if not info.label_names:
            raise _error(f"{source}: the model has no labels; {fix}")
        if not 1 <= info.k_max <= info.num_labels:
            raise _error(f"{source}: k_max {info.k_max} is outside 1..{info.num_labels}; {fix}")
        return info

    def to_onnx_metadata(self) -> dict[str, str]:
        """The ONNX graph's metadata_props, so that a bare .onnx is self-describing."""
        return {
            META_LABELS: _compact(self.label_names),
            META_TAGS: _compact(self.tag_vocab),
            META_PREPROCESSING: _compact(self.preprocessing),
            META_MODEL: _compact({k: getattr(self, k) for k in MODEL_FLAGS}),
            META_VERSION: __version__,
        }

    @classmethod
    def from_onnx_metadata(cls, props: dict[str, str], source: str = "model.onnx") -> ModelInfo:
        """Inverse of ``to_onnx_metadata``; refuses graphs that m3trt did not export."""
        missing = [k for k in META_KEYS if k not in props]
        if missing:
            what = "m3trt.*" if len(missing) == len(META_KEYS) else ", ".join(missing)
            raise _error(f"{source} is not an m3trt model (no {what} metadata); {EXPORT}")
        values = {}
        for key in (META_LABELS, META_TAGS, META_PREPROCESSING, META_MODEL):
            try:
                values[key] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise _error(
                    f"{source}: metadata {key} is not valid JSON ({exc}); {EXPORT} again"
                ) from None
        flags = values[META_MODEL]
        if not isinstance(flags, dict):
            raise _error(f"{source}: metadata {META_MODEL} must be a JSON object; {EXPORT} again")
        data = {
            "label_names": values[META_LABELS],
            "tag_vocab": values[META_TAGS],
            "preprocessing": values[META_PREPROCESSING],
            **flags,
        }
        return cls.from_json(data, source, fix=f"{EXPORT} again")

    @classmethod
    def from_onnx_file(cls, path: str | Path) -> ModelInfo:
        """Read the metadata of an exported .onnx file (weights are not loaded into numpy)."""
        import onnx

        path = Path(path)
        if not path.is_file():
            raise _error(f"{path}: ONNX model not found; {EXPORT}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises assorted types on garbage
            raise _error(f"{path}: not a readable ONNX model ({exc}); {EXPORT}") from None
        props = {p.key: p.value for p in model.metadata_props}
        return cls.from_onnx_metadata(props, str(path))


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of strings")
    return list(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, not {value!r}")
    return value


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
                file=str(data["file"]),
                sha256=str(data["sha256"]).lower(),
                bytes=_int(data["bytes"], "bytes"),
                format=data.get("format"),
                precision=data.get("precision"),
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
    for dist in ("onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            versions[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------------------------------
# Loading


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load ``NAME.m3/`` or its ``bundle.json``; ``verify=False`` skips hashing, not the checks."""
    folder = _bundle_folder(Path(path))
    manifest = folder / BUNDLE_FILE
    bundle = _parse_bundle(_read_manifest(manifest), folder)
    for artifact in bundle.artifacts.values():
        _check_artifact(bundle, artifact, verify=verify)
    return bundle


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
    if not (path / BUNDLE_FILE).is_file():
        raise _error(f"{path}: not an m3trt bundle: no {BUNDLE_FILE}; build it with `m3trt build`")
    return path


def _read_manifest(manifest: Path) -> dict[str, Any]:
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"{manifest}: cannot be read ({exc}); {REBUILD}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(f"{manifest}: not valid JSON ({exc}); {REBUILD}") from None
    if not isinstance(data, dict):
        raise _error(f"{manifest}: must hold a JSON object; {REBUILD}")
    _check_schema(data, manifest)
    return data


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
    sections = {}
    for key in ("provenance", "accuracy", "latency", "extra"):
        sections[key] = data.get(key) or {}
        if not isinstance(sections[key], dict):
            raise _error(f"{source}: {key!r} must be a JSON object; {REBUILD}")
    return Bundle(
        path=folder,
        schema_version=data["schema_version"],
        model=ModelInfo.from_json(data["model"], source),
        target=target,
        precision=precision,
        artifacts={
            str(role): Artifact.from_json(str(role), art, source)
            for role, art in sorted(artifacts.items())
        },
        **sections,
    )


def _check_artifact(bundle: Bundle, artifact: Artifact, *, verify: bool) -> None:
    path = bundle.path / artifact.file
    if not path.is_file():
        raise _error(f"{path} is missing; {REBUILD}")
    if not path.resolve().is_relative_to(bundle.path.resolve()):  # a symlink pointing out
        raise _error(f"{path} links outside the bundle folder; refusing it; {REBUILD}")
    size = path.stat().st_size
    if size < artifact.bytes:
        raise _error(f"{path} is truncated: {size} bytes, expected {artifact.bytes}; {REBUILD}")
    if size > artifact.bytes:
        raise _error(
            f"{path} has been modified or corrupted ({size} bytes, expected {artifact.bytes}); "
            f"{REBUILD}"
        )
    if verify and sha256_file(path) != artifact.sha256:
        raise _error(f"{path} has been modified or corrupted (sha256 mismatch); {REBUILD}")


# --------------------------------------------------------------------------------------------------
# Writing

FileSpec = tuple[str | Path, str | None, str | None]  # (source, format, precision)


def write_bundle(
    folder: str | Path,
    *,
    model: ModelInfo,
    target: str,
    precision: str,
    files: dict[str, FileSpec],
    provenance: dict[str, Any] | None = None,
    accuracy: dict[str, Any] | None = None,
    latency: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write ``folder`` (``NAME.m3``) with the given artifacts; returns the written bundle.

    ``files`` maps role -> (source path, format, precision); a ``None`` format is guessed from
    the suffix. Sources outside the folder are copied in under their file name; sources already
    inside it keep their relative path and are moved (hard-linked, then the old folder dropped).
    """
    folder = Path(folder)
    _check_write_args(folder, target, precision, files)
    ModelInfo.from_json(model.to_json(), str(folder))  # fail before touching the disk
    sources = _resolve_sources(folder, files)
    _check_target_folder(folder, sources, overwrite)
    data = {
        "schema_version": SCHEMA_VERSION,
        "model": model.to_json(),
        "target": target,
        "precision": precision,
        "provenance": _jsonable({"m3trt": __version__, **(provenance or {})}),
        "accuracy": _jsonable(accuracy or {}),
        "latency": _jsonable(latency or {}),
        "extra": _jsonable(extra or {}),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling(folder, "tmp")
    staging.mkdir()
    try:
        data["artifacts"] = _stage_artifacts(staging, sources, files)
        _write_atomic(staging / BUNDLE_FILE, _dumps(data))
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _parse_bundle(json.loads(_dumps(data)), folder)


def _check_write_args(
    folder: Path, target: str, precision: str, files: dict[str, FileSpec]
) -> None:
    if folder.suffix != BUNDLE_SUFFIX:
        raise _error(f"{folder}: a bundle folder name must end with .m3 (e.g. {folder.name}.m3)")
    if target not in TARGETS:
        raise _error(f"{folder}: unknown target {target!r} (choose {' or '.join(TARGETS)})")
    if precision not in PRECISIONS:
        raise _error(f"{folder}: unknown precision {precision!r} (choose {', '.join(PRECISIONS)})")
    if REFERENCE not in files:
        raise _error(f"{folder}: a bundle needs its FP32 model as the {REFERENCE!r} artifact")
    for role, (_, fmt, prec) in files.items():
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"artifact {role!r}: unknown format {fmt!r} (one of {FORMATS})")
        if prec is not None and prec not in PRECISIONS:
            raise ValueError(f"artifact {role!r}: unknown precision {prec!r}")


class _Source(NamedTuple):
    path: Path  # resolved
    dest: str  # POSIX path relative to the bundle folder
    inside: bool  # already in the bundle folder: moved in, not copied


def _resolve_sources(folder: Path, files: dict[str, FileSpec]) -> dict[str, _Source]:
    """Where each artifact comes from and goes; checked before anything is written."""
    root = folder.resolve()
    out: dict[str, _Source] = {}
    taken: dict[str, str] = {}
    for role, (src, _, _) in sorted(files.items()):
        src = Path(src)
        if not src.is_file():
            raise _error(f"{src}: the {role!r} artifact does not exist or is not a file")
        src = src.resolve()
        inside = src.is_relative_to(root)
        dest = src.relative_to(root).as_posix() if inside else src.name
        _safe_relative(dest, f"{folder}: artifact {role!r}")
        if dest in taken:
            raise _error(f"{folder}: artifacts {taken[dest]!r} and {role!r} both map to {dest}")
        taken[dest] = role
        out[role] = _Source(src, dest, inside)
    return out


def _check_target_folder(folder: Path, sources: dict[str, _Source], overwrite: bool) -> None:
    """An existing bundle, or a folder holding anything but our sources, needs ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise _error(f"{folder} exists and is not a folder; choose another output path")
    if overwrite or not folder.exists():
        return
    if (folder / BUNDLE_FILE).exists():
        raise _error(f"{folder} already exists; use --overwrite to replace it")
    ours = {s.dest for s in sources.values() if s.inside}
    others = [
        p
        for p in folder.rglob("*")
        if not p.is_dir() and p.relative_to(folder).as_posix() not in ours
    ]
    if others:
        raise _error(
            f"{folder} exists and holds other files ({others[0].name}, ...); "
            "choose another output path or use --overwrite"
        )


def _stage_artifacts(
    staging: Path, sources: dict[str, _Source], files: dict[str, FileSpec]
) -> dict[str, dict[str, Any]]:
    """Put each artifact into the staging folder and describe it (hash of the staged copy)."""
    artifacts = {}
    for role, src in sorted(sources.items()):
        target = staging / src.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.inside:
            _link_or_copy(src.path, target)
        else:
            shutil.copyfile(src.path, target)  # later edits of the source cannot reach it
        _, fmt, prec = files[role]
        artifacts[role] = Artifact(
            role=role,
            file=src.dest,
            sha256=sha256_file(target),
            bytes=target.stat().st_size,
            format=fmt or _guess_format(src.dest),
            precision=prec,
        ).to_json()
    return artifacts


def _link_or_copy(src: Path, dest: Path) -> None:
    """A move that keeps the source until the swap: hard link when possible, else copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _guess_format(file: str) -> str:
    suffix = PurePosixPath(file).suffix.lower()
    return {".onnx": "onnx", ".plan": "tensorrt-plan", ".engine": "tensorrt-plan"}.get(
        suffix, "json" if suffix == ".json" else "binary"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _new_sibling(folder: Path, kind: str) -> Path:
    """A hidden, unique name beside ``folder`` (same file system, so renames are atomic)."""
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the finished folder in place; the old one is restored if the swap fails."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = _new_sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
