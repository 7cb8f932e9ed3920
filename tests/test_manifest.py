"""Manifest reading/writing and vocabularies: line-numbered errors, label order, tag vocab."""

import json

import numpy as np
import pytest

from m3trt.data.manifest import normalise_tag, read_manifest, write_manifest
from m3trt.data.vocab import Vocab, build_tag_vocab
from m3trt.errors import InputError, ManifestError


def make(tmp_path, lines, labels=None, images=("a.jpg", "b.jpg")):
    for name in images:
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    if labels is not None:
        (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    return path


def test_reads_records_tags_and_splits(tmp_path):
    path = make(
        tmp_path,
        [
            {
                "image": "a.jpg",
                "labels": ["dog", "grass"],
                "tags": [" Puppy ", "PARK", "puppy"],
                "split": "train",
            },
            {"image": "b.jpg", "labels": []},
        ],
    )
    m = read_manifest(path)
    assert m.label_names == ["dog", "grass"]
    a, b = m.records
    assert a.tags == ("puppy", "park") and a.split == "train" and a.path == tmp_path / "a.jpg"
    assert b.labels == () and b.split is None and b.line == 2
    assert m.splits() == {"train": 1, "(none)": 1}


def test_labels_txt_fixes_order(tmp_path):
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["dog"]}], labels=["zebra", "dog", "cat"])
    assert read_manifest(path).label_names == ["zebra", "dog", "cat"]


def test_unknown_label_in_labels_txt(tmp_path):
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["dog", "wolf"]}], labels=["dog"])
    with pytest.raises(ManifestError, match=r"line 1: label 'wolf' is not in labels.txt"):
        read_manifest(path)


def test_duplicate_label_in_labels_txt(tmp_path):
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["dog"]}], labels=["dog", "cat", "dog"])
    with pytest.raises(ManifestError, match=r"labels.txt:3: label 'dog' is listed twice"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"labels": ["a"]}', 'missing "image"'),
        ('{"image": "a.jpg"}', 'missing "labels"'),
        ('{"image": "a.jpg", "labels": "dog"}', '"labels" must be a list of strings'),
        ('{"image": "a.jpg", "labels": ["a"], "tags": [1]}', '"tags" must be a list of strings'),
        ('{"image": "a.jpg", "labels": ["a"], "split": "dev"}', '"split" must be one of'),
        # labels.txt holds one name a line: these names could not be kept there
        ('{"image": "a.jpg", "labels": ["a\\nb"]}', "label 'a\\nb' holds a control"),
        ('{"image": "a.jpg", "labels": ["a\\u2028b"]}', "holds a control character or a line"),
        # not Unicode: train then crashed writing the model's metadata as UTF-8
        ('{"image": "a.jpg", "labels": ["\\udcff"]}', "holds a lone surrogate"),
        ('{"image": "a.jpg", "labels": ["a"], "tags": ["\\ud800x"]}', "tag '\\ud800x' holds"),
    ],
)
def test_bad_lines_are_reported_with_their_number(tmp_path, line, reason):
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["a"]}, line])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 2: ")
    assert reason in message
    assert "\n" not in message


def test_many_bad_lines_are_summarised(tmp_path):
    path = make(tmp_path, ["{bad"] * 9)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "line 1:" in message and "line 5:" in message and "(and 4 more bad lines)" in message


def test_missing_images_are_reported_not_dropped(tmp_path):
    path = make(
        tmp_path, [{"image": "a.jpg", "labels": ["x"]}, {"image": "gone.jpg", "labels": ["x"]}]
    )
    with pytest.raises(ManifestError, match="line 2: image not found: gone.jpg"):
        read_manifest(path)
    m = read_manifest(path, allow_missing_images=True)
    assert [r.image for r in m.records] == ["a.jpg"]
    assert [r.image for r in m.missing_images] == ["gone.jpg"]
    import os

    os.mkfifo(tmp_path / "gone.jpg")  # there, but not a file to read: said as such
    with pytest.raises(ManifestError, match="line 2: image is a FIFO .named pipe., not a regular"):
        read_manifest(path)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="no records"):
        read_manifest(tmp_path / "empty.jsonl")


def test_folder_argument_uses_its_manifest(tmp_path):
    make(tmp_path, [{"image": "a.jpg", "labels": ["x"]}])
    assert len(read_manifest(tmp_path).records) == 1


