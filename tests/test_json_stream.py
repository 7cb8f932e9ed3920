"""scan_object_lists: the items of a JSON object's lists, streamed, equal to json.loads'."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from m3trt.data import json_stream
from m3trt.data.json_stream import scan_object_lists
from m3trt.data.safe_open import NotJSON
from m3trt.errors import InputError


def collect(path: Path, *keys: str) -> tuple[dict[str, list], dict[str, str]]:
    got: dict[str, list] = {key: [] for key in keys}

    def handler(key: str):
        def add(index: int, item: object) -> None:
            assert index == len(got[key])
            got[key].append(item)

        return add

    kinds = scan_object_lists(path, "test JSON", {key: handler(key) for key in keys})
    return got, kinds


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-(10**20), 10**20)
    if kind == 1:
        return rng.uniform(-1e6, 1e6)
    if kind == 2:
        return "".join(rng.choice('ab"\\\n\u00e9\u2028\U0001f600\udce9 ') for _ in range(9))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return 1e300 * rng.choice([1, -1])
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randrange(4))}


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_items_equal_json_loads_whatever_the_read_size(tmp_path, monkeypatch, chunk):
    """Items, numbers and escapes cut by a read are decoded whole (the read size is shrunk so
    that every item straddles reads)."""
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    rng = random.Random(chunk)
    document = {
        "info": {"year": 2017, "nested": [[1, 2], {"a": "]"}]},
        "images": [random_value(rng) for _ in range(60)],
        "empty": [],
        "annotations": [{"id": i, "v": random_value(rng)} for i in range(60)],
        "number": 12345678901234567890,
    }
    path = tmp_path / "doc.json"
    indent = 1 if chunk == 7 else None
    path.write_text("\ufeff" + json.dumps(document, indent=indent), encoding="utf-8")
    got, kinds = collect(path, "images", "annotations", "empty")
    expected = json.loads(path.read_text(encoding="utf-8-sig"))
    assert got == {key: expected[key] for key in got}
    assert kinds == {
        "info": "an object",
        "images": "a list",
        "empty": "a list",
        "annotations": "a list",
        "number": "a number or literal",
    }


@pytest.mark.parametrize("chunk", [5, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        '{"images": [1, 2,, 3]}',
        '{"images": [1, 2]\n, "x": [1,\n 2 3]}',
        '{"images": [{"a": 1 "b": 2}]}',
        '{"images": [1, 2] "x": 1}',
        '{"images": [1, 2]',
        '{"images": ["abc',
        '{"a": tru}',
        '{"a" 1}',
        '{"a": 1,}',
        "{1: 2}",
        '{"images": [1]}  x',
        '{"images": [1]} {}',
        "",
        "   \n ",
    ],
)
def test_malformed_json_is_named_with_json_loads_position(tmp_path, monkeypatch, text, chunk):
    monkeypatch.setattr(json_stream, "CHUNK", chunk)
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    with pytest.raises(NotJSON) as caught:
        collect(path, "images")
    message = str(caught.value)
    assert message.startswith(f"{path}: test JSON is not valid JSON (")
    where = f"line {reference.value.lineno} column {reference.value.colno})"
    assert message.endswith(where), (message, reference.value)


@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2, 3]", "the top level must be a JSON object, not a list"),
        ('"text"', "the top level must be a JSON object, not a string"),
        ("42", "the top level must be a JSON object, not a number or literal"),
        ("hello", "test JSON is not valid JSON (Expecting '{': line 1 column 1)"),
        ('{"images": [], "images": [1]}', 'key "images" appears twice'),
    ],
)
def test_structure_errors(tmp_path, text, says):
    path = tmp_path / "doc.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: .*{re.escape(says)}"):
        collect(path, "images")


def test_not_utf8(tmp_path, monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK", 4)
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"images": ["caf\xe9"]}')
    with pytest.raises(NotJSON, match=r"is not valid JSON \(not UTF-8\)$"):
        collect(path, "images")


def test_deep_nesting_is_refused_in_bounded_memory(tmp_path):
    """ijson's C backend took memory quadratic in the depth here (24 GB for 100,000 levels)."""
    path = tmp_path / "deep.json"
    path.write_text('{"images": [' + "[" * 200_000 + "]" * 200_000 + "]}", encoding="utf-8")
    with pytest.raises(NotJSON, match=r"images\[0\] is nested too deeply"):
        collect(path, "images")


def test_an_item_past_the_cap_is_refused_not_buffered(tmp_path, monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK", 16)
    monkeypatch.setattr(json_stream, "MAX_ITEM_CHARS", 1000)
    path = tmp_path / "doc.json"
    path.write_text('{"images": [1, "' + "x" * 5000 + '"]}', encoding="utf-8")
    with pytest.raises(InputError, match=r"images\[1\] in the test JSON is larger than"):
        collect(path, "images")
    path.write_text('{"images": [1, "' + "x" * 900 + '"]}', encoding="utf-8")
    assert collect(path, "images")[0]["images"][1] == "x" * 900


def test_a_handler_error_stops_the_scan(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"images": [1, 2, 3, 4]}', encoding="utf-8")
    seen = []

    def handler(index: int, item: object) -> None:
        seen.append(item)
        if index == 1:
            raise InputError("stop")

    with pytest.raises(InputError, match="stop"):
        scan_object_lists(path, "test JSON", {"images": handler})
    assert seen == [1, 2]


def test_an_integer_python_will_not_convert_is_named(tmp_path):
    """A 5000-digit integer raised a bare ValueError (exit 1), not the file's name."""
    path = tmp_path / "doc.json"
    path.write_text('{"images": [{"id": ' + "9" * 5000 + "}]}", encoding="utf-8")
    with pytest.raises(NotJSON, match=r"is not valid JSON \(images\[0\]: Exceeds the limit"):
        collect(path, "images")
