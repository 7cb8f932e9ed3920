"""Sidecars beside images: naming, XMP/TXT rendering, XMP round trip, atomic no-clobber writes."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from m3trt.errors import InputError
from m3trt.runtime.sidecars import (
    M3TRT_NS,
    render_txt,
    render_xmp,
    txt_sidecar_path,
    write_sidecar,
    xmp_sidecar_path,
)
from m3trt.runtime.tag_sources import parse_xmp_subjects, read_embedded_keywords

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
XMP = "{http://ns.adobe.com/xap/1.0/}"
SPECIAL = ["R&D", "<b>", "café", 'say "hi"', "a'b", "日本語", "  spaced  "]

# --- paths ---------------------------------------------------------------------------------------


def test_sidecar_paths():
    image = Path("/photos/2024/photo.jpg")
    assert xmp_sidecar_path(image) == Path("/photos/2024/photo.xmp")
    assert xmp_sidecar_path(image, keep_extension=True) == Path("/photos/2024/photo.jpg.xmp")
    assert txt_sidecar_path(image) == Path("/photos/2024/photo.txt")
    assert xmp_sidecar_path(Path("archive.v2.PNG")) == Path("archive.v2.xmp")
    assert txt_sidecar_path(Path("noext")) == Path("noext.txt")


@pytest.mark.parametrize(
    ("func", "name"),
    [(xmp_sidecar_path, "a.xmp"), (xmp_sidecar_path, "a.XMP"), (txt_sidecar_path, "a.txt")],
)
def test_sidecar_path_that_is_the_image_is_refused(func, name):
    with pytest.raises(InputError, match=rf"{name}: its sidecar would be the file itself"):
        func(Path(name))


# --- render_xmp ----------------------------------------------------------------------------------


def test_render_xmp_is_a_complete_valid_packet():
    text = render_xmp(["dog", "beach"], tool="m3trt 0.1")
    assert text.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>')
    assert text.rstrip().endswith('<?xpacket end="w"?>')
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    description = root.find(f"{RDF}RDF/{RDF}Description")
    assert description is not None
    assert description.get(f"{XMP}CreatorTool") == "m3trt 0.1"
    bag = description.find("{http://purl.org/dc/elements/1.1/}subject/" + f"{RDF}Bag")
    assert [li.text for li in bag] == ["dog", "beach"]
    assert "xmlns:m3trt" not in text  # no scores, no private namespace


def test_render_xmp_round_trips_special_characters():
    assert parse_xmp_subjects(render_xmp(SPECIAL).encode("utf-8")) == SPECIAL


def test_render_xmp_escapes_tool_attribute():
    text = render_xmp(["x"], tool='a"b<c>&\n')
    description = ET.fromstring(text.encode()).find(f"{RDF}RDF/{RDF}Description")
    assert description.get(f"{XMP}CreatorTool") == 'a"b<c>&\n'


def test_render_xmp_with_scores():
    labels = ["dog", "R&D"]
    text = render_xmp(labels, scores=[0.91234, 0.5])
    root = ET.fromstring(text.encode())
    items = root.findall(f".//{{{M3TRT_NS}}}scores/{RDF}Seq/{RDF}li")
    pairs = [
        (li.findtext(f"{{{M3TRT_NS}}}label"), li.findtext(f"{{{M3TRT_NS}}}score")) for li in items
    ]
    assert pairs == [("dog", "0.9123"), ("R&D", "0.5000")]
    assert parse_xmp_subjects(text.encode()) == labels  # scores never leak into subjects


def test_render_xmp_score_count_must_match():
    with pytest.raises(ValueError, match="1 scores for 2 labels"):
        render_xmp(["a", "b"], scores=[0.1])


def test_render_xmp_empty_and_invalid_characters_stay_valid():
    assert parse_xmp_subjects(render_xmp([]).encode()) == []
    text = render_xmp(["bell\x07", "line\r\nbreak", "lone\ud800"])
    assert parse_xmp_subjects(text.encode("utf-8")) == ["bell", "line\r\nbreak", "lone"]


def test_xmp_sidecar_file_round_trip(tmp_path):
    path = xmp_sidecar_path(tmp_path / "photo.jpg")
    assert write_sidecar(path, render_xmp(SPECIAL, scores=[0.5] * len(SPECIAL)), overwrite=False)
    assert parse_xmp_subjects(path.read_bytes()) == SPECIAL
    # The image reader also finds the packet in the sidecar (normalised, as for images).
    assert read_embedded_keywords(path)[:3] == ["r&d", "<b>", "café"]


# --- render_txt ----------------------------------------------------------------------------------


def test_render_txt():
    assert render_txt(["label1", "label2"]) == "label1, label2\n"
    assert render_txt(["café", "R&D"]) == "café, R&D\n"
    assert render_txt(["two\nlines"]) == "two lines\n"
    assert render_txt([]) == "\n"


# --- write_sidecar -------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_new_sidecar(tmp_path):
    path = tmp_path / "photo.txt"
    assert write_sidecar(path, "café, dog\n", overwrite=False) is True
    assert path.read_text(encoding="utf-8") == "café, dog\n"
    assert leftovers(tmp_path) == []


def test_existing_sidecar_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "photo.txt"
    path.write_text("mine\n")
    before = path.stat()
    assert write_sidecar(path, "new\n", overwrite=False) is False
    assert path.read_text() == "mine\n"
    assert path.stat().st_ino == before.st_ino
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert write_sidecar(path, "new\n", overwrite=True) is True
    assert path.read_text() == "new\n"
    assert leftovers(tmp_path) == []


def test_new_sidecar_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "photo.xmp"
        write_sidecar(path, "x", overwrite=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_at_destination_is_not_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    link = tmp_path / "photo.txt"
    link.symlink_to(target)
    assert write_sidecar(link, "labels\n", overwrite=False) is False
    assert link.is_symlink()
    assert write_sidecar(link, "labels\n", overwrite=True) is True
    assert not link.is_symlink()
    assert link.read_text() == "labels\n"
    assert target.read_text() == "precious\n"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_dangling_symlink_counts_as_existing(tmp_path):
    link = tmp_path / "photo.txt"
    link.symlink_to(tmp_path / "nowhere")
    assert write_sidecar(link, "x", overwrite=False) is False
    assert not (tmp_path / "nowhere").exists()


def test_folder_that_is_not_a_folder_raises(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "photo.xmp"
    with pytest.raises(InputError, match=rf"{path}: cannot write sidecar"):
        write_sidecar(path, "x", overwrite=True)
    with pytest.raises(InputError, match="cannot write sidecar"):
        write_sidecar(tmp_path / "missing" / "photo.xmp", "x", overwrite=False)


def test_destination_folder_in_the_way_raises_and_cleans_up(tmp_path):
    (tmp_path / "photo.xmp").mkdir()
    with pytest.raises(InputError, match=r"photo\.xmp: cannot write sidecar"):
        write_sidecar(tmp_path / "photo.xmp", "x", overwrite=True)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_folder_raises(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match=r"photo\.xmp: cannot write sidecar"):
            write_sidecar(folder / "photo.xmp", "x", overwrite=False)
    finally:
        folder.chmod(0o700)


def test_permission_denied_raises_naming_path(tmp_path, monkeypatch):
    """The same check as above, but it also runs as root: os.open is refused in tmp_path."""
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InputError, match=r"photo\.xmp: cannot write sidecar \(Permission denied"):
        write_sidecar(tmp_path / "photo.xmp", "x", overwrite=True)


def test_failed_write_leaves_old_sidecar_whole(tmp_path, monkeypatch):
    path = tmp_path / "photo.xmp"
    path.write_text("old\n")

    def crash(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(InputError, match=r"photo\.xmp: cannot write sidecar \(Input/output"):
        write_sidecar(path, "new\n", overwrite=True)
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []
