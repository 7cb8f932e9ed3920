"""The COCO importer: an instances JSON (labels = categories present), optionally a captions JSON
whose words become user tags."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from m3trt.data.importers.common import (
    ImportSummary,
    Progress,
    Tally,
    check_image_dir,
    image_prefix,
    manifest_path,
    manifest_row,
)
from m3trt.data.json_stream import ItemHandler, scan_object_lists
from m3trt.data.manifest import SPLITS, is_file, name_problem, normalise_tag, write_manifest
from m3trt.data.safe_open import NotJSON
from m3trt.errors import InputError

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


class _Unknown:
    """The first annotation that refers to an id not defined, and how many do."""

    def __init__(self) -> None:
        self.first: tuple[int, object] | None = None
        self.count = 0

    def add(self, index: int, value: object, count: int = 1) -> None:
        if self.first is None or index < self.first[0]:
            self.first = (index, value)
        self.count += count

    def error(self, path: Path, key: str, where: str) -> InputError | None:
        if self.first is None:
            return None
        i, value = self.first
        more = f" (and {self.count - 1} more)" if self.count > 1 else ""
        return InputError(
            f"{path}: annotations[{i}] refers to {key} {value!r}, which is not in {where}{more}; "
            "the file is damaged or from another split"
        )


def _scan(path: Path, what: str, lists: dict[str, ItemHandler]) -> None:
    """Stream ``lists`` out of a COCO JSON; each must be there and be a list."""
    try:
        kinds = scan_object_lists(path, what, lists)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except NotJSON as exc:
        raise InputError(f"{exc}; give a COCO {what}") from None
    for key in lists:
        if key not in kinds:
            raise InputError(f'{path}: missing key "{key}"; this is not a COCO {what}')
        if kinds[key] != "a list":
            raise InputError(f'{path}: "{key}" must be a list; this is not a COCO {what}')


def _object(item: object, key: str, index: int, path: Path) -> dict:
    if not isinstance(item, dict):
        raise InputError(f"{path}: {key}[{index}] is not an object; the file is malformed")
    return item


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
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    explicit_images = check_image_dir(image_dir, "--images")

    cat_name: dict[object, str] = {}
    names_seen: set[str] = set()

    def category(i: int, item: object) -> None:
        cat = _object(item, "categories", i, instances)
        cid = _field(cat, "id", "id", instances, f"categories[{i}]")
        name = str(_field(cat, "name", "str", instances, f"categories[{i}]")).strip()
        if (problem := name_problem(name, label=True)) is not None:
            raise InputError(f"{instances}: categories[{i}] name {name!r} {problem}")
        if cid in cat_name:
            raise InputError(f"{instances}: category id {cid!r} is listed twice")
        if name in names_seen:
            raise InputError(f"{instances}: category name {name!r} is listed twice")
        cat_name[cid] = name
        names_seen.add(name)

    file_of: dict[object, str] = {}

    def image(i: int, item: object) -> None:
        img = _object(item, "images", i, instances)
        iid = _field(img, "id", "id", instances, f"images[{i}]")
        name = str(_field(img, "file_name", "str", instances, f"images[{i}]")).strip()
        if iid in file_of:
            raise InputError(f"{instances}: image id {iid!r} is listed twice")
        if "\x00" in name or ".." in name.replace("\\", "/").split("/") or name.startswith("/"):
            raise InputError(  # a NUL failed later, in train; '..' or '/' lead outside --images
                f"{instances}: images[{i}].file_name {name!r} is no file name inside the image "
                "folder (a NUL byte, a '..' component or an absolute path)"
            )
        file_of[iid] = name

    # image id -> category id -> [first annotation's index, annotations]: checked once the
    # whole file is read, since "categories" may come after "annotations" (it does in COCO's)
    refers: dict[object, dict[object, list[int]]] = {}

    def annotation(i: int, item: object) -> None:
        ann = _object(item, "annotations", i, instances)
        iid = _field(ann, "image_id", "id", instances, f"annotations[{i}]")
        cid = _field(ann, "category_id", "id", instances, f"annotations[{i}]")
        seen = refers.setdefault(iid, {}).setdefault(cid, [i, 0])
        seen[1] += 1

    _scan(
        instances,
        "instances JSON",
        {"images": image, "categories": category, "annotations": annotation},
    )
    if not cat_name:
        raise InputError(f'{instances}: "categories" is empty; there is nothing to learn')
    if not file_of:
        raise InputError(f'{instances}: "images" is empty; there is nothing to import')
    cat_order = sorted(cat_name, key=lambda c: (isinstance(c, str), c))
    cat_rank = {c: r for r, c in enumerate(cat_order)}

    present: dict[object, list[int]] = {}
    bad_image, bad_cat = _Unknown(), _Unknown()
    for iid, cats in refers.items():
        for cid, (first, count) in cats.items():
            if iid not in file_of:
                bad_image.add(first, iid, count)
            elif cid not in cat_name:
                bad_cat.add(first, cid, count)
            else:
                present.setdefault(iid, []).append(cat_rank[cid])
    refers.clear()
    if error := bad_image.error(instances, "image_id", '"images"'):
        raise error
    if error := bad_cat.error(instances, "category_id", '"categories"'):
        raise error

    tags_of: dict[object, dict[str, None]] = {}
    if captions_json is not None:
        cap_path = Path(captions_json)
        bad_caption = _Unknown()

        def caption(i: int, item: object) -> None:
            ann = _object(item, "annotations", i, cap_path)
            iid = _field(ann, "image_id", "id", cap_path, f"annotations[{i}]")
            text = ann.get("caption")
            if not isinstance(text, str):
                raise InputError(
                    f'{cap_path}: annotations[{i}] has no "caption" string; '
                    "give a COCO captions JSON"
                )
            if iid not in file_of:
                bad_caption.add(i, iid)
            else:  # first-seen order over all of an image's captions, as caption_tags keeps
                tags = tags_of.setdefault(iid, {})
                for tag in caption_tags([text]):
                    tags.setdefault(tag, None)

        _scan(cap_path, "captions JSON", {"annotations": caption})
        if error := bad_caption.error(cap_path, "image_id", f"the images of {instances.name}"):
            raise error

    if split is None:
        split = infer_split(instances)
    images_root = explicit_images or _default_coco_images(instances)
    manifest = manifest_path(out)
    prefix = image_prefix(images_root, manifest.parent)
    names = [cat_name[c] for c in cat_order]
    tally = Tally(progress)

    def rows() -> Iterator[dict]:
        for iid, file_name in file_of.items():
            row = manifest_row(
                posixpath.join(prefix, file_name.replace("\\", "/")),
                [names[r] for r in sorted(present.get(iid, ()))],
                list(tags_of.get(iid, ())),
                split,
            )
            yield tally.add(row, is_file(images_root / file_name))

    write_manifest(manifest, rows(), names)
    return tally.summary(manifest, len(names))