def test_write_then_read_round_trip(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(b"x")
    rows = [{"image": "img/1.jpg", "labels": ["b", "a"], "tags": ["t"], "split": "val"}]
    write_manifest(tmp_path / "manifest.jsonl", rows, ["b", "a"])
    m = read_manifest(tmp_path / "manifest.jsonl")
    assert m.label_names == ["b", "a"]
    assert m.records[0].to_json() == rows[0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_normalise_tag():
    assert normalise_tag("  New   York ") == "new york"


def test_tag_vocab_min_count_max_size_and_ties():
    lists = [["b", "a", "A "], ["a", "c"], ["b", "c"], ["d"], ["a"]]
    # counts per image: a=3, b=2, c=2, d=1 ("a" and "A " are one tag in one image)
    assert build_tag_vocab(lists, min_count=2) == ["a", "b", "c"]
    assert build_tag_vocab(lists, min_count=1, max_size=2) == ["a", "b"]
    assert build_tag_vocab(lists, min_count=4) == []


def test_vocab_encoding_ignores_unknown_names():
    vocab = Vocab(["x", "y", "z"])
    np.testing.assert_array_equal(vocab.encode(["z", "nope", "x"]), [1, 0, 1])
    np.testing.assert_array_equal(vocab.encode_many([["y"], []]), [[0, 1, 0], [0, 0, 0]])
    with pytest.raises(InputError, match="names must be unique: 'y' appears twice"):
        Vocab(["x", "y", "y"])


@pytest.mark.parametrize("kind", ["fifo", "dangling link", "folder"])
def test_a_labels_txt_that_is_not_a_file_is_named(tmp_path, kind):
    """It was skipped as if absent: the label order silently fell back to the sorted names."""
    import os

    path = make(tmp_path, [{"image": "a.jpg", "labels": ["dog"]}])
    labels = tmp_path / "labels.txt"
    if kind == "fifo":
        os.mkfifo(labels)
    elif kind == "folder":
        labels.mkdir()
    else:
        labels.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="labels.txt"):
        read_manifest(path)


def test_a_labels_txt_name_with_a_line_separator_is_refused(tmp_path):
    """splitlines() cut a name at U+0085 or U+2028 where the manifest reader did not."""
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["dog"]}])
    (tmp_path / "labels.txt").write_text("dog\r\ncat\u2028x\n")
    with pytest.raises(ManifestError, match=r"labels.txt:2: label 'cat.u2028x' holds a control"):
        read_manifest(path)


def test_json_problems_read_as_sentences(tmp_path):
    """'Unterminated string starting at at column 9', an integer's message cut mid-word at the
    advice to Python programmers, and 'byte 4823' without its line."""
    cases = [
        ('{"image": "a.jpg', "(Unterminated string starting at: column 11)"),
        ('{"image": "a.jpg", "labels": [], "n": ' + "9" * 5000 + "}", "value has 5000 digits)"),
    ]
    for line, says in cases:
        path = make(tmp_path, [{"image": "a.jpg", "labels": ["a"]}, line])
        with pytest.raises(ManifestError) as info:
            read_manifest(path)
        assert says in str(info.value) and "set_int_max_str_digits" not in str(info.value)
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"image": "a.jpg", "labels": ["a"]}\n{"image": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"is not UTF-8 text \(line 2, byte 47\)"):
        read_manifest(path)


def test_repeated_images_are_noted_with_their_lines(tmp_path):
    from m3trt.data.manifest import repeated_images

    rows = [
        {"image": "a.jpg", "labels": ["x"], "split": "train"},
        {"image": "b.jpg", "labels": ["x"], "split": "test"},
        {"image": "./a.jpg", "labels": ["x"], "split": "train"},
        {"image": "b.jpg", "labels": ["x"], "split": "train"},
    ]
    manifest = read_manifest(make(tmp_path, rows))
    note = repeated_images(manifest)
    assert "2 records name an image an earlier one names (line 3 repeats line 1)" in note
    assert "1 of them in another split (line 4: test and train)" in note
    assert repeated_images(read_manifest(make(tmp_path, rows[:2]))) is None


def test_a_line_past_the_limit_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    """The manifest was read whole and split (a 100 MB line: 0.9 GB); it is now read a line at a
    time, each at most MAX_LINE_BYTES."""
    import m3trt.data.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "MAX_LINE_BYTES", 64)
    line = json.dumps({"image": "a.jpg", "labels": ["x" * 80]})
    path = make(tmp_path, [{"image": "a.jpg", "labels": ["x"]}, line])
    with pytest.raises(ManifestError, match=r"m.*\.jsonl: line 2 is longer than 64 bytes"):
        read_manifest(path)


def test_records_resolve_their_paths_and_share_their_names(tmp_path):
    path = make(
        tmp_path, [{"image": "a.jpg", "labels": ["dog"]}, {"image": "b.jpg", "labels": ["dog"]}]
    )
    a, b = read_manifest(path).records
    assert a.path == tmp_path / "a.jpg" and a.labels[0] is b.labels[0]  # one copy of "dog"
