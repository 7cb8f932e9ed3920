"""The NUS-WIDE importer: the official release's layout (see the package docstring)."""

from __future__ import annotations

import os
import posixpath
import re
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from m3trt.data.importers.common import (
    MAX_LIST_BYTES,
    ImportSummary,
    Progress,
    Tally,
    check_image_dir,
    image_prefix,
    list_lines,
    manifest_path,
    manifest_row,
)
from m3trt.data.manifest import is_file, name_problem, normalise_tag, write_manifest
from m3trt.data.safe_open import open_regular, os_reason
from m3trt.errors import InputError

_DRIVE = re.compile(r"^[A-Za-z]:")


def _nus_key(entry: str) -> str:
    """An image-list entry as a path relative to the Flickr folder: ``actor/0001_21244.jpg``.

    Accepts ``C:\\ImageData\\Flickr\\actor\\x.jpg``, ``Flickr\\actor\\x.jpg`` and ``actor\\x.jpg``.
    """
    p = entry.strip().replace("\\", "/")
    p = _DRIVE.sub("", p).lstrip("/")
    parts = [s for s in p.split("/") if s and s != "."]
    lowered = [s.lower() for s in parts]
    if "flickr" in lowered[:-1]:
        # Drop everything up to the "Flickr" folder (the image root in the release).
        parts = parts[lowered.index("flickr") + 1 :]
    elif lowered[:1] == ["imagedata"]:
        parts = parts[1:]
    return "/".join(parts)


def _image_key(entry: str, path: Path, number: int) -> str:
    """``entry``'s key (``_nus_key``), refused with one line naming ``path`` and the line when
    it names no file in the image folder: a NUL cannot be in a file name (it was written to the
    manifest, which then failed in eval with no file named) and ``..`` leads out of the folder."""
    key = _nus_key(entry)
    if not key:
        raise InputError(f"{path}:{number}: empty image path; re-extract the file")
    if "\x00" in entry:
        raise InputError(
            f"{path}:{number}: image {entry.strip()!r} holds a NUL byte, which no file name "
            "can hold; re-extract the file"
        )
    if ".." in key.split("/"):
        raise InputError(
            f"{path}:{number}: image {entry.strip()!r} has a '..' component, which leads "
            "outside the image folder; refusing it, re-extract the file"
        )
    return key


