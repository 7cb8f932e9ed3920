"""NUS-WIDE and COCO importers, on tiny files written in the official formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from m3trt.data import json_stream
from m3trt.data.importers import (
    STOPWORDS,
    ImportSummary,
    caption_tags,
    import_coco,
    import_nuswide,
    infer_split,
)
from m3trt.data.manifest import read_manifest
from m3trt.errors import InputError

# ------------------------------------------------------------------------------------ helpers


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------- NUS-WIDE

NUS_IMAGES = [
    "actor\\0001_2124494179.jpg",
    "actor\\0002_174174086.jpg",
    "actor\\0003_512.jpg",
    "beach\\0001_1001.jpg",
    "beach\\0002_1002.jpg",
    "beach\\0003_1003.jpg",
]
CONCEPTS = ["animal", "beach", "sky"]
# one column per concept, one row per image (Imagelist order)
LABELS = [
    [1, 0, 1],
    [0, 0, 0],
    [1, 0, 0],
    [0, 1, 1],
    [0, 1, 0],
    [1, 1, 1],
]
TAGS = ["Sunset", "dog", "sea", "nikon", "sand"]
TAG_MATRIX = [
    [1, 1, 0, 0, 0],
    [0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0],
    [1, 0, 1, 0, 1],
    [0, 0, 1, 0, 1],
    [0, 1, 0, 0, 0],
]
TRAIN = [0, 2, 3, 5]
TEST = [1, 4]
MISSING = 4  # beach\0002_1002.jpg is not on disk


def make_nuswide(root: Path, *, concepts_in_root: bool = False) -> Path:
    """Write the official NUS-WIDE layout (6 images, 3 concepts, 5 tags) under root."""
    concept_file = (
        root / "Concepts81.txt" if concepts_in_root else root / "ConceptsList/Concepts81.txt"
    )
    concept_file.parent.mkdir(parents=True, exist_ok=True)
    concept_file.write_text("\r\n".join(CONCEPTS) + "\r\n", encoding="utf-8")

    lists = root / "ImageList"
    lists.mkdir()
    (lists / "Imagelist.txt").write_text(
        "".join(f"C:\\ImageData\\Flickr\\{p}\r\n" for p in NUS_IMAGES), encoding="utf-8"
    )
    (lists / "TrainImagelist.txt").write_text(
        "".join(f"{NUS_IMAGES[i]}\r\n" for i in TRAIN), encoding="utf-8"
    )
    (lists / "TestImagelist.txt").write_text(
        "".join(f"{NUS_IMAGES[i]}\r\n" for i in TEST), encoding="utf-8"
    )

    gt = root / "Groundtruth" / "AllLabels"
    gt.mkdir(parents=True)
    for j, concept in enumerate(CONCEPTS):
        (gt / f"Labels_{concept}.txt").write_text(
            "".join(f"{row[j]}\n" for row in LABELS), encoding="utf-8"
        )

    tags = root / "NUS_WID_Tags"
    tags.mkdir()
    (tags / "TagList1k.txt").write_text("\n".join(TAGS) + "\n", encoding="utf-8")
    # tab-separated, with the trailing tab the real file has on each line
    (tags / "AllTags1k.txt").write_text(
        "".join("\t".join(str(v) for v in row) + "\t\n" for row in TAG_MATRIX), encoding="utf-8"
    )

    for i, p in enumerate(NUS_IMAGES):
        if i != MISSING:
            _jpeg(root / "Flickr" / p.replace("\\", "/"), (40 * i, 20, 20))
    return root


@pytest.fixture
def nus(tmp_path: Path) -> Path:
    return make_nuswide(tmp_path / "NUS-WIDE")


EXPECTED_NUS = [
    {
        "image": "../NUS-WIDE/Flickr/actor/0001_2124494179.jpg",
        "labels": ["animal", "sky"],
        "tags": ["sunset", "dog"],
        "split": "train",
    },
    {
        "image": "../NUS-WIDE/Flickr/actor/0002_174174086.jpg",
        "labels": [],
        "tags": ["nikon"],
        "split": "test",
    },
    {"image": "../NUS-WIDE/Flickr/actor/0003_512.jpg", "labels": ["animal"], "split": "train"},
    {
        "image": "../NUS-WIDE/Flickr/beach/0001_1001.jpg",
        "labels": ["beach", "sky"],
        "tags": ["sunset", "sea", "sand"],
        "split": "train",
    },
    {
        "image": "../NUS-WIDE/Flickr/beach/0002_1002.jpg",
        "labels": ["beach"],
        "tags": ["sea", "sand"],
        "split": "test",
    },
    {
        "image": "../NUS-WIDE/Flickr/beach/0003_1003.jpg",
        "labels": ["animal", "beach", "sky"],
        "tags": ["dog"],
        "split": "train",
    },
]


def test_nuswide_rows_exact(nus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[int] = []
    summary = import_nuswide(nus, out, progress=seen.append)

    assert summary == ImportSummary(
        manifest=out / "manifest.jsonl",
        n_images=6,
        n_labels=3,
        n_tags=5,
        n_missing_images=1,
        n_unlabelled=1,
        splits={"train": 4, "test": 2},
        first_missing="../NUS-WIDE/Flickr/beach/0002_1002.jpg",
    )
    assert seen == [1, 2, 3, 4, 5, 6]
    assert _rows(out / "manifest.jsonl") == EXPECTED_NUS
    assert (out / "labels.txt").read_text(encoding="utf-8") == "animal\nbeach\nsky\n"


def test_nuswide_paths_resolve_through_the_reader(nus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_nuswide(nus, out)
    m = read_manifest(out, allow_missing_images=True)
    assert m.label_names == CONCEPTS
    assert [r.path.resolve() for r in m.missing_images] == [
        (nus / "Flickr/beach/0002_1002.jpg").resolve()
    ]
    assert len(m.records) == 5
    for r in m.records:
        assert r.path.is_file()
        with Image.open(r.path) as im:
            assert im.size == (8, 8)


def test_nuswide_concepts_in_root_and_image_dir(tmp_path: Path) -> None:
    root = make_nuswide(tmp_path / "nus", concepts_in_root=True)
    moved = tmp_path / "elsewhere" / "imgs"
    moved.parent.mkdir()
    (root / "Flickr").rename(moved)
    out = tmp_path / "a" / "b"
    summary = import_nuswide(root, out, image_dir=moved)
    assert summary.n_missing_images == 1
    rows = _rows(out / "manifest.jsonl")
    assert rows[0]["image"] == "../../elsewhere/imgs/actor/0001_2124494179.jpg"
    assert (out / rows[0]["image"]).is_file()


def test_nuswide_missing_concepts_file(nus: Path, tmp_path: Path) -> None:
    (nus / "ConceptsList/Concepts81.txt").unlink()
    with pytest.raises(InputError, match="Concepts81.txt"):
        import_nuswide(nus, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize(
    "missing",
    [
        "ImageList/Imagelist.txt",
        "ImageList/TrainImagelist.txt",
        "ImageList/TestImagelist.txt",
        "NUS_WID_Tags/TagList1k.txt",
        "NUS_WID_Tags/AllTags1k.txt",
        "Groundtruth/AllLabels/Labels_beach.txt",
    ],
)
def test_nuswide_missing_required_file(nus: Path, tmp_path: Path, missing: str) -> None:
    (nus / missing).unlink()
    with pytest.raises(InputError, match=Path(missing).name.replace(".", r"\.")):
        import_nuswide(nus, tmp_path / "out")


def test_nuswide_label_file_wrong_line_count(nus: Path, tmp_path: Path) -> None:
    path = nus / "Groundtruth/AllLabels/Labels_sky.txt"
    path.write_text("1\n0\n0\n1\n0\n", encoding="utf-8")  # 5 lines for 6 images
    with pytest.raises(InputError, match=r"Labels_sky\.txt: has 5 lines but Imagelist\.txt"):
        import_nuswide(nus, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_nuswide_label_value_not_binary(nus: Path, tmp_path: Path) -> None:
    path = nus / "Groundtruth/AllLabels/Labels_beach.txt"
    path.write_text("0\n0\n2\n1\n1\n1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"Labels_beach\.txt:3: expected 0 or 1, found '2'"):
        import_nuswide(nus, tmp_path / "out")


def test_nuswide_label_file_with_spaces_is_accepted(nus: Path, tmp_path: Path) -> None:
    path = nus / "Groundtruth/AllLabels/Labels_beach.txt"
    path.write_text(" 0\r\n0 \r\n0\r\n1\r\n1\r\n1\r\n\r\n", encoding="utf-8")
    import_nuswide(nus, tmp_path / "out")
    assert _rows(tmp_path / "out/manifest.jsonl") == EXPECTED_NUS


def test_nuswide_tag_line_wrong_width(nus: Path, tmp_path: Path) -> None:
    path = nus / "NUS_WID_Tags/AllTags1k.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = "0\t0\t0\t1"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"AllTags1k\.txt:2: has 4 values but TagList1k\.txt"):
        import_nuswide(nus, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_nuswide_tag_value_not_binary(nus: Path, tmp_path: Path) -> None:
    path = nus / "NUS_WID_Tags/AllTags1k.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = "0\t0\t1\t0\tx"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"AllTags1k\.txt:5: expected 0 or 1, found 'x'"):
        import_nuswide(nus, tmp_path / "out")


@pytest.mark.parametrize("n_lines", [5, 7])
def test_nuswide_tag_matrix_wrong_line_count(nus: Path, tmp_path: Path, n_lines: int) -> None:
    path = nus / "NUS_WID_Tags/AllTags1k.txt"
    rows = [*TAG_MATRIX, [0, 0, 0, 0, 1]][:n_lines]
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError, match=r"AllTags1k\.txt"):
        import_nuswide(nus, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_nuswide_split_list_entry_unknown(nus: Path, tmp_path: Path) -> None:
    path = nus / "ImageList/TrainImagelist.txt"
    path.write_text(path.read_text(encoding="utf-8") + "zebra\\0001_9.jpg\r\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"TrainImagelist\.txt:5: image 'zebra"):
        import_nuswide(nus, tmp_path / "out")


def test_nuswide_image_in_both_splits(nus: Path, tmp_path: Path) -> None:
    path = nus / "ImageList/TestImagelist.txt"
    path.write_text(path.read_text(encoding="utf-8") + f"{NUS_IMAGES[0]}\r\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"TestImagelist\.txt:3: .* also in TrainImagelist"):
        import_nuswide(nus, tmp_path / "out")


def test_nuswide_explicit_image_dir_must_exist(nus: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere"):
        import_nuswide(nus, tmp_path / "out", image_dir=tmp_path / "nowhere")


# --------------------------------------------------------------------------------------- COCO

COCO_CATEGORIES = [
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
COCO_IMAGES = [
    {"id": 42, "file_name": "000000000042.jpg", "width": 8, "height": 8},
    {"id": 7, "file_name": "000000000007.jpg", "width": 8, "height": 8},
    {"id": 9, "file_name": "000000000009.jpg", "width": 8, "height": 8},
    {"id": 5, "file_name": "000000000005.jpg", "width": 8, "height": 8},
]
COCO_ANNOTATIONS = [
    {"id": 1, "image_id": 42, "category_id": 18, "bbox": [0, 0, 1, 1], "iscrowd": 0},
    {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0},
    {"id": 3, "image_id": 42, "category_id": 18, "bbox": [1, 1, 1, 1], "iscrowd": 0},
    {"id": 4, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 1},
    {"id": 5, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0},
]
COCO_CAPTIONS = [
    {"id": 1, "image_id": 42, "caption": "A man and his dog, on the beach."},
    {"id": 2, "image_id": 42, "caption": "The Dog's owner is walking with it at 5 pm"},
    {"id": 3, "image_id": 7, "caption": "A red car parked near the curb!"},
]


def make_coco(root: Path, name: str = "instances_val2017.json", folder: str = "val2017") -> Path:
    """COCO layout: root/annotations/<name>, images in root/<folder> (image 5 missing)."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    data = {
        "info": {"description": "tiny"},
        "licenses": [],
        "images": COCO_IMAGES,
        "annotations": COCO_ANNOTATIONS,
        "categories": COCO_CATEGORIES,
    }
    path = ann / name
    path.write_text(json.dumps(data), encoding="utf-8")
    (ann / "captions_val2017.json").write_text(
        json.dumps({"images": COCO_IMAGES, "annotations": COCO_CAPTIONS}), encoding="utf-8"
    )
    for img in COCO_IMAGES[:3]:
        _jpeg(root / folder / img["file_name"])
    return path


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "coco")


