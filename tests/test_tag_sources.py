"""Tag sources for inference: embedded XMP/IPTC, ``.tags`` sidecars, JSONL manifests, factory."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from m3trt.errors import InputError, ManifestError
from m3trt.runtime import tag_sources
from m3trt.runtime.tag_sources import (
    ManifestTags,
    parse_xmp_subjects,
    read_embedded_keywords,
    read_sidecar_tags,
    tag_source,
)

# --- fixture builders ----------------------------------------------------------------------------


def xmp_packet(subjects: list[str], array: str = "Bag", prolog: str = "") -> bytes:
    """A minimal XMP packet written by hand, independent of m3trt's own writer."""
    items = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    return (
        f'{prolog}<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:subject><rdf:{array}>{items}</rdf:{array}></dc:subject>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def iptc_app13(keywords: list[bytes]) -> bytes:
    """An APP13 segment: Photoshop 3.0 / 8BIM resource 0x0404 holding IPTC 2:25 records."""
    records = b"".join(b"\x1c\x02\x19" + struct.pack(">H", len(k)) + k for k in keywords)
    if len(records) % 2:
        records += b"\x00"
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00"  # empty, padded Pascal name
    resource += struct.pack(">I", len(records)) + records
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_bytes(xmp: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    extra = {"xmp": xmp} if xmp is not None else {}
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG", **extra)
    return buffer.getvalue()


def write_jpeg(path: Path, xmp: bytes | None = None, iptc: list[bytes] | None = None) -> Path:
    data = jpeg_bytes(xmp)
    if iptc is not None:
        data = data[:2] + iptc_app13(iptc) + data[2:]  # right after SOI
    path.write_bytes(data)
    return path


def write_png(path: Path, xmp: bytes, *, compressed: bool = False) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=compressed)
    Image.new("RGB", (8, 8)).save(path, "PNG", pnginfo=info)
    return path


# --- parse_xmp_subjects --------------------------------------------------------------------------


def test_parse_xmp_subjects_keeps_order_and_raw_text():
    assert parse_xmp_subjects(xmp_packet(["Dog", " beach ", "R&amp;D"])) == [
        "Dog",
        " beach ",
        "R&D",
    ]


@pytest.mark.parametrize("array", ["Bag", "Seq", "Alt"])
def test_parse_xmp_subjects_accepts_any_rdf_array(array):
    assert parse_xmp_subjects(xmp_packet(["a", "b"], array=array)) == ["a", "b"]


def test_parse_xmp_subjects_reads_qualified_items_and_bare_rdf():
    packet = (
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag>'
        b'<rdf:li rdf:parseType="Resource"><rdf:value>cat</rdf:value></rdf:li><rdf:li/>'
        b"</rdf:Bag></dc:subject></rdf:Description></rdf:RDF>"
    )
    assert parse_xmp_subjects(packet) == ["cat", ""]


def test_parse_xmp_subjects_ignores_other_properties():
    packet = xmp_packet(["kept"]).replace(
        b"<dc:subject>",
        b'<lr:hierarchicalSubject xmlns:lr="http://ns.adobe.com/lightroom/1.0/">'
        b"<rdf:Bag><rdf:li>a|b</rdf:li></rdf:Bag></lr:hierarchicalSubject><dc:subject>",
    )
    assert parse_xmp_subjects(packet) == ["kept"]


def test_parse_xmp_subjects_without_subject_is_empty():
    assert parse_xmp_subjects(b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>') == []


def test_parse_xmp_subjects_rejects_malformed():
    with pytest.raises(ValueError, match="malformed"):
        parse_xmp_subjects(xmp_packet(["a"])[:-40])


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE x:xmpmeta [<!ENTITY a "boom">]>',
        '<!DOCTYPE x [<!ENTITY a "x"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
        '<!doctype x SYSTEM "file:///etc/passwd">',
    ],
)
def test_parse_xmp_subjects_refuses_doctype_and_entities(prolog):
    with pytest.raises(ValueError, match="DOCTYPE or ENTITY"):
        parse_xmp_subjects(xmp_packet(["&a;"], prolog=prolog))


def test_parse_xmp_subjects_refuses_oversized_and_utf16():
    with pytest.raises(ValueError, match="larger"):
        parse_xmp_subjects(b" " * (tag_sources.MAX_PACKET_BYTES + 1))
    with pytest.raises(ValueError, match="UTF-8"):
        parse_xmp_subjects(xmp_packet(["a"]).decode().encode("utf-16"))


# --- read_embedded_keywords ----------------------------------------------------------------------