class _ImageKeys:
    """The image list's keys, compact: their bytes end to end, offsets, and the sorted 64-bit
    hashes of their casefolded forms for look-ups. A list of str and a dict of casefolded str
    cost ~250 bytes an image (7 GB for a 250 MiB list); this costs the key's bytes and ~24."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("I")  # offsets into the blob: MAX_LIST_BYTES is under 4 GiB
        self._hashes = array("q")
        self._order = np.zeros(0, dtype=np.uint32)  # image indices by hash, once sealed
        self._sorted = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = self._ends[i - 1] if i else 0
        return self._blob[start : self._ends[i]].decode("utf-8", "surrogateescape")

    def add(self, key: str) -> None:
        self._blob += key.encode("utf-8", "surrogateescape")
        self._ends.append(len(self._blob))
        self._hashes.append(hash(key.casefold()))

    def seal(self) -> tuple[int, int] | None:
        """Sort for ``find``; return the first (earlier, later) indices naming one image (case
        folded), by the later one, or None."""
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        self._order = np.argsort(hashes, kind="stable").astype(np.uint32)  # ties in list order
        hashes.sort()  # in place, in the array's own memory: no third copy
        self._sorted = hashes
        same = np.flatnonzero(self._sorted[1:] == self._sorted[:-1]) + 1
        for at in same[np.argsort(self._order[same], kind="stable")]:
            start = int(at)
            while start and self._sorted[start - 1] == self._sorted[at]:
                start -= 1
            later = int(self._order[at])
            folded = self[later].casefold()
            for earlier in self._order[start:at]:
                if self[int(earlier)].casefold() == folded:
                    return int(earlier), later
        return None

    def find(self, key: str) -> int | None:
        """The index of the image ``key`` names (case folded), or None."""
        folded = key.casefold()
        wanted = hash(folded)
        at = int(np.searchsorted(self._sorted, wanted))
        while at < len(self._sorted) and self._sorted[at] == wanted:
            i = int(self._order[at])
            if self[i].casefold() == folded:
                return i
            at += 1
        return None


def _find_file(root: Path, candidates: Iterable[str], what: str, fix: str) -> Path:
    tried = [root / c for c in candidates]
    for path in tried:
        if path.is_file():
            return path
    for path in tried:
        if os.path.lexists(path):  # a FIFO, a folder, a device or a dangling or looping link
            raise InputError(f"{path}: {what} is not a regular file; {fix}")
    raise InputError(f"{tried[0]}: {what} not found; {fix}")


_ROWS_UNPACKED = 4096  # label rows unpacked from bits at a time while writing
_BLOCK_BYTES = 1 << 20  # a label file is read this much at a time
_MAX_VALUE_LINE_BYTES = 4096  # held between blocks: "0" or "1" with any stray spaces


class _LabelColumn:
    """One concept's 0/1 column, filled a block of lines at a time and stopped at the first
    value past ``n_images``: splitting a whole 250 MiB file took 5 GB before its count was
    checked. Blank lines are held back (trailing ones are allowed, as editors leave them)."""

    def __init__(self, path: Path, n_images: int, list_name: str) -> None:
        self.path, self.n_images, self.list_name = path, n_images, list_name
        self.values = np.zeros(n_images, dtype=bool)
        self.n_values = 0
        self.n_lines = 0
        self.blank = 0  # the first blank line not yet followed by a value (0: none)

    def add(self, block: bytes) -> None:
        """Whole lines, each ending in ``\\n``."""
        n_lines = block.count(b"\n")
        values = block.translate(None, b" \t\r").rstrip(b"\n")  # fast path: b"0\n1\n0"
        n_values = (len(values) + 1) // 2
        if (
            values
            and not self.blank
            and self.n_values + n_values <= self.n_images
            and len(values) % 2
            and not values[1::2].translate(None, b"\n")
            and not values[0::2].translate(None, b"01")
        ):
            done = self.n_values
            self.values[done : done + n_values] = np.frombuffer(values[0::2], np.uint8) == 49
            if n_lines > n_values:  # blank lines end the block
                self.blank = self.n_lines + n_values + 1
            self.n_values += n_values
            self.n_lines += n_lines
            return
        for line in block.split(b"\n")[:-1]:
            self._add_line(line)

    def _add_line(self, line: bytes) -> None:
        self.n_lines += 1
        value = line.strip()
        if not value:
            self.blank = self.blank or self.n_lines
            return
        if self.blank:
            self._bad(self.blank, b"")
        if self.n_values == self.n_images:
            raise InputError(
                f"{self.path}:{self.n_lines}: more lines than the {self.n_images} images in "
                f"{self.list_name}; the file is from another release, re-extract it"
            )
        if value not in (b"0", b"1"):
            self._bad(self.n_lines, value)
        self.values[self.n_values] = value == b"1"
        self.n_values += 1

    def _bad(self, number: int, value: bytes) -> NoReturn:
        shown = value[:20].decode("utf-8", "replace") + ("..." if len(value) > 20 else "")
        raise InputError(
            f"{self.path}:{number}: expected 0 or 1, found {shown!r}; re-extract the file"
        )

    def finish(self) -> np.ndarray:
        if self.n_values < self.n_images:
            raise InputError(
                f"{self.path}: has {self.n_values} lines but {self.list_name} lists "
                f"{self.n_images} images; the file is truncated or from another release, "
                "re-extract it"
            )
        return self.values


def _read_binary_column(path: Path, n_images: int, list_name: str) -> np.ndarray:
    """One 0/1 value a line, exactly ``n_images`` lines -> bool array, in bounded memory."""
    try:
        handle = open_regular(path, "label file", MAX_LIST_BYTES)
    except FileNotFoundError:
        raise InputError(
            f"{path}: label file not found; extract Groundtruth.zip (AllLabels) into the root"
        ) from None
    column = _LabelColumn(path, n_images, list_name)
    carry, size = b"", 0
    with handle:
        while True:
            try:
                chunk = handle.read(_BLOCK_BYTES)
            except OSError as exc:
                raise InputError(f"{path}: cannot read label file ({os_reason(exc)})") from None
            size += len(chunk)
            if size > MAX_LIST_BYTES:  # the file grew after it was opened
                raise InputError(
                    f"{path}: label file is larger than the limit of {MAX_LIST_BYTES:,} bytes"
                )
            if not chunk:
                if carry:
                    column.add(carry + b"\n")
                return column.finish()
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            if cut:
                column.add(data[:cut])  # first: an extra line before a long one is the error
            carry = data[cut:]
            if len(carry) > _MAX_VALUE_LINE_BYTES:
                raise InputError(
                    f"{path}:{column.n_lines + 1}: a line longer than {_MAX_VALUE_LINE_BYTES:,} "
                    "bytes is not a 0 or 1; re-extract the file"
                )


def _tag_rows(path: Path, tag_names: list[str], n_images: int) -> Iterator[list[str]]:
    """Stream the image x tag 0/1 matrix line by line, yielding each image's tag names."""
    n_tags = len(tag_names)
    try:
        handle = open_regular(path, "tag matrix")
    except FileNotFoundError:
        raise InputError(
            f"{path}: tag matrix not found; extract NUS_WID_Tags.zip into the root"
        ) from None
    limit = 2 * n_tags + 64  # one "0 " or "1 " a tag (CRLF and stray spaces allowed)
    with handle:
        n_lines = 0
        for number, raw in enumerate(iter(lambda: handle.readline(limit + 1), b""), 1):
            if len(raw) > limit:
                raise InputError(
                    f"{path}:{number}: a line longer than {limit:,} bytes is not a row of "
                    f"{n_tags} tags; re-extract the file"
                )
            if number > n_images:
                if raw.strip():
                    raise InputError(
                        f"{path}:{number}: more lines than the {n_images} images in "
                        "Imagelist.txt; the file is from another release, re-extract it"
                    )
                continue
            n_lines = number
            line = raw.strip()
            compact = line[0::2]  # fast path: one digit, one separator, one digit, ...
            if (
                len(line) != 2 * n_tags - 1
                or compact.translate(None, b"01")
                or line[1::2].translate(None, b" \t")
            ):
                compact = _check_tag_line(path, number, line, n_tags)
            names: list[str] = []
            at = compact.find(b"1")
            while at >= 0:
                names.append(tag_names[at])
                at = compact.find(b"1", at + 1)
            yield list(dict.fromkeys(names))
        if n_lines < n_images:
            raise InputError(
                f"{path}: has {n_lines} lines but Imagelist.txt lists {n_images} images; "
                "the file is truncated, re-extract it"
            )


