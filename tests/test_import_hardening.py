"""NUS-WIDE import and manifest hardening: lists read in bounded memory and stopped at the first
line past their count, NUL bytes and ``..`` in image entries, path separators in concept names,
names too long for the file system. Each case is one InputError naming the file (and line)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.data.importers import import_nuswide, nuswide
from m3trt.data.manifest import read_manifest, write_manifest
from m3trt.errors import InputError, ManifestError
from tests.test_importers import CONCEPTS, EXPECTED_NUS, make_nuswide


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def _run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def nus(tmp_path: Path) -> Path:
    return make_nuswide(tmp_path / "NUS-WIDE")


def _replace_in_lists(nus: Path, old: bytes, new: bytes, *names: str) -> None:
    for name in names:
        path = nus / "ImageList" / name
        path.write_bytes(path.read_bytes().replace(old, new))


# ------------------------------------------------------------- defect 1: bounded list reading


def test_an_over_long_label_file_stops_at_the_first_extra_line(nus: Path, tmp_path: Path) -> None:
    """Was a whole-file read and split (5 GB for 250 MiB) before the count was compared: now
    line 7 of a 6-image layout is the error, and what follows it is never read (a line with no
    end past it would otherwise be the error)."""
    path = nus / "Groundtruth/AllLabels/Labels_sky.txt"
    with open(path, "wb") as f:
        f.write(b"0\n" * 200_000)
        f.truncate(f.tell() + (8 << 20))  # sparse: 8 MiB of NUL bytes without a line end
    with pytest.raises(InputError) as caught:
        import_nuswide(nus, tmp_path / "out")
    assert str(caught.value).startswith(
        f"{path}:7: more lines than the 6 images in Imagelist.txt"
    ), caught.value
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64])
def test_label_columns_read_in_any_block_size(
    nus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Lines split across blocks, CRLF, stray spaces and trailing blank lines read as before."""
    monkeypatch.setattr(nuswide, "_BLOCK_BYTES", block)
    path = nus / "Groundtruth/AllLabels/Labels_beach.txt"
    path.write_bytes(b" 0\r\n0 \r\n0\r\n1\r\n\t1\r\n1\r\n\r\n  \n")
    import_nuswide(nus, tmp_path / "out")
    assert _rows(tmp_path / "out/manifest.jsonl") == EXPECTED_NUS


@pytest.mark.parametrize(
    "content, says",
    [
        (b"0\n0\n\n0\n1\n1\n1\n", ":3: expected 0 or 1, found ''"),  # a blank inside
        (b"0\n0\n0\n1\n1\n1\n\n\n1\n", ":7: expected 0 or 1, found ''"),
        (b"0\n0\n0\n1\n1\n1\n0", ":7: more lines than the 6 images"),  # no final line end
        (b"0\n0\n0\n1\n1\n1" + b" " * 5000, ":6: a line longer than 4,096 bytes"),
        (b"0\n0\n0\n1\n1\n1x\n", ":6: expected 0 or 1, found '1x'"),
        (b"0\n0\n0\n1\n1", ": has 5 lines but Imagelist.txt lists 6 images"),
    ],
)
def test_label_column_errors_name_the_line(
    nus: Path, tmp_path: Path, content: bytes, says: str
) -> None:
    path = nus / "Groundtruth/AllLabels/Labels_beach.txt"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        import_nuswide(nus, tmp_path / "out")
    assert str(caught.value).startswith(f"{path}{says}"), caught.value


def test_an_over_long_list_line_is_refused_before_it_is_read(nus: Path, tmp_path: Path) -> None:
    path = nus / "ImageList/Imagelist.txt"
    with open(path, "ab") as f:
        f.write(b"x" * (1 << 20))  # one line of a MiB: no path is that long
    with pytest.raises(InputError, match=r"Imagelist\.txt:7: a line longer than 65,536 bytes"):
        import_nuswide(nus, tmp_path / "out")


def test_an_image_listed_twice_names_both_lines(nus: Path, tmp_path: Path) -> None:
    path = nus / "ImageList/Imagelist.txt"
    path.write_bytes(path.read_bytes() + b"Flickr\\ACTOR\\0002_174174086.JPG\r\n")
    with pytest.raises(
        InputError, match=r"Imagelist\.txt:7: image '.*' is listed twice \(first on line 2\)"
    ):
        import_nuswide(nus, tmp_path / "out")