def test_coco_rows_exact(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[int] = []
    summary = import_coco(coco, out, progress=seen.append)
    assert summary == ImportSummary(
        manifest=out / "manifest.jsonl",
        n_images=4,
        n_labels=3,
        n_tags=0,
        n_missing_images=1,
        n_unlabelled=1,
        splits={"val": 4},
        first_missing="../coco/val2017/000000000005.jpg",
    )
    assert seen == [1, 2, 3, 4]
    assert _rows(out / "manifest.jsonl") == [
        {"image": "../coco/val2017/000000000042.jpg", "labels": ["person", "dog"], "split": "val"},
        {"image": "../coco/val2017/000000000007.jpg", "labels": ["car"], "split": "val"},
        {"image": "../coco/val2017/000000000009.jpg", "labels": [], "split": "val"},
        {"image": "../coco/val2017/000000000005.jpg", "labels": ["person"], "split": "val"},
    ]
    # labels.txt: categories sorted by id
    assert (out / "labels.txt").read_text(encoding="utf-8") == "person\ncar\ndog\n"
    m = read_manifest(out, allow_missing_images=True)
    assert [r.path.name for r in m.missing_images] == ["000000000005.jpg"]
    assert all(r.path.is_file() for r in m.records)


def test_coco_read_in_small_pieces_in_any_key_order(
    coco: Path, tmp_path: Path, monkeypatch
) -> None:
    """The instances JSON is streamed item by item (a 394 MB file took 2.7 GB whole): reads cut
    through every item, and "categories" may come first or last, as the rows do not change."""
    reference = tmp_path / "reference"
    import_coco(coco, reference, captions_json=coco.parent / "captions_val2017.json")
    data = json.loads(coco.read_text(encoding="utf-8"))
    coco.write_text(json.dumps(dict(reversed(data.items())), indent=2), encoding="utf-8")
    monkeypatch.setattr(json_stream, "CHUNK", 3)
    out = tmp_path / "out"
    import_coco(coco, out, captions_json=coco.parent / "captions_val2017.json")
    for name in ("manifest.jsonl", "labels.txt"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_coco_key_listed_twice(coco: Path, tmp_path: Path) -> None:
    """json.load kept the second "images" silently."""
    text = coco.read_text(encoding="utf-8")
    coco.write_text(text[:-1] + ', "images": []}', encoding="utf-8")
    with pytest.raises(InputError, match=r'instances_val2017\.json: key "images" appears twice'):
        import_coco(coco, tmp_path / "out")


def test_coco_captions_become_tags(coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = import_coco(coco, out, captions_json=coco.parent / "captions_val2017.json")
    rows = _rows(out / "manifest.jsonl")
    assert rows[0]["tags"] == ["man", "dog", "beach", "owner", "walking", "pm"]
    assert rows[1]["tags"] == ["red", "car", "parked", "curb"]
    assert "tags" not in rows[2] and "tags" not in rows[3]
    assert summary.n_tags == 10
    for row in rows:
        assert not set(row.get("tags", ())) & STOPWORDS


def test_caption_tags_rules() -> None:
    assert caption_tags(["A Dog's  BALL, on the grass...", "two dogs; 3 balls & a dog"]) == [
        "dog",
        "ball",
        "grass",
        "two",
        "dogs",
        "balls",
    ]
    assert caption_tags(["The cat isn't on it."]) == ["cat"]
    assert caption_tags([]) == []


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("instances_train2017.json", "train"),
        ("instances_val2017.json", "val"),
        ("instances_minival2014.json", "val"),
        ("instances_valminusminival2014.json", "val"),
        ("image_info_test-dev2017.json", "test"),
        ("instances_trainval.json", "train"),
        ("latest.json", None),
        ("instances.json", None),
    ],
)
def test_infer_split(name: str, split: str | None) -> None:
    assert infer_split(Path("annotations") / name) == split


def test_coco_split_and_image_dir_from_file_name(tmp_path: Path) -> None:
    path = make_coco(tmp_path / "coco", "instances_train2014.json", "train2014")
    out = tmp_path / "out"
    summary = import_coco(path, out)
    rows = _rows(out / "manifest.jsonl")
    assert summary.splits == {"train": 4}
    assert rows[0]["image"] == "../coco/train2014/000000000042.jpg"
    assert summary.n_missing_images == 1

    # explicit split wins over the file name
    summary = import_coco(path, tmp_path / "out2", split="test")
    assert summary.splits == {"test": 4}
    assert {r["split"] for r in _rows(tmp_path / "out2/manifest.jsonl")} == {"test"}


def test_coco_no_split_in_name_uses_json_folder(tmp_path: Path) -> None:
    path = make_coco(tmp_path / "coco", "mydata.json", "annotations")
    out = tmp_path / "out"
    summary = import_coco(path, out)
    rows = _rows(out / "manifest.jsonl")
    assert summary.splits == {"(none)": 4}
    assert all("split" not in r for r in rows)
    assert rows[0]["image"] == "../coco/annotations/000000000042.jpg"
    assert summary.n_missing_images == 1


def test_coco_explicit_image_dir(coco: Path, tmp_path: Path) -> None:
    images = tmp_path / "pics"
    (coco.parent.parent / "val2017").rename(images)
    out = tmp_path / "out"
    summary = import_coco(coco, out, image_dir=images)
    assert summary.n_missing_images == 1
    assert _rows(out / "manifest.jsonl")[0]["image"] == "../pics/000000000042.jpg"


def test_coco_malformed_json(coco: Path, tmp_path: Path) -> None:
    coco.write_text(coco.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    with pytest.raises(
        InputError, match=r"instances_val2017\.json: instances JSON is not valid JSON"
    ):
        import_coco(coco, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_coco_not_json_at_all(tmp_path: Path) -> None:
    path = tmp_path / "instances_val2017.json"
    _jpeg(path)
    with pytest.raises(InputError, match=r"instances_val2017\.json"):
        import_coco(path, tmp_path / "out")


def test_coco_annotation_unknown_image(coco: Path, tmp_path: Path) -> None:
    data = json.loads(coco.read_text(encoding="utf-8"))
    data["annotations"].append({"id": 99, "image_id": 12345, "category_id": 1})
    coco.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        InputError, match=r"instances_val2017\.json: annotations\[5\] refers to image_id 12345"
    ):
        import_coco(coco, tmp_path / "out")


def test_coco_annotation_unknown_category(coco: Path, tmp_path: Path) -> None:
    data = json.loads(coco.read_text(encoding="utf-8"))
    data["annotations"][1]["category_id"] = 77
    coco.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match=r"instances_val2017\.json: .*category_id 77"):
        import_coco(coco, tmp_path / "out")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_coco_missing_key(coco: Path, tmp_path: Path, key: str) -> None:
    data = json.loads(coco.read_text(encoding="utf-8"))
    del data[key]
    coco.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match=rf'instances_val2017\.json: missing key "{key}"'):
        import_coco(coco, tmp_path / "out")


