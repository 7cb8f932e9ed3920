"""What the importers share: the summary they return, output paths, image folders, the tally of
what was written, and line reading with one-line errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from m3trt.data.manifest import SPLITS
from m3trt.data.safe_open import LineTooLong, bounded_lines, open_regular, os_reason
from m3trt.errors import InputError

MANIFEST_NAME = "manifest.jsonl"

Progress = Callable[[int], None]
"""Called once per image written, with the number of images done so far."""


@dataclass(frozen=True)
class ImportSummary:
    """What an importer wrote. ``splits`` counts images per split ("(none)" for no split)."""

    manifest: Path
    n_images: int
    n_labels: int
    n_tags: int
    n_missing_images: int
    n_unlabelled: int
    splits: dict[str, int] = field(default_factory=dict)
    first_missing: str | None = None  # as the manifest names it, relative to its folder

    def describe(self) -> str:
        per_split = ", ".join(
            f"{'no split' if k == '(none)' else k} {v}" for k, v in self.splits.items()
        )
        missing = f"{self.n_missing_images} missing image files"
        if self.first_missing is not None:
            missing += f" (first: {self.first_missing}; --images names the image folder)"
        return (
            f"{self.manifest}: {self.n_images} images ({per_split}), {self.n_labels} labels, "
            f"{self.n_tags} tags, {missing}, {self.n_unlabelled} unlabelled"
        )


# ------------------------------------------------------------------------------------ shared
def manifest_path(out: str | os.PathLike) -> Path:
    """``out`` is the output folder (manifest.jsonl goes inside) or a ``.jsonl`` file path."""
    out = Path(out)
    if out.suffix.lower() == ".jsonl" and not out.is_dir():
        return out
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder; give a folder for -o")
    return out / MANIFEST_NAME


def image_prefix(image_dir: Path, manifest_dir: Path) -> str:
    """The image folder as written in the manifest: relative to the manifest's folder."""
    image_dir = Path(os.path.abspath(image_dir))
    try:
        rel = os.path.relpath(image_dir, os.path.abspath(manifest_dir))
    except ValueError:  # another drive (Windows): keep it absolute
        return image_dir.as_posix()
    return rel.replace(os.sep, "/")


def check_image_dir(image_dir: str | os.PathLike | None, what: str) -> Path | None:
    if image_dir is None:
        return None
    path = Path(image_dir)
    if not path.is_dir():
        raise InputError(f"{path}: image folder {_not_a_folder(path)}; check the {what} path")
    return path


def _not_a_folder(path: Path) -> str:
    """Why ``path`` is no folder, in words (a FIFO or a file was "not found" too)."""
    import stat

    from m3trt.data.safe_open import file_kind

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a dangling link" if path.is_symlink() else "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "is a regular file, not a folder" if stat.S_ISREG(mode) else f"is {file_kind(mode)}"


class Tally:
    """Counts while rows stream into write_manifest."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.n_images = 0
        self.n_missing = 0
        self.first_missing: str | None = None
        self.n_unlabelled = 0
        self.tags_seen: set[str] = set()
        self.splits: dict[str, int] = {}

    def add(self, row: dict, exists: bool) -> dict:
        self.n_images += 1
        if not exists:
            self.n_missing += 1
            if self.first_missing is None:
                self.first_missing = row["image"]
        if not row["labels"]:
            self.n_unlabelled += 1
        self.tags_seen.update(row.get("tags", ()))
        key = row.get("split") or "(none)"
        self.splits[key] = self.splits.get(key, 0) + 1
        if self.progress is not None:
            self.progress(self.n_images)
        return row

    def summary(self, manifest: Path, n_labels: int) -> ImportSummary:
        order = {name: i for i, name in enumerate((*SPLITS, "(none)"))}
        return ImportSummary(
            manifest=manifest,
            n_images=self.n_images,
            n_labels=n_labels,
            n_tags=len(self.tags_seen),
            n_missing_images=self.n_missing,
            n_unlabelled=self.n_unlabelled,
            splits=dict(sorted(self.splits.items(), key=lambda kv: order.get(kv[0], 99))),
            first_missing=self.first_missing,
        )


def manifest_row(image: str, labels: list[str], tags: list[str], split: str | None) -> dict:
    row: dict = {"image": image, "labels": labels}
    if tags:
        row["tags"] = tags
    if split:
        row["split"] = split
    return row


# NUS-WIDE's largest list (269,648 image paths) is ~20 MB; a list file past this is not one
MAX_LIST_BYTES = 256 << 20
# One name or path a line (PATH_MAX is 4,096 bytes): a longer line is no entry of a list
MAX_LIST_LINE_BYTES = 64 << 10


def list_lines(path: Path, what: str, *, names: bool = False) -> Iterator[tuple[int, str]]:
    """Numbered text lines of a list file, read one bounded line at a time (a whole-file read
    and split took 20-28 times the file's size before a count could be checked), trailing blank
    lines dropped. Split at ``\\n`` only: a file name may hold U+2028 or U+0085. A list of file
    ``names`` keeps bytes that are not UTF-8 as the file system does (``os.fsdecode``), so that
    each names the file on disk; in other lists a line that is not UTF-8 is read as Latin-1."""
    try:
        handle = open_regular(path, what, MAX_LIST_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    blank_from, n_blank, size = 0, 0, 0  # blank lines are held back until a line follows them
    with handle:
        try:
            for number, raw in bounded_lines(handle, MAX_LIST_LINE_BYTES):
                size += len(raw)
                if size > MAX_LIST_BYTES:  # the file grew after it was opened
                    raise InputError(
                        f"{path}: {what} is larger than the limit of {MAX_LIST_BYTES:,} bytes"
                    )
                text = _decode_line(raw, first=number == 1, names=names)
                if not text.strip():
                    blank_from, n_blank = blank_from or number, n_blank + 1
                    continue
                for held in range(blank_from, blank_from + n_blank):
                    yield held, ""
                blank_from, n_blank = 0, 0
                yield number, text
        except LineTooLong as exc:
            raise InputError(
                f"{path}:{exc.number}: a line longer than {MAX_LIST_LINE_BYTES:,} bytes is not "
                f"an entry of a {what}; re-extract the file"
            ) from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read {what} ({os_reason(exc)})") from None


def _decode_line(raw: bytes, *, first: bool, names: bool) -> str:
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    codec = "utf-8-sig" if first else "utf-8"
    if names:
        return raw.decode(codec, "surrogateescape")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        return raw.removeprefix(b"\xef\xbb\xbf" if first else b"").decode("latin-1")
