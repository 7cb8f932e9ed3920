"""The JSONL dataset manifest (DESIGN §3.1): reading with line-numbered errors, and writing.

One line per image: ``{"image", "labels", "tags"?, "split"?}``. ``labels.txt`` beside the manifest
fixes the label order; without it the order is the sorted set of names seen.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3trt.atomic import atomic_path, write_text
from m3trt.data.safe_open import file_kind
from m3trt.errors import InputError, ManifestError

SPLITS = ("train", "val", "test")
LABELS_FILE = "labels.txt"
MAX_REPORTED = 5


def normalise_tag(tag: str) -> str:
    """Lowercase, strip and collapse inner whitespace, so 'Dog ' and 'dog' are one tag."""
    return " ".join(tag.lower().split())


@dataclass(frozen=True, slots=True)
class Record:
    """One manifest line: ``image`` as written, ``path`` resolved against the manifest's folder
    ``root`` when asked (a Path a record costs ~200 bytes; a manifest holds millions)."""

    image: str
    root: Path
    labels: tuple[str, ...]
    tags: tuple[str, ...] = ()
    split: str | None = None
    line: int = 0

    @property
    def path(self) -> Path:
        return Path(self.image) if os.path.isabs(self.image) else self.root / self.image

    def to_json(self) -> dict:
        row: dict = {"image": self.image, "labels": list(self.labels)}
        if self.tags:
            row["tags"] = list(self.tags)
        if self.split:
            row["split"] = self.split
        return row


@dataclass
class Manifest:
    """A parsed manifest: records in file order and the label names in their fixed order."""

    path: Path
    records: list[Record]
    label_names: list[str]
    missing_images: list[Record] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def split(self, name: str | None) -> list[Record]:
        """Records of one split; ``None`` means all records."""
        if name is None:
            return list(self.records)
        return [r for r in self.records if r.split == name]

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records:
            key = r.split or "(none)"
            counts[key] = counts.get(key, 0) + 1
        return counts


# A lone surrogate (JSON's "\udcff") cannot be written as UTF-8: train then failed in export's
# metadata. Control characters and line breaks cannot be kept in labels.txt, one name a line.
_NOT_TEXT = re.compile("[\ud800-\udfff]")
_NOT_A_LABEL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def name_problem(name: str, *, label: bool) -> str | None:
    """Why ``name`` cannot be a label (``label``) or a tag, in words; None when it can."""
    if (_NOT_A_LABEL if label else _NOT_TEXT).search(name) is None:
        return None
    if _NOT_TEXT.search(name):
        return "holds a lone surrogate, which is not Unicode text"
    return "holds a control character or a line break"


def _string_list(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'"{key}" must be a list of strings')
    for name in value:
        if (problem := name_problem(name, label=key == "labels")) is not None:
            raise ValueError(f"{key[:-1]} {name!r} {problem}")
    return tuple(value)


def parse_json_object(text: str) -> dict[str, Any]:
    """One JSONL line as an object; ValueError says what is wrong (no file or line in it).

    Hostile lines get the same one-line treatment as broken ones: nesting deep enough to
    exhaust the parser's recursion and integers longer than Python will convert.
    """
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg}: column {exc.colno})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        reason = " ".join(str(exc).split(";")[0].split())[:120]  # no advice to programmers
        raise ValueError(f"not usable JSON ({reason})") from None
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    return row


def parse_line(text: str, root: Path, line: int) -> Record:
    """Parse one manifest line; raises ValueError with the reason (no file or line in it)."""
    row = parse_json_object(text)
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError('missing "image" (a path relative to the manifest)')
    if "\x00" in image:  # it failed later, in eval or train, as "embedded null byte"
        raise ValueError(f'"image" {image!r} holds a NUL character, which no file path can hold')
    if "labels" not in row:
        raise ValueError('missing "labels" (a list of label names, possibly empty)')
    labels = _string_list(row["labels"], "labels")
    if any(not name.strip() for name in labels):
        raise ValueError('"labels" contains an empty name')
    labels = tuple(sys.intern(name) for name in dict.fromkeys(labels))  # one copy of each name
    tags = _string_list(row.get("tags", []), "tags")
    tags = tuple(sys.intern(t) for t in dict.fromkeys(normalise_tag(t) for t in tags) if t)
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f'"split" must be one of {", ".join(SPLITS)}, not {split!r}')
    split = SPLITS[SPLITS.index(split)] if split is not None else None
    return Record(image=image, root=root, labels=labels, tags=tags, split=split, line=line)


def read_label_file(path: Path) -> list[str]:
    """Read ``labels.txt``: one name per line, blank lines ignored, duplicates refused."""
    # "\n" only: splitlines() also splits at U+2028 and U+0085, which a name may not hold
    # but which the manifest, split at "\n", reads as part of one.
    lines = _read_text(path, "label file", MAX_LABEL_FILE_BYTES).split("\n")
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        name = raw.strip()
        if not name:
            continue
        if (problem := name_problem(name, label=True)) is not None:
            raise ManifestError(f"{path}:{number}: label {name!r} {problem}")
        if name in seen:
            raise ManifestError(
                f"{path}:{number}: label {name!r} is listed twice (first on line {seen[name]})"
            )
        seen[name] = number
        names.append(name)
    if not names:
        raise ManifestError(f"{path}: label file is empty")
    return names


MAX_MANIFEST_BYTES = 4 << 30
MAX_LINE_BYTES = 16 << 20  # one record: its image path, labels and tags
MAX_LABEL_FILE_BYTES = 64 << 20


def _read_text(path: Path, what: str, max_bytes: int) -> str:
    """A UTF-8 text file (a byte-order mark is allowed, as editors on Windows write one),
    read only if it is a regular file under ``max_bytes``."""
    from m3trt.data.safe_open import read_regular

    try:
        data = read_regular(path, what, max_bytes)
    except FileNotFoundError:
        raise ManifestError(f"{path}: {what} not found") from None
    except InputError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            f"{path}: {what} is not UTF-8 text (line {line}, byte {exc.start})"
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The manifest's lines, numbered, read one at a time (the whole text and a list of its
    lines beside the records doubled the peak memory), each at most MAX_LINE_BYTES. Split at
    ``\n`` only: JSON may hold a raw U+2028."""
    from m3trt.data.safe_open import LineTooLong, bounded_lines, open_regular

    try:
        f = open_regular(path, "manifest", MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except InputError as exc:
        raise ManifestError(str(exc)) from None
    with f:
        offset = 0
        try:
            for number, data in bounded_lines(f, MAX_LINE_BYTES):
                try:
                    text = data.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    where = f"line {number}, byte {offset + exc.start}"
                    raise ManifestError(f"{path}: manifest is not UTF-8 text ({where})") from None
                offset += len(data)
                yield number, text.removesuffix("\n")
        except LineTooLong as exc:
            too_long = f"line {exc.number} is longer than {MAX_LINE_BYTES:,} bytes"
            raise ManifestError(f"{path}: {too_long}") from None


def _summarise(path: Path, problems: list[str], what: str, count: int | None = None) -> str:
    head = "; ".join(problems[:MAX_REPORTED])
    more = (len(problems) if count is None else count) - MAX_REPORTED
    tail = f" (and {more} more {what})" if more > 0 else ""
    return f"{path}: {head}{tail}"


def read_manifest(
    path: str | Path,
    *,
    labels_file: str | Path | None = None,
    check_images: bool = True,
    allow_missing_images: bool = False,
) -> Manifest:
    """Read and validate a manifest; every problem is reported with its line number.

    Bad lines raise ManifestError listing them. Missing image files raise too unless
    ``allow_missing_images``, in which case they are kept aside in ``missing_images`` (counted,
    never silently dropped).
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    if path.is_dir():
        candidate = path / "manifest.jsonl"
        if not candidate.is_file():
            raise ManifestError(f"{path}: is a folder without a manifest.jsonl")
        path = candidate
    records: list[Record] = []
    problems: list[str] = []
    n_bad = 0
    root = path.parent
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            records.append(parse_line(line, root, number))
        except ValueError as exc:
            n_bad += 1
            if len(problems) < MAX_REPORTED:  # a million bad lines: five messages and a count
                problems.append(f"line {number}: {exc}")
    if problems:
        raise ManifestError(_summarise(path, problems, "bad lines", n_bad))
    if not records:
        raise ManifestError(f"{path}: manifest has no records")

    label_path = Path(labels_file) if labels_file else path.parent / LABELS_FILE
    if labels_file or os.path.lexists(label_path):  # a FIFO or dangling link: say so
        label_names = read_label_file(label_path)
        known = set(label_names)
        unknown = [
            f"line {r.line}: label {name!r} is not in {label_path.name}"
            for r in records
            for name in r.labels
            if name not in known
        ]
        if unknown:
            raise ManifestError(_summarise(path, unknown, "unknown labels"))
    else:
        label_names = sorted({name for r in records for name in r.labels})
        if not label_names:
            raise ManifestError(f"{path}: no record has any label, so there is nothing to learn")

    missing: list[Record] = []
    if check_images:
        missing = [r for r in records if not is_file(r.path)]
        if missing and not allow_missing_images:
            problems = [f"line {r.line}: image {not_a_file(r.path)}: {r.image}" for r in missing]
            raise ManifestError(_summarise(path, problems, "missing images"))
        if missing:
            gone = {id(r) for r in missing}
            records = [r for r in records if id(r) not in gone]
    return Manifest(path=path, records=records, label_names=label_names, missing_images=missing)


def repeated_images(manifest: Manifest) -> str | None:
    """A note on records that name one image twice (counted twice in scores), and on images in
    two splits (the scores of one are then not independent of the other); None without any."""
    first: dict[str, Record] = {}
    repeats: list[tuple[Record, Record]] = []
    for record in manifest.records:
        key = os.path.normpath(record.path)
        if key in first:
            repeats.append((record, first[key]))
        else:
            first[key] = record
    if not repeats:
        return None
    crossed = [(r, f) for r, f in repeats if r.split != f.split]
    many = len(repeats) != 1
    note = (
        f"note: {manifest.path}: {len(repeats)} record{'s' if many else ''} "
        f"name{'' if many else 's'} an image an earlier one names"
    )
    again, seen = repeats[0]
    note += f" (line {again.line} repeats line {seen.line})"
    if crossed:
        again, seen = crossed[0]
        note += (
            f"; {len(crossed)} of them in another split (line {again.line}: "
            f"{seen.split or 'no split'} and {again.split or 'no split'}), so scores on one split "
            "are not independent of the other"
        )
    return note


def is_file(path: Path) -> bool:
    """``path.is_file()``, False too where pathlib raises: a name too long for the file system
    (ENAMETOOLONG) or a folder that cannot be searched stopped a whole import or read with a
    traceback; ``not_a_file`` then says why."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def not_a_file(path: Path) -> str:
    """Why an image is not a file to read, in words ("not found" was said of a FIFO too)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return f"is {file_kind(mode)}, not a regular file"


def write_manifest(
    path: str | Path,
    rows: Iterable[Record | dict],
    label_names: Sequence[str] | None = None,
) -> Path:
    """Write a manifest (and ``labels.txt`` when names are given) atomically: a crash never
    leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_lines(path, (_json_line(r.to_json() if isinstance(r, Record) else r) for r in rows))
    if label_names is not None:
        _atomic_write(path.parent / LABELS_FILE, "".join(f"{n}\n" for n in label_names))
    return path


def _json_line(row: dict) -> str:
    """UTF-8 where it can be; a file name that is not UTF-8 (its bytes held as lone surrogates,
    as ``os.fsdecode`` gives them) is written escaped, which reads back to the same bytes."""
    line = json.dumps(row, ensure_ascii=False)
    return (line if _NOT_TEXT.search(line) is None else json.dumps(row)) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """``lines`` streamed to a temp file beside ``path``, then published (the whole text and
    its UTF-8 copy took ~2.5x the manifest's size)."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8", newline="") as f:
        f.writelines(lines)