def test_jpeg_xmp_keywords_are_normalised_and_deduplicated(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", xmp=xmp_packet(["Dog", "  Beach   Sunset ", "dog", " "]))
    assert read_embedded_keywords(path) == ["dog", "beach sunset"]


def test_jpeg_iptc_keywords_utf8_and_latin1(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", iptc=[b"Mountain", "café".encode(), b"Cr\xe8me"])
    assert read_embedded_keywords(path) == ["mountain", "café", "crème"]


def test_jpeg_single_iptc_keyword(tmp_path):
    assert read_embedded_keywords(write_jpeg(tmp_path / "a.jpg", iptc=[b"solo"])) == ["solo"]


def test_xmp_and_iptc_are_merged_xmp_first(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", xmp=xmp_packet(["Sky", "Sea"]), iptc=[b"sea", b"sand"])
    assert read_embedded_keywords(path) == ["sky", "sea", "sand"]


def test_xml_special_and_unicode_characters(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", xmp=xmp_packet(["R&amp;D", "&lt;b&gt;", "Café"]))
    assert read_embedded_keywords(path) == ["r&d", "<b>", "café"]


def test_png_itxt_xmp(tmp_path):
    path = write_png(tmp_path / "a.png", xmp_packet(["Forest"]))
    assert read_embedded_keywords(path) == ["forest"]


def test_png_compressed_itxt_xmp_found_through_pillow(tmp_path):
    path = write_png(tmp_path / "a.png", xmp_packet(["Forest", "Fog"]), compressed=True)
    assert b"x:xmpmeta" not in path.read_bytes()  # only Pillow's inflated copy can see it
    assert read_embedded_keywords(path) == ["forest", "fog"]


def test_webp_xmp(tmp_path):
    path = tmp_path / "a.webp"
    try:
        Image.new("RGB", (8, 8)).save(path, "WEBP", xmp=xmp_packet(["Desert"]))
    except (OSError, KeyError, ValueError) as exc:  # Pillow built without WebP support
        pytest.skip(f"cannot write WebP: {exc}")
    assert read_embedded_keywords(path) == ["desert"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF"])
def test_plain_images_have_no_keywords(tmp_path, fmt):
    path = tmp_path / f"plain.{fmt.lower()}"
    Image.new("RGB", (8, 8)).save(path, fmt)
    assert read_embedded_keywords(path) == []


def test_malformed_xmp_fails_the_image_like_a_bad_sidecar(tmp_path):
    bad = xmp_packet(["never"]).replace(b"</rdf:Description>", b"</rdf:Oops>")
    path = write_jpeg(tmp_path / "a.jpg", xmp=bad, iptc=[b"kept"])
    with pytest.raises(InputError, match=r"a\.jpg: bad XMP tags: malformed XMP"):
        read_embedded_keywords(path)


def test_entity_declaring_xmp_fails_the_image(tmp_path):
    packet = xmp_packet(["&a;", "plain"], prolog='<!DOCTYPE x:xmpmeta [<!ENTITY a "boom">]>')
    path = write_jpeg(tmp_path / "a.jpg", xmp=packet)
    with pytest.raises(InputError, match="bad XMP tags"):
        read_embedded_keywords(path)


def test_non_image_file_with_packet_still_read(tmp_path):
    path = tmp_path / "notes.bin"
    path.write_bytes(b"junk" * 100 + xmp_packet(["Found"]) + b"junk")
    assert read_embedded_keywords(path) == ["found"]


def test_unterminated_packet_in_large_file_is_cheap(tmp_path):
    path = tmp_path / "big.bin"
    marker = b"<x:xmpmeta " + b"a" * 1000
    path.write_bytes(marker * 6000)  # ~6 MiB: head and tail are both full of start markers
    started = time.perf_counter()
    assert read_embedded_keywords(path) == []
    assert time.perf_counter() - started < 5


def test_packet_in_tail_of_large_file_is_found(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x00" * (tag_sources.MAX_HEAD_BYTES + 1000) + xmp_packet(["Tail"]))
    assert read_embedded_keywords(path) == ["tail"]


def test_missing_or_unreadable_file_raises(tmp_path):
    with pytest.raises(InputError, match=r"missing\.jpg: cannot read image"):
        read_embedded_keywords(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="image is a folder"):
        read_embedded_keywords(tmp_path)


# --- read_sidecar_tags ---------------------------------------------------------------------------


def test_sidecar_tags_commas_newlines_and_crlf(tmp_path):
    image = tmp_path / "photo.jpg"
    (tmp_path / "photo.jpg.tags").write_bytes(
        "\ufeffDog, Cat\r\n  Big  Tree ,,\n\ndog\nCafé".encode()
    )
    assert read_sidecar_tags(image) == ["dog", "cat", "big tree", "café"]


def test_missing_sidecar_is_empty(tmp_path):
    assert read_sidecar_tags(tmp_path / "photo.jpg") == []


def test_sidecar_is_not_confused_with_other_extension(tmp_path):
    (tmp_path / "photo.png.tags").write_text("png only")
    assert read_sidecar_tags(tmp_path / "photo.jpg") == []
    assert read_sidecar_tags(tmp_path / "photo.png") == ["png only"]


def test_undecodable_sidecar_raises_naming_it(tmp_path):
    (tmp_path / "photo.jpg.tags").write_bytes(b"ok, \xff\xfe bad")
    with pytest.raises(InputError, match=r"photo\.jpg\.tags: tags file is not UTF-8"):
        read_sidecar_tags(tmp_path / "photo.jpg")


def test_sidecar_that_is_a_folder_raises(tmp_path):
    (tmp_path / "photo.jpg.tags").mkdir()
    with pytest.raises(InputError, match=r"photo\.jpg\.tags: tags file is a folder"):
        read_sidecar_tags(tmp_path / "photo.jpg")


# --- ManifestTags --------------------------------------------------------------------------------


def write_lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_manifest_relative_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    manifest = write_lines(
        tmp_path / "data" / "tags.jsonl",
        [
            {"path": "img/a.jpg", "tags": ["Dog", "dog", " Park "]},
            "",
            "   ",
            {"image": "b.jpg", "tags": []},
            {"path": str(tmp_path / "elsewhere" / "c.jpg"), "tags": ["abs"]},
        ],
    )
    monkeypatch.chdir(tmp_path)  # lookups must not depend on the working folder
    tags = ManifestTags.load(manifest)
    assert len(tags) == 3
    assert tags.tags_for(tmp_path / "data" / "img" / "a.jpg") == ["dog", "park"]
    assert tags.tags_for(Path("data/img/../img/a.jpg")) == ["dog", "park"]
    assert tags.tags_for(tmp_path / "data" / "b.jpg") == []
    assert tags.tags_for(tmp_path / "elsewhere" / "c.jpg") == ["abs"]
    assert tags.tags_for(tmp_path / "unlisted.jpg") == []


def test_manifest_falls_back_to_path_as_written(tmp_path, monkeypatch):
    manifest = write_lines(tmp_path / "m" / "tags.jsonl", [{"path": "x/a.jpg", "tags": ["t"]}])
    monkeypatch.chdir(tmp_path)
    # Resolves to tmp/x/a.jpg, not the listed tmp/m/x/a.jpg, but the string matches.
    assert ManifestTags.load(manifest).tags_for(Path("x/a.jpg")) == ["t"]


def test_manifest_lookup_returns_a_copy(tmp_path):
    manifest = write_lines(tmp_path / "tags.jsonl", [{"path": "a.jpg", "tags": ["t"]}])
    tags = ManifestTags.load(manifest)
    tags.tags_for(tmp_path / "a.jpg").append("mutated")
    assert tags.tags_for(tmp_path / "a.jpg") == ["t"]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"tags": ["a"]}', 'missing "path"'),
        ('{"path": "", "tags": []}', 'missing "path"'),
        ('{"path": "a.jpg", "tags": "a, b"}', "list of strings"),
        ('{"path": "a.jpg", "tags": ["a", 3]}', "list of strings"),
    ],
)
def test_bad_manifest_line_names_file_and_line(tmp_path, bad, problem):
    manifest = write_lines(tmp_path / "tags.jsonl", [{"path": "ok.jpg", "tags": []}, "", bad])
    with pytest.raises(ManifestError, match=problem) as info:
        ManifestTags.load(manifest)
    assert str(info.value).startswith(f"{manifest}:3: ")
    assert isinstance(info.value, InputError)


def test_duplicate_manifest_entry_is_refused(tmp_path):
    rows = [{"path": "a.jpg", "tags": ["x"]}, {"path": "./a.jpg", "tags": ["y"]}]
    manifest = write_lines(tmp_path / "tags.jsonl", rows)
    with pytest.raises(ManifestError, match=r":2: .*listed twice \(first on line 1\)"):
        ManifestTags.load(manifest)


def test_unreadable_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.jsonl: tags manifest not found"):
        ManifestTags.load(tmp_path / "nope.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"path": "\xe9.jpg", "tags": []}\n')
    with pytest.raises(ManifestError, match="not UTF-8"):
        ManifestTags.load(tmp_path / "latin.jsonl")


# --- tag_source ----------------------------------------------------------------------------------


def test_tag_source_kinds(tmp_path):
    image = write_jpeg(tmp_path / "a.jpg", xmp=xmp_packet(["Embedded"]))
    (tmp_path / "a.jpg.tags").write_text("Side")
    manifest = write_lines(tmp_path / "tags.jsonl", [{"path": "a.jpg", "tags": ["Listed"]}])
    assert tag_source("none")(image) == []
    assert tag_source("xmp")(image) == ["embedded"]
    assert tag_source("sidecar")(image) == ["side"]
    assert tag_source("manifest", manifest)(image) == ["listed"]
    assert set(tag_sources.TAG_SOURCES) == {"none", "xmp", "sidecar", "manifest"}


def test_tag_source_errors(tmp_path):
    with pytest.raises(InputError, match="--tags-manifest FILE"):
        tag_source("manifest")
    with pytest.raises(InputError, match="unknown tag source 'exif'"):
        tag_source("exif")
    with pytest.raises(ManifestError, match="missing.jsonl"):
        tag_source("manifest", tmp_path / "missing.jsonl")  # checked now, not per image


# --- hostile tag sources: never read what is not a regular file ------------------------------


def test_fifo_and_device_sidecars_fail_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg.tags")  # opening it for reading would block forever
    (tmp_path / "zero.jpg.tags").symlink_to("/dev/zero")  # reading it never ends
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"pipe\.jpg\.tags: tags file is a FIFO"):
        read_sidecar_tags(tmp_path / "pipe.jpg")
    with pytest.raises(InputError, match=r"zero\.jpg\.tags: tags file is a character device"):
        read_sidecar_tags(tmp_path / "zero.jpg")
    assert time.perf_counter() - started < 2


def test_oversized_sidecar_and_fifo_manifest_are_refused(tmp_path):
    (tmp_path / "big.jpg.tags").write_bytes(b"a," * tag_sources.MAX_SIDECAR_BYTES)
    with pytest.raises(InputError, match="limit is"):
        read_sidecar_tags(tmp_path / "big.jpg")
    os.mkfifo(tmp_path / "tags.jsonl")
    with pytest.raises(ManifestError, match=r"tags\.jsonl: tags manifest is a FIFO"):
        ManifestTags.load(tmp_path / "tags.jsonl")


@pytest.mark.parametrize(
    ("line", "problem"),
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"path": ' + "9" * 5000 + "}", "")],
)
def test_hostile_manifest_lines_give_one_line(tmp_path, line, problem):
    manifest = tmp_path / "tags.jsonl"
    manifest.write_text(line + "\n")
    with pytest.raises(ManifestError, match=rf"tags\.jsonl:1: .*{problem}") as info:
        ManifestTags.load(manifest)
    assert "\n" not in str(info.value)


def test_manifest_with_a_bom_and_a_line_separator_in_a_name(tmp_path):
    name = "a\u2028b.jpg"
    manifest = tmp_path / "tags.jsonl"
    row = json.dumps({"path": name, "tags": ["x"]}, ensure_ascii=False)
    manifest.write_bytes(b"\xef\xbb\xbf" + row.encode() + b"\n")
    assert ManifestTags.load(manifest).tags_for(tmp_path / name) == ["x"]


def test_xmp_tags_include_a_photo_librarys_sidecars_but_not_m3trts_own(tmp_path):
    """--tags xmp read only what was embedded: the keywords Lightroom (photo.xmp) or darktable
    (photo.jpg.xmp) keep beside an image were not read. m3trt's own --write-xmp sidecar holds its
    labels, not a person's words, and is skipped."""
    from m3trt.runtime.sidecars import render_xmp
    from m3trt.runtime.tag_sources import read_xmp_tags

    path = write_jpeg(tmp_path / "a.jpg", xmp=xmp_packet(["Sky"]))
    assert read_xmp_tags(path) == ["sky"]
    (tmp_path / "a.xmp").write_bytes(xmp_packet(["Beach", "sky"]))
    (tmp_path / "a.jpg.xmp").write_bytes(xmp_packet(["Dog"]))
    assert read_xmp_tags(path) == ["sky", "beach", "dog"]
    for scores in ([0.9], None):  # what --write-xmp writes, with and without scores
        (tmp_path / "a.xmp").write_text(render_xmp(["circle"], scores))
        assert read_xmp_tags(path) == ["sky", "dog"]
    os.unlink(tmp_path / "a.jpg.xmp")
    os.mkfifo(tmp_path / "a.jpg.xmp")
    with pytest.raises(InputError, match=r"a\.jpg\.xmp: XMP sidecar is a FIFO"):
        read_xmp_tags(path)
