"""Writing an engine bundle, crash-safe.

The bundle is assembled in a hidden sibling folder, ``bundle.json`` is written last and
atomically, and the finished folder is swapped in with a rename, so a half-written bundle never
looks valid and a failed rebuild leaves the old bundle intact.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from m3trt import __version__
from m3trt.atomic import temp_sibling, write_text
from m3trt.runtime.bundle import (
    BUNDLE_FILE,
    BUNDLE_SUFFIX,
    FORMATS,
    ONNX,
    PRECISIONS,
    REFERENCE,
    SCHEMA_VERSION,
    TARGETS,
    TENSORRT_PLAN,
    Artifact,
    Bundle,
    _parse_bundle,
    _safe_relative,
    sha256_file,
)
from m3trt.runtime.model_io import ModelInfo, dumps_stable, jsonable
from m3trt.runtime.model_io import bundle_error as _error

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
    runtime: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    before_swap: Callable[[Path], object] | None = None,
) -> Bundle:
    """Write ``folder`` (``NAME.m3``) with the given artifacts; returns the written bundle.

    ``files`` maps role -> (source path, format, precision); a ``None`` format is guessed from
    the suffix. Sources outside the folder are copied in under their file name; sources already
    inside it keep their relative path and are moved (hard-linked, then the old folder dropped).
    ``before_swap`` gets the finished staging folder (signing): when it fails, or is
    interrupted, the old bundle stays as it was.
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
        "provenance": jsonable({"m3trt": __version__, **(provenance or {})}),
        "accuracy": jsonable(accuracy or {}),
        "latency": jsonable(latency or {}),
        "runtime": jsonable(runtime or {}),
        "extra": jsonable(extra or {}),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(folder, "tmp")
    staging.mkdir()
    try:
        data["artifacts"] = _stage_artifacts(staging, sources, files)
        write_text(staging / BUNDLE_FILE, dumps_stable(data))
        if before_swap is not None:
            before_swap(staging)
        _check_target_folder(folder, sources, overwrite)  # another run may have written it since
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _parse_bundle(json.loads(dumps_stable(data)), folder)


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
    return {".onnx": ONNX, ".plan": TENSORRT_PLAN, ".engine": TENSORRT_PLAN}.get(
        suffix, "json" if suffix == ".json" else "binary"
    )


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the finished folder in place; the old one is restored if the swap fails."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = temp_sibling(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    if old.is_symlink():  # -o named a link to a bundle: the link was replaced, not its target
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