def test_lists_keep_their_old_reading_rules(nus: Path, tmp_path: Path) -> None:
    """A byte-order mark, blank lines inside split lists, trailing blank lines everywhere and
    tag-list blanks kept as columns, as the whole-file reader had them."""
    concepts = nus / "ConceptsList/Concepts81.txt"
    concepts.write_bytes(b"\xef\xbb\xbf" + concepts.read_bytes() + b"\r\n\r\n")
    train = nus / "ImageList/TrainImagelist.txt"
    train.write_bytes(b"\r\n" + train.read_bytes() + b"\r\n \r\n")
    images = nus / "ImageList/Imagelist.txt"
    images.write_bytes(b"\xef\xbb\xbf" + images.read_bytes() + b"\r\n\r\n")
    taglist = nus / "NUS_WID_Tags/TagList1k.txt"
    taglist.write_bytes(taglist.read_bytes() + b"\n\n\n")
    import_nuswide(nus, tmp_path / "out")
    assert _rows(tmp_path / "out/manifest.jsonl") == EXPECTED_NUS
    assert (tmp_path / "out/labels.txt").read_text() == "".join(f"{c}\n" for c in CONCEPTS)


def test_a_file_name_that_is_not_utf8_still_names_its_file(nus: Path, tmp_path: Path) -> None:
    _replace_in_lists(nus, b"0003_512.jpg", b"0003_\xff.jpg", "Imagelist.txt", "TrainImagelist.txt")
    folder = bytes(nus / "Flickr/actor")
    os.rename(folder + b"/0003_512.jpg", folder + b"/0003_\xff.jpg")
    summary = import_nuswide(nus, tmp_path / "out")
    assert summary.n_missing_images == 1  # the same one as before: the \xff file is found
    records = read_manifest(tmp_path / "out", allow_missing_images=True).records
    assert any(bytes(r.path).endswith(b"/0003_\xff.jpg") and r.path.is_file() for r in records)


def test_write_manifest_streams_its_rows(tmp_path: Path) -> None:
    """Written as the rows come now: the lines must still be whole, and a row that fails midway
    leaves neither a manifest nor a temp file."""
    rows = [{"image": f"{i}.jpg", "labels": ["a"]} for i in range(5000)]
    path = write_manifest(tmp_path / "m" / "manifest.jsonl", rows, ["a"])
    assert _rows(path) == rows

    def failing():
        yield rows[0]
        raise InputError("bad row")

    with pytest.raises(InputError, match="bad row"):
        write_manifest(tmp_path / "n" / "manifest.jsonl", failing(), ["a"])
    assert list((tmp_path / "n").iterdir()) == []


# -------------------------------------------------------------------- defect 2: NUL bytes


def test_a_nul_in_an_image_list_entry_is_refused(nus: Path, tmp_path: Path) -> None:
    """Was imported (exit 0) as "a\\u0000b.jpg", which eval and train then failed on."""
    _replace_in_lists(
        nus, b"0002_174174086.jpg", b"a\x00b.jpg", "Imagelist.txt", "TestImagelist.txt"
    )
    with pytest.raises(InputError, match=r"Imagelist\.txt:2: image .* holds a NUL byte"):
        import_nuswide(nus, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_nul_in_a_split_list_entry_is_refused(nus: Path, tmp_path: Path) -> None:
    _replace_in_lists(nus, b"0002_174174086.jpg", b"a\x00b.jpg", "TestImagelist.txt")
    with pytest.raises(InputError, match=r"TestImagelist\.txt:1: image .* holds a NUL byte"):
        import_nuswide(nus, tmp_path / "out")


def test_the_import_command_says_nul_in_one_line(nus: Path, tmp_path: Path) -> None:
    _replace_in_lists(
        nus, b"0002_174174086.jpg", b"a\x00b.jpg", "Imagelist.txt", "TestImagelist.txt"
    )
    code, output = _run("data", "import-nuswide", nus, "-o", tmp_path / "out")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "Imagelist.txt:2: image" in output and "NUL byte" in output, output


def test_a_nul_in_a_manifest_image_path_names_the_line(tmp_path: Path) -> None:
    """Was ValueError "embedded null byte" (exit 1) with no file or line."""
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        '{"image": "c.jpg", "labels": ["x"]}\n{"image": "a\\u0000b.jpg", "labels": ["x"]}\n'
    )
    with pytest.raises(ManifestError, match=r"manifest\.jsonl: line 2: \"image\" .* holds a NUL"):
        read_manifest(manifest)
    code, output = _run("train", manifest, "-o", tmp_path / "ckpt")
    assert code == 2 and "manifest.jsonl: line 2:" in output and "NUL" in output, output


