"""Importers that turn public datasets into a JSONL manifest (DESIGN §3.1).

* :func:`import_nuswide` reads the official NUS-WIDE release: labels from the 81 concept
  ground-truth files, user tags from the 1k-tag matrix, the official train/test split.
* :func:`import_coco` reads a COCO instances JSON (labels = categories present), optionally with a
  captions JSON whose words become user tags.

Both write ``manifest.jsonl`` + ``labels.txt`` atomically with :func:`write_manifest`; every
problem with the inputs raises :class:`InputError` naming the file (and line) and the fix. Images
missing on disk are still written (the manifest reader reports them) and counted.

NUS-WIDE layout under ROOT (the two official archives, ``NUS-WIDE.zip`` with ImageList,
``NUS_WID_Tags.zip``, plus the images)::

    ConceptsList/Concepts81.txt        81 concept names, one a line (ROOT/Concepts81.txt accepted)
    ImageList/Imagelist.txt            all 269,648 images, C:\\ImageData\\Flickr\\actor\\0001_2.jpg
    ImageList/TrainImagelist.txt       the official train split, actor\\0001_2.jpg
    ImageList/TestImagelist.txt        the official test split
    Groundtruth/AllLabels/Labels_<concept>.txt   one 0/1 a line, aligned with Imagelist.txt
    NUS_WID_Tags/TagList1k.txt         the 1,000 tag names, one a line
    NUS_WID_Tags/AllTags1k.txt         one line per image: 1,000 tab-separated 0/1 values
    Flickr/<folder>/<file>.jpg         the images (another folder may be given)
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3trt.data.manifest import SPLITS, normalise_tag, write_manifest
from m3trt.errors import InputError

__all__ = [
    "STOPWORDS",
    "ImportSummary",
    "caption_tags",
    "import_coco",
    "import_nuswide",
    "infer_split",
]

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

    def describe(self) -> str:
        per_split = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        return (
            f"{self.manifest}: {self.n_images} images ({per_split}), {self.n_labels} labels, "
            f"{self.n_tags} tags, {self.n_missing_images} missing image files, "
            f"{self.n_unlabelled} unlabelled"
        )


# ------------------------------------------------------------------------------------ shared
def _manifest_path(out: str | os.PathLike) -> Path:
    """``out`` is the output folder (manifest.jsonl goes inside) or a ``.jsonl`` file path."""
    out = Path(out)
    if out.suffix.lower() == ".jsonl" and not out.is_dir():
        return out
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output exists and is not a folder; give a folder for -o")
    return out / MANIFEST_NAME


def _image_prefix(image_dir: Path, manifest_dir: Path) -> str:
    """The image folder as written in the manifest: relative to the manifest's folder."""
    image_dir = Path(os.path.abspath(image_dir))
    try:
        rel = os.path.relpath(image_dir, os.path.abspath(manifest_dir))
    except ValueError:  # another drive (Windows): keep it absolute
        return image_dir.as_posix()
    return rel.replace(os.sep, "/")


def _check_image_dir(image_dir: str | os.PathLike | None, what: str) -> Path | None:
    if image_dir is None:
        return None
    path = Path(image_dir)
    if not path.is_dir():
        raise InputError(f"{path}: image folder not found; check the {what} path")
    return path


class _Tally:
    """Counts while rows stream into write_manifest."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.n_images = 0
        self.n_missing = 0
        self.n_unlabelled = 0
        self.tags_seen: set[str] = set()
        self.splits: dict[str, int] = {}

    def add(self, row: dict, exists: bool) -> dict:
        self.n_images += 1
        if not exists:
            self.n_missing += 1
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
        )


def _row(image: str, labels: list[str], tags: list[str], split: str | None) -> dict:
    row: dict = {"image": image, "labels": labels}
    if tags:
        row["tags"] = tags
    if split:
        row["split"] = split
    return row


def _read_lines(path: Path, what: str) -> list[str]:
    """Text lines of a small list file, trailing blank lines dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# ----------------------------------------------------------------------------------- NUS-WIDE
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
    raise InputError(f"{tried[0]}: {what} not found; {fix}")