def test_coco_bad_structure(coco: Path, tmp_path: Path) -> None:
    coco.write_text(json.dumps([1, 2, 3]), encoding="utf-8")
    with pytest.raises(InputError, match=r"instances_val2017\.json: the top level"):
        import_coco(coco, tmp_path / "out")
    data = {"images": [{"file_name": "x.jpg"}], "annotations": [], "categories": COCO_CATEGORIES}
    coco.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match=r'instances_val2017\.json: images\[0\] has no "id"'):
        import_coco(coco, tmp_path / "out")


def test_coco_captions_unknown_image(coco: Path, tmp_path: Path) -> None:
    captions = coco.parent / "captions_val2017.json"
    captions.write_text(
        json.dumps({"annotations": [{"id": 1, "image_id": 999, "caption": "a cat"}]}),
        encoding="utf-8",
    )
    with pytest.raises(InputError, match=r"captions_val2017\.json: annotations\[0\] .* 999"):
        import_coco(coco, tmp_path / "out", captions_json=captions)


def test_coco_bad_split_option(coco: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="split"):
        import_coco(coco, tmp_path / "out", split="dev")


# ----------------------------------------------------------------------- names that are not text


def test_coco_file_name_that_is_not_utf8_round_trips(coco: Path, tmp_path: Path) -> None:
    """A lone surrogate (a file name's non-UTF-8 byte, as os.fsdecode holds it) crashed the
    manifest writer with UnicodeEncodeError; it is written escaped and reads back as the file."""
    data = json.loads(coco.read_text(encoding="utf-8"))
    data["images"][0]["file_name"] = "caf\udce9.jpg"
    coco.write_text(json.dumps(data), encoding="utf-8")
    _jpeg(coco.parent.parent / "val2017" / "caf\udce9.jpg")
    out = tmp_path / "out"
    import_coco(coco, out)
    manifest = read_manifest(out / "manifest.jsonl", allow_missing_images=True)
    assert os.fsencode(manifest.records[0].path).endswith(b"/caf\xe9.jpg")
    assert manifest.records[0].path.is_file()