# ------------------------------------------------------ defect 3: leaving the image folder


@pytest.mark.parametrize(
    "entry",
    [b"..\\..\\..\\etc\\0002.jpg", b"actor\\..\\..\\0002.jpg", b"actor/../../../0002.jpg"],
)
def test_a_dotdot_entry_in_the_image_list_is_refused(
    nus: Path, tmp_path: Path, entry: bytes
) -> None:
    """Was imported (exit 0) as ``Flickr/../../../etc/...``: a path outside the image folder."""
    _replace_in_lists(
        nus, b"actor\\0002_174174086.jpg", entry, "Imagelist.txt", "TestImagelist.txt"
    )
    path = nus / "ImageList/Imagelist.txt"
    line = "C:\\ImageData\\Flickr\\" + entry.decode()
    with pytest.raises(InputError) as caught:
        import_nuswide(nus, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{path}:2: image {line!r} has a '..' component"), message
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_dotdot_entry_in_a_split_list_is_refused(nus: Path, tmp_path: Path) -> None:
    path = nus / "ImageList/TrainImagelist.txt"
    path.write_bytes(path.read_bytes() + b"actor\\..\\..\\secret.jpg\r\n")
    with pytest.raises(InputError, match=r"TrainImagelist\.txt:5: image .* has a '\.\.' comp"):
        import_nuswide(nus, tmp_path / "out")


@pytest.mark.parametrize("concept", ["x/../../f", "x\\..\\..\\f", "sub/dir"])
def test_a_concept_with_a_path_separator_is_refused(
    nus: Path, tmp_path: Path, concept: str
) -> None:
    """``Labels_x/../../f.txt`` was opened: a path built outside the root."""
    path = nus / "ConceptsList/Concepts81.txt"
    path.write_text(f"animal\r\n{concept}\r\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        import_nuswide(nus, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{path}:2: concept {concept!r} holds a path separator"), message


# --------------------------------------------------------- names too long for the file system


def test_an_image_name_too_long_for_the_file_system_is_counted_missing(
    nus: Path, tmp_path: Path
) -> None:
    """pathlib's is_file() raises ENAMETOOLONG: the import and the manifest reader stopped
    with a traceback. Now the import counts it missing and the reader names the line."""
    long_name = b"n" * 300 + b".jpg"
    _replace_in_lists(nus, b"0002_174174086.jpg", long_name, "Imagelist.txt", "TestImagelist.txt")
    summary = import_nuswide(nus, tmp_path / "out")
    assert summary.n_missing_images == 2
    with pytest.raises(ManifestError, match=r"line 2: image cannot be read \(File name too long"):
        read_manifest(tmp_path / "out")


@pytest.mark.parametrize("kind", ["fifo", "file", "missing"])
def test_an_images_option_that_is_no_folder_is_named_as_what_it_is(
    nus: Path, tmp_path: Path, kind: str
) -> None:
    """A FIFO or a file given as --images was "image folder not found"."""
    images = tmp_path / "imgs"
    if kind == "fifo":
        os.mkfifo(images)
    elif kind == "file":
        images.write_text("x")
    code, output = _run("data", "import-nuswide", nus, "-o", tmp_path / "out", "--images", images)
    says = {"fifo": "is a FIFO (named pipe)", "file": "is a regular file, not a folder"}
    assert code == 2, output
    assert f"imgs: image folder {says.get(kind, 'not found')}; check the --images path" in output