def _check_tag_line(path: Path, number: int, line: bytes, n_tags: int) -> bytes:
    """Slow path for an odd tag line: return its values as b'0101...' or raise."""
    values = line.split()
    if len(values) != n_tags:
        raise InputError(
            f"{path}:{number}: has {len(values)} values but TagList1k.txt names {n_tags} tags; "
            "the tag files do not match, re-extract NUS_WID_Tags.zip"
        )
    for value in values:
        if value not in (b"0", b"1"):
            shown = value.decode("utf-8", "replace")
            raise InputError(f"{path}:{number}: expected 0 or 1, found {shown!r}; re-extract it")
    return b"".join(values)


def _split_codes(paths: dict[str, Path], keys: _ImageKeys, list_name: str) -> np.ndarray:
    """A byte an image from the official Train/Test image lists: 0 for none, else 1 + the index
    of its split in ``paths`` (a dict of ints to str took ~100 bytes an image)."""
    codes = np.zeros(len(keys), dtype=np.uint8)
    names = [path.name for path in paths.values()]
    for code, path in enumerate(paths.values(), 1):
        for number, entry in list_lines(path, "split list", names=True):
            if not entry.strip():
                continue
            i = keys.find(_image_key(entry, path, number))
            if i is None:
                raise InputError(
                    f"{path}:{number}: image {entry.strip()!r} is not in {list_name}; "
                    "the image lists come from different releases, re-extract ImageList.zip"
                )
            if codes[i] and codes[i] != code:
                raise InputError(
                    f"{path}:{number}: image {entry.strip()!r} is also in {names[codes[i] - 1]}; "
                    "an image can be in one split only, re-extract ImageList.zip"
                )
            codes[i] = code
    return codes