def _read_binary_column(path: Path, n_images: int, list_name: str) -> np.ndarray:
    """One 0/1 value a line, exactly ``n_images`` lines -> bool array."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"{path}: label file not found; extract Groundtruth.zip (AllLabels) into the root"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read label file ({exc.strerror or exc})") from None
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
        handle = path.open("rb")
    except FileNotFoundError:
        raise InputError(
            f"{path}: tag matrix not found; extract NUS_WID_Tags.zip into the root"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read tag matrix ({exc.strerror or exc})") from None
    with handle:
        n_lines = 0
        for number, raw in enumerate(handle, 1):
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
        for number, entry in enumerate(_read_lines(path, "split list"), 1):
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
    explicit_images = _check_image_dir(image_dir, "--images")
    images_root = explicit_images or root / "Flickr"
    manifest = _manifest_path(out)

    concepts_path = _find_file(
        root,
        ("ConceptsList/Concepts81.txt", "Concepts81.txt"),
        "concept list Concepts81.txt",
        "extract ConceptsList.zip (or NUS-WIDE.zip) into the root",
    )
    concepts = [c.strip() for c in _read_lines(concepts_path, "concept list") if c.strip()]
    if not concepts:
        raise InputError(f"{concepts_path}: concept list is empty; re-extract it")
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
        if not path.is_file():
            raise InputError(
                f"{path}: label file not found; extract Groundtruth.zip (AllLabels) into the root"
            )

    keys: list[str] = []
    index: dict[str, int] = {}
    for number, entry in enumerate(_read_lines(list_path, "image list"), 1):
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
        for line in _read_lines(taglist_path, "tag list")
    ]
    if not any(tag_names):
        raise InputError(f"{taglist_path}: tag list is empty; re-extract NUS_WID_Tags.zip")

    prefix = _image_prefix(images_root, manifest.parent)
    tally = _Tally(progress)

    def rows() -> Iterator[dict]:
        tag_rows = _tag_rows(tagmat_path, tag_names, n_images)
        for i, (key, tags) in enumerate(zip(keys, tag_rows, strict=False)):
            row = _row(
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


# --------------------------------------------------------------------------------------- COCO
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves also another around along across next
    near behind onto dont doesnt isnt arent wasnt werent cant wont
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""English stopwords dropped from caption words (plus words shorter than 2 letters, numbers)."""

_WORD = re.compile(r"[^\W_]+")


def caption_tags(captions: Iterable[str]) -> list[str]:
    """Caption words as tags: lowercased, punctuation stripped, stopwords and numbers dropped,
    deduplicated in first-seen order. ``"A dog's ball."`` -> ``["dog", "ball"]``."""
    seen: dict[str, None] = {}
    for caption in captions:
        text = re.sub(r"['’]s\b", "", caption.lower())
        text = text.replace("'", "").replace("’", "")
        for word in _WORD.findall(text):
            if len(word) < 2 or word.isdigit() or word in STOPWORDS:
                continue
            tag = normalise_tag(word)
            if tag:
                seen.setdefault(tag, None)
    return list(seen)


