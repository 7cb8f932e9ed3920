"""The NUS-WIDE importer: the official release's layout (see the package docstring)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from m3trt.data.importers.common import (
    MAX_LIST_BYTES,
    ImportSummary,
    Progress,
    Tally,
    check_image_dir,
    image_prefix,
    manifest_path,
    manifest_row,
    read_lines,
)
from m3trt.data.manifest import name_problem, normalise_tag, write_manifest
from m3trt.data.safe_open import open_regular, read_regular
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


def _find_file(root: Path, candidates: Iterable[str], what: str, fix: str) -> Path:
    tried = [root / c for c in candidates]
    for path in tried:
        if path.is_file():
            return path
    for path in tried:
        if os.path.lexists(path):  # a FIFO, a folder, a device or a dangling or looping link
            raise InputError(f"{path}: {what} is not a regular file; {fix}")
    raise InputError(f"{tried[0]}: {what} not found; {fix}")


def _read_binary_column(path: Path, n_images: int, list_name: str) -> np.ndarray:
    """One 0/1 value a line, exactly ``n_images`` lines -> bool array."""
    try:
        data = read_regular(path, "label file", MAX_LIST_BYTES)
    except FileNotFoundError:
        raise InputError(
            f"{path}: label file not found; extract Groundtruth.zip (AllLabels) into the root"
        ) from None
    lines = data.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_images:
        raise InputError(
            f"{path}: has {len(lines)} lines but {list_name} lists {n_images} images; "
            "the file is truncated or from another release, re-extract it"
        )
    joined = b"".join(lines)
    if len(joined) == n_images and not joined.translate(None, b"01"):  # the common, fast case
        return np.frombuffer(joined, dtype=np.uint8) == ord("1")
    out = np.zeros(n_images, dtype=bool)
    for i, line in enumerate(lines):
        value = line.strip()
        if value not in (b"0", b"1"):
            shown = value.decode("utf-8", "replace")
            raise InputError(
                f"{path}:{i + 1}: expected 0 or 1, found {shown!r}; re-extract the file"
            )
        out[i] = value == b"1"
    return out


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


def _split_map(paths: dict[str, Path], index: dict[str, int], list_name: str) -> dict[int, str]:
    """Image index -> split, from the official Train/Test image lists."""
    split_of: dict[int, str] = {}
    where: dict[int, str] = {}
    for split, path in paths.items():
        for number, entry in enumerate(read_lines(path, "split list", names=True), 1):
            if not entry.strip():
                continue
            key = _nus_key(entry).casefold()
            i = index.get(key)
            if i is None:
                raise InputError(
                    f"{path}:{number}: image {entry.strip()!r} is not in {list_name}; "
                    "the image lists come from different releases, re-extract ImageList.zip"
                )
            if i in split_of and split_of[i] != split:
                raise InputError(
                    f"{path}:{number}: image {entry.strip()!r} is also in {where[i]}; "
                    "an image can be in one split only, re-extract ImageList.zip"
                )
            split_of[i] = split
            where[i] = path.name
    return split_of


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
    concepts = [c.strip() for c in read_lines(concepts_path, "concept list") if c.strip()]
    if not concepts:
        raise InputError(f"{concepts_path}: concept list is empty; re-extract it")
    for concept in concepts:
        if (problem := name_problem(concept, label=True)) is not None:
            raise InputError(f"{concepts_path}: concept {concept!r} {problem}; re-extract it")
    dup = next((c for i, c in enumerate(concepts) if c in concepts[:i]), None)
    if dup is not None:
        raise InputError(f"{concepts_path}: concept {dup!r} is listed twice; re-extract it")

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

    keys: list[str] = []
    index: dict[str, int] = {}
    for number, entry in enumerate(read_lines(list_path, "image list", names=True), 1):
        key = _nus_key(entry)
        if not key:
            raise InputError(f"{list_path}:{number}: empty image path; re-extract the file")
        folded = key.casefold()
        if folded in index:
            raise InputError(
                f"{list_path}:{number}: image {entry.strip()!r} is listed twice "
                f"(first on line {index[folded] + 1}); re-extract the file"
            )
        index[folded] = len(keys)
        keys.append(key)
    if not keys:
        raise InputError(f"{list_path}: image list is empty; re-extract it")
    n_images = len(keys)

    split_of = _split_map({"train": train_path, "test": test_path}, index, list_path.name)

    labels = np.stack(
        [_read_binary_column(p, n_images, list_path.name) for p in label_paths], axis=1
    )
    tag_names = [
        normalise_tag(line.split()[0]) if line.split() else ""
        for line in read_lines(taglist_path, "tag list")
    ]
    if not any(tag_names):
        raise InputError(f"{taglist_path}: tag list is empty; re-extract NUS_WID_Tags.zip")

    prefix = image_prefix(images_root, manifest.parent)
    tally = Tally(progress)

    def rows() -> Iterator[dict]:
        tag_rows = _tag_rows(tagmat_path, tag_names, n_images)
        for i, (key, tags) in enumerate(zip(keys, tag_rows, strict=False)):
            row = manifest_row(
                posixpath.join(prefix, key),
                [concepts[j] for j in np.flatnonzero(labels[i])],
                [t for t in tags if t],
                split_of.get(i),
            )
            yield tally.add(row, (images_root / key).is_file())
        for _ in tag_rows:  # runs the line-count check at the end of the tag matrix
            pass

    write_manifest(manifest, rows(), concepts)
    return tally.summary(manifest, len(concepts))