def import_nuswide(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Write a manifest for the official NUS-WIDE release under ``root`` (layout in the module
    docstring): labels = the 81 concepts, tags = the 1k user tags, split = official train/test.

    ``out`` is the output folder (``manifest.jsonl`` and ``labels.txt`` go there). ``image_dir``
    defaults to ``root/Flickr``; image paths in the manifest are relative to ``out``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: NUS-WIDE root folder not found")
    explicit_images = check_image_dir(image_dir, "--images")
    images_root = explicit_images or root / "Flickr"
    manifest = manifest_path(out)

    concepts_path = _find_file(
        root,
        ("ConceptsList/Concepts81.txt", "Concepts81.txt"),
        "concept list Concepts81.txt",
        "extract ConceptsList.zip (or NUS-WIDE.zip) into the root",
    )
    concepts: list[str] = []
    first_on: dict[str, int] = {}
    for number, line in list_lines(concepts_path, "concept list"):
        if not (concept := line.strip()):
            continue
        where = f"{concepts_path}:{number}: concept {concept!r}"
        if (problem := name_problem(concept, label=True)) is not None:
            raise InputError(f"{where} {problem}; re-extract it")
        if "/" in concept or "\\" in concept:  # Labels_<concept>.txt would leave AllLabels
            raise InputError(
                f"{where} holds a path separator, so its label file would lie outside "
                "Groundtruth/AllLabels; refusing it, re-extract the file"
            )
        if concept in first_on:
            raise InputError(
                f"{where} is listed twice (first on line {first_on[concept]}); re-extract it"
            )
        first_on[concept] = number
        concepts.append(concept)
    if not concepts:
        raise InputError(f"{concepts_path}: concept list is empty; re-extract it")

    fix_list = "extract ImageList.zip (or NUS-WIDE.zip) into the root"
    list_path = _find_file(root, ("ImageList/Imagelist.txt",), "image list Imagelist.txt", fix_list)
    train_path = _find_file(
        root, ("ImageList/TrainImagelist.txt",), "train list TrainImagelist.txt", fix_list
    )
    test_path = _find_file(
        root, ("ImageList/TestImagelist.txt",), "test list TestImagelist.txt", fix_list
    )
    fix_tags = "extract NUS_WID_Tags.zip into the root"
    taglist_path = _find_file(root, ("NUS_WID_Tags/TagList1k.txt",), "TagList1k.txt", fix_tags)
    tagmat_path = _find_file(root, ("NUS_WID_Tags/AllTags1k.txt",), "AllTags1k.txt", fix_tags)
    label_dir = root / "Groundtruth" / "AllLabels"
    label_paths = [label_dir / f"Labels_{c}.txt" for c in concepts]
    for path in label_paths:
        if not os.path.lexists(path):  # a FIFO or a link to /dev/zero is named as such later
            raise InputError(
                f"{path}: label file not found; extract Groundtruth.zip (AllLabels) into the root"
            )

    keys = _ImageKeys()
    for number, entry in list_lines(list_path, "image list", names=True):
        keys.add(_image_key(entry, list_path, number))
    if not keys:
        raise InputError(f"{list_path}: image list is empty; re-extract it")
    if (twice := keys.seal()) is not None:
        first, again = twice  # lines are images: blank ones are refused, trailing ones dropped
        raise InputError(
            f"{list_path}:{again + 1}: image {keys[again]!r} is listed twice "
            f"(first on line {first + 1}); re-extract the file"
        )
    n_images = len(keys)

    codes = _split_codes({"train": train_path, "test": test_path}, keys, list_path.name)
    split_names = (None, "train", "test")

    # a bit an image and concept: 2.7 MB for NUS-WIDE, where bools took 22 MB
    n_concepts = len(concepts)
    labels = np.zeros((n_images, (n_concepts + 7) // 8), dtype=np.uint8)
    for j, path in enumerate(label_paths):
        column = _read_binary_column(path, n_images, list_path.name)
        labels[:, j >> 3] |= column.view(np.uint8) << np.uint8(7 - (j & 7))
        del column
    tag_names = [
        normalise_tag(line.split()[0]) if line.split() else ""
        for _number, line in list_lines(taglist_path, "tag list")
    ]
    if not any(tag_names):
        raise InputError(f"{taglist_path}: tag list is empty; re-extract NUS_WID_Tags.zip")

    prefix = image_prefix(images_root, manifest.parent)
    tally = Tally(progress)

    def rows() -> Iterator[dict]:
        tag_rows = _tag_rows(tagmat_path, tag_names, n_images)
        block = np.zeros((0, n_concepts), dtype=bool)
        for i, tags in zip(range(n_images), tag_rows, strict=False):
            if i % _ROWS_UNPACKED == 0:
                block = np.unpackbits(labels[i : i + _ROWS_UNPACKED], axis=1, count=n_concepts)
            key = keys[i]
            row = manifest_row(
                posixpath.join(prefix, key),
                [concepts[j] for j in np.flatnonzero(block[i % _ROWS_UNPACKED])],
                [t for t in tags if t],
                split_names[codes[i]],
            )
            yield tally.add(row, is_file(images_root / key))
        for _ in tag_rows:  # runs the line-count check at the end of the tag matrix
            pass

    write_manifest(manifest, rows(), concepts)
    return tally.summary(manifest, len(concepts))