def _load_json(path: Path, what: str) -> dict:
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"give a COCO {what}"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 JSON file; give a COCO {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a JSON object; give a COCO {what}")
    return data


def _list_of_objects(data: dict, key: str, path: Path, what: str) -> list[dict]:
    if key not in data:
        raise InputError(f'{path}: missing key "{key}"; this is not a COCO {what}')
    items = data[key]
    if not isinstance(items, list):
        raise InputError(f'{path}: "{key}" must be a list; this is not a COCO {what}')
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{path}: {key}[{i}] is not an object; the file is malformed")
    return items


def _is_id(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _field(item: dict, key: str, kind: str, path: Path, where: str) -> object:
    if key not in item:
        raise InputError(f'{path}: {where} has no "{key}"; the file is malformed')
    value = item[key]
    ok = _is_id(value) if kind == "id" else isinstance(value, str) and bool(value.strip())
    if not ok:
        expected = "an integer id" if kind == "id" else "a non-empty string"
        raise InputError(f'{path}: {where} "{key}" must be {expected}, not {value!r}')
    return value


def _unknown(path: Path, bad: list[tuple[int, object]], key: str, where: str) -> InputError:
    i, value = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return InputError(
        f"{path}: annotations[{i}] refers to {key} {value!r}, which is not in {where}{more}; "
        "the file is damaged or from another split"
    )


def _split_suffix(path: Path) -> str | None:
    """``instances_val2017.json`` -> ``val2017``."""
    stem = path.stem
    return stem.split("_", 1)[1] if "_" in stem else None


_SPLIT_WORD = re.compile(r"(?:^|[^a-z]|mini)(train|val|test)")


def infer_split(path: str | os.PathLike) -> str | None:
    """The split named in a file name, else None: ``instances_train2017.json`` -> "train",
    ``instances_val2017.json``/``instances_minival2014.json`` -> "val", ``image_info_test2017``
    -> "test" (the first such word that does not start in the middle of another word)."""
    found = _SPLIT_WORD.search(Path(path).name.lower())
    return found.group(1) if found else None


def _default_coco_images(instances: Path) -> Path:
    suffix = _split_suffix(instances)
    folder = instances.parent
    if suffix:
        for candidate in (folder.parent / suffix, folder / suffix):
            if candidate.is_dir():
                return candidate
    return folder


def import_coco(
    instances_json: str | os.PathLike,
    out: str | os.PathLike,
    *,
    captions_json: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    split: str | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Write a manifest from a COCO instances JSON: labels = the categories present in each image
    (ordered by category id; ``labels.txt`` = all categories by id), images without annotations
    kept with no labels. Tags = caption words (:func:`caption_tags`) when ``captions_json`` is
    given. ``image_dir`` defaults to the folder named after the file's split next to the
    annotations folder (``annotations/instances_val2017.json`` -> ``val2017/``), else the JSON's
    folder. ``split`` defaults to the one named in the file name, else none.
    """
    instances = Path(instances_json)
    what = "instances JSON"
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    explicit_images = _check_image_dir(image_dir, "--images")
    data = _load_json(instances, what)
    images = _list_of_objects(data, "images", instances, what)
    categories = _list_of_objects(data, "categories", instances, what)
    annotations = _list_of_objects(data, "annotations", instances, what)

    cat_name: dict[object, str] = {}
    for i, cat in enumerate(categories):
        cid = _field(cat, "id", "id", instances, f"categories[{i}]")
        name = str(_field(cat, "name", "str", instances, f"categories[{i}]")).strip()
        if cid in cat_name:
            raise InputError(f"{instances}: category id {cid!r} is listed twice")
        if name in cat_name.values():
            raise InputError(f"{instances}: category name {name!r} is listed twice")
        cat_name[cid] = name
    if not cat_name:
        raise InputError(f'{instances}: "categories" is empty; there is nothing to learn')
    cat_order = sorted(cat_name, key=lambda c: (isinstance(c, str), c))
    cat_rank = {c: r for r, c in enumerate(cat_order)}

    file_of: dict[object, str] = {}
    for i, img in enumerate(images):
        iid = _field(img, "id", "id", instances, f"images[{i}]")
        name = str(_field(img, "file_name", "str", instances, f"images[{i}]")).strip()
        if iid in file_of:
            raise InputError(f"{instances}: image id {iid!r} is listed twice")
        file_of[iid] = name
    if not file_of:
        raise InputError(f'{instances}: "images" is empty; there is nothing to import')

    present: dict[object, set[int]] = {}
    bad_image: list[tuple[int, object]] = []
    bad_cat: list[tuple[int, object]] = []
    for i, ann in enumerate(annotations):
        iid = _field(ann, "image_id", "id", instances, f"annotations[{i}]")
        cid = _field(ann, "category_id", "id", instances, f"annotations[{i}]")
        if iid not in file_of:
            bad_image.append((i, iid))
        elif cid not in cat_name:
            bad_cat.append((i, cid))
        else:
            present.setdefault(iid, set()).add(cat_rank[cid])
    if bad_image:
        raise _unknown(instances, bad_image, "image_id", '"images"')
    if bad_cat:
        raise _unknown(instances, bad_cat, "category_id", '"categories"')

    tags_of: dict[object, list[str]] = {}
    if captions_json is not None:
        cap_path = Path(captions_json)
        cap_what = "captions JSON"
        cap_data = _load_json(cap_path, cap_what)
        texts: dict[object, list[str]] = {}
        bad: list[tuple[int, object]] = []
        for i, ann in enumerate(_list_of_objects(cap_data, "annotations", cap_path, cap_what)):
            iid = _field(ann, "image_id", "id", cap_path, f"annotations[{i}]")
            caption = ann.get("caption")
            if not isinstance(caption, str):
                raise InputError(
                    f'{cap_path}: annotations[{i}] has no "caption" string; '
                    "give a COCO captions JSON"
                )
            if iid not in file_of:
                bad.append((i, iid))
            else:
                texts.setdefault(iid, []).append(caption)
        if bad:
            raise _unknown(cap_path, bad, "image_id", f"the images of {instances.name}")
        tags_of = {iid: caption_tags(caps) for iid, caps in texts.items()}

    if split is None:
        split = infer_split(instances)
    images_root = explicit_images or _default_coco_images(instances)
    manifest = _manifest_path(out)
    prefix = _image_prefix(images_root, manifest.parent)
    names = [cat_name[c] for c in cat_order]
    tally = _Tally(progress)

    def rows() -> Iterator[dict]:
        for iid, file_name in file_of.items():
            row = _row(
                posixpath.join(prefix, file_name.replace("\\", "/")),
                [names[r] for r in sorted(present.get(iid, ()))],
                tags_of.get(iid, []),
                split,
            )
            yield tally.add(row, (images_root / file_name).is_file())

    write_manifest(manifest, rows(), names)
    return tally.summary(manifest, len(names))