@pytest.mark.parametrize("name", ["a\nb", "a\u2028b", "x\x1b[31m", "\udcff"])
def test_coco_category_that_cannot_be_a_label(coco: Path, tmp_path: Path, name: str) -> None:
    """'a\\nb' was written to labels.txt as two lines: the import said it worked, and the
    dataset it wrote was then refused by its own reader."""
    data = json.loads(coco.read_text(encoding="utf-8"))
    data["categories"][1]["name"] = name
    coco.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match=r"categories\[1\] name .* holds a"):
        import_coco(coco, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nuswide_image_list_that_is_not_utf8_names_the_files(nus: Path, tmp_path: Path) -> None:
    """Latin-1 decoding made b'\\xff.jpg' the name 'ÿ.jpg' (UTF-8 c3 bf): the image on disk
    was counted missing."""
    lists = nus / "ImageList"
    for name in ("Imagelist.txt", "TrainImagelist.txt"):
        data = (lists / name).read_bytes().replace(b"0003_512.jpg", b"0003_\xff.jpg")
        (lists / name).write_bytes(data)
    old = nus / "Flickr" / "actor" / "0003_512.jpg"
    old.rename(os.fsdecode(os.path.join(os.fsencode(old.parent), b"0003_\xff.jpg")))
    summary = import_nuswide(nus, tmp_path / "out")
    assert summary.n_missing_images == 1  # only the one the fixture leaves out
    assert read_manifest(tmp_path / "out" / "manifest.jsonl", allow_missing_images=True)


def test_nuswide_label_file_that_is_a_fifo_is_named_as_one(nus: Path, tmp_path: Path) -> None:
    """It was reported as 'label file not found'."""
    path = nus / "Groundtruth" / "AllLabels" / "Labels_sky.txt"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(InputError, match=r"Labels_sky\.txt: label file is a FIFO"):
        import_nuswide(nus, tmp_path / "out")


def test_import_summary_names_the_first_missing_image(coco: Path, tmp_path: Path) -> None:
    """It said only '1 missing image files' (and '(none) 4' for images without a split)."""
    summary = import_coco(coco, tmp_path / "out")
    assert summary.first_missing == "../coco/val2017/000000000005.jpg"
    text = summary.describe()
    assert "1 missing image files (first: ../coco/val2017/000000000005.jpg;" in text
