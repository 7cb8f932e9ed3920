"""Where `m3trt infer` gets each image's noisy user tags: embedded metadata, sidecars, a manifest.

Every source returns tags already passed through `normalise_tag`, without empty strings or
duplicates, in first-seen order, so the caller can map them onto the vocabulary directly.
Every source reads regular files only (a FIFO or ``/dev/zero`` behind a name is refused at
once, never read), with a size cap, and a bad tag source fails that one image the same way
whatever the source: a sidecar that is not UTF-8 text, an XMP packet that is malformed or declares
a DOCTYPE/ENTITY, each give the image one error line. An image without any tags is not an error.
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from m3trt.data.manifest import normalise_tag, parse_json_object
from m3trt.data.safe_open import LineTooLong, bounded_lines, open_regular, read_regular
from m3trt.errors import InputError, ManifestError

TAG_SOURCES = ("none", "xmp", "sidecar", "manifest")
SIDECAR_SUFFIX = ".tags"

MAX_HEAD_BYTES = 4 << 20  # XMP/IPTC normally sit near the start of the file
MAX_TAIL_BYTES = 1 << 20  # ...but PNG and TIFF may put them after the pixel data
MAX_PACKET_BYTES = 1 << 20
MAX_PACKETS_TRIED = 8  # a hostile file full of start markers must not cost minutes
MAX_SIDECAR_BYTES = 1 << 20  # a tags file is a few words; more is not one
MAX_TAGS_MANIFEST_BYTES = 4 << 30
MAX_TAGS_LINE_BYTES = 1 << 20  # a path and its tags; a row of Flickr tags is a few hundred bytes

_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_DC_SUBJECT = "{http://purl.org/dc/elements/1.1/}subject"
_PACKET_MARKERS = ((b"<x:xmpmeta", b"</x:xmpmeta>"), (b"<rdf:RDF", b"</rdf:RDF>"))
_UNSAFE_DECL = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_SIDECAR_SEPARATORS = re.compile(r"[,\n]")

IPTC_KEYWORDS = (2, 25)
M3TRT_XMP_NAMESPACE = "https://m3trt.dev/ns/1.0/"  # sidecars.M3TRT_NS: m3trt's own sidecars


def clean_tags(tags: Iterable[str]) -> list[str]:
    """Normalise, drop empties and duplicates (first seen wins) so every source agrees."""
    return [t for t in dict.fromkeys(normalise_tag(t) for t in tags) if t]


# --- XMP -----------------------------------------------------------------------------------------


def parse_xmp_subjects(packet: bytes) -> list[str]:
    """The ``dc:subject`` items of one XMP document, raw and in document order.

    Raises ValueError for malformed XML, an oversized packet, a non-UTF-8 (NUL-containing) packet
    or a DOCTYPE/ENTITY declaration: refusing those keeps entity-expansion attacks out.
    """
    if len(packet) > MAX_PACKET_BYTES:
        raise ValueError(f"XMP packet is larger than {MAX_PACKET_BYTES} bytes")
    if b"\x00" in packet:
        raise ValueError("XMP packet is not UTF-8")
    if _UNSAFE_DECL.search(packet):
        raise ValueError("XMP packet declares a DOCTYPE or ENTITY")
    try:
        root = ET.fromstring(packet)
    except ET.ParseError as exc:
        raise ValueError(f"malformed XMP ({exc})") from None
    return [
        _li_text(item)
        for subject in root.iter(_DC_SUBJECT)
        for array in subject  # rdf:Bag, or rdf:Seq / rdf:Alt from lenient writers
        for item in array
        if item.tag == f"{_RDF}li"
    ]


def _li_text(item: ET.Element) -> str:
    """An array item's value; qualified items keep it in an ``rdf:value`` child."""
    value = item.find(f"{_RDF}value")
    return (value.text if value is not None else item.text) or ""


def _find_packets(data: bytes) -> Iterator[bytes]:
    """Candidate XMP packets in raw file bytes, whatever container wraps them."""
    tried = 0
    for start_tag, end_tag in _PACKET_MARKERS:
        start = data.find(start_tag)
        while start != -1 and tried < MAX_PACKETS_TRIED:
            tried += 1
            end = data.find(end_tag, start, start + MAX_PACKET_BYTES)
            if end != -1:
                yield data[start : end + len(end_tag)]
            start = data.find(start_tag, start + 1)


def _first_subjects(packets: Iterable[bytes]) -> list[str]:
    """Subjects of the first packet that parses. ValueError (the first packet's problem) when
    there are packets and none parses: bad XMP is a bad tag source, as a bad sidecar is."""
    first_problem: ValueError | None = None
    for packet in packets:
        try:
            return parse_xmp_subjects(packet)
        except ValueError as exc:
            first_problem = first_problem or exc
    if first_problem is not None:
        raise first_problem
    return []


# --- embedded metadata ---------------------------------------------------------------------------


def _read_bounded(f: BinaryIO, path: Path) -> list[bytes]:
    """The file's head and (if larger) its tail: all we ever scan, so memory stays bounded."""
    try:
        chunks = [f.read(MAX_HEAD_BYTES)]
        size = os.fstat(f.fileno()).st_size
        if size > MAX_HEAD_BYTES:
            f.seek(max(MAX_HEAD_BYTES, size - MAX_TAIL_BYTES))
            chunks.append(f.read(MAX_TAIL_BYTES))
        f.seek(0)
    except OSError as exc:
        raise InputError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return chunks


def _decode_iptc(value: bytes) -> str:
    """IPTC has no reliable charset marker in practice: UTF-8 first, latin-1 never fails."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _pillow_metadata(f: BinaryIO) -> tuple[list[str], bytes | None]:
    """IPTC keywords and Pillow's own XMP copy (it inflates compressed PNG iTXt); no pixels."""
    from PIL import Image, IptcImagePlugin

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                iptc = IptcImagePlugin.getiptcinfo(im) or {}
                xmp = im.info.get("xmp")
    except Exception:  # metadata is best effort: any parser failure means "no metadata"
        return [], None
    raw = iptc.get(IPTC_KEYWORDS, [])
    values = raw if isinstance(raw, list) else [raw]
    keywords = [_decode_iptc(v) for v in values if isinstance(v, bytes)]
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return keywords, xmp if isinstance(xmp, bytes) else None


def read_embedded_keywords(path: Path) -> list[str]:
    """Keywords stored in the image: XMP ``dc:subject`` first, then IPTC 2:25 Keywords.

    Raises InputError for an unreadable or non-regular file and for XMP that is present but
    malformed or hostile (DOCTYPE/ENTITY); IPTC that Pillow cannot parse counts as none.
    """
    path = Path(path)
    try:
        with open_regular(path, "image") as f:
            chunks = _read_bounded(f, path)
            iptc, pillow_xmp = _pillow_metadata(f)
    except FileNotFoundError:
        raise InputError(f"{path}: cannot read image (no such file)") from None
    packets = [p for chunk in chunks for p in _find_packets(chunk)]
    try:
        subjects = _first_subjects([*packets, *([pillow_xmp] if pillow_xmp else [])])
    except ValueError as exc:
        raise InputError(f"{path}: bad XMP tags: {exc}") from None
    return clean_tags([*subjects, *iptc])


def read_xmp_tags(path: Path) -> list[str]:
    """``--tags xmp``: the keywords embedded in the image, then those of its XMP sidecars, where
    photo libraries keep them (``photo.xmp``, Adobe's naming; ``photo.jpg.xmp``, darktable's and
    digiKam's). A sidecar m3trt wrote (``--write-xmp``) holds m3trt's own labels, not a person's
    words: it is skipped, so a second run never takes the first one's output as its input."""
    path = Path(path)
    tags = read_embedded_keywords(path)
    for sidecar in dict.fromkeys((path.with_suffix(".xmp"), path.with_name(path.name + ".xmp"))):
        if sidecar.name.lower() != path.name.lower():
            tags += _sidecar_subjects(sidecar)
    return clean_tags(tags)


def _sidecar_subjects(sidecar: Path) -> list[str]:
    try:
        data = read_regular(sidecar, "XMP sidecar", MAX_PACKET_BYTES)
    except FileNotFoundError:
        return []
    if M3TRT_XMP_NAMESPACE.encode() in data or b'x:xmptk="m3trt' in data:
        return []
    try:
        return parse_xmp_subjects(data)
    except ValueError as exc:
        raise InputError(f"{sidecar}: bad XMP tags: {exc}") from None


# --- sidecar text files --------------------------------------------------------------------------


def sidecar_tags_path(path: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.tags``; keeping the extension keeps photo.png apart."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar_tags(path: Path) -> list[str]:
    """Tags from ``<image>.tags`` (comma- and/or newline-separated UTF-8); none if it is absent."""
    sidecar = sidecar_tags_path(path)
    try:
        text = read_regular(sidecar, "tags file", MAX_SIDECAR_BYTES).decode("utf-8-sig")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise InputError(f"{sidecar}: tags file is not UTF-8 text (byte {exc.start})") from None
    return clean_tags(_SIDECAR_SEPARATORS.split(text))


# --- tags manifest -------------------------------------------------------------------------------


def _resolve(path: Path) -> Path:
    """Absolute, symlink-free key; falls back to a lexical one if resolving fails (loops)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _parse_tags_line(text: str) -> tuple[str, list[str]]:
    """One JSONL row -> (path as written, tags); ValueError says what is wrong with it."""
    row = parse_json_object(text)
    image = row.get("path", row.get("image"))
    if not isinstance(image, str) or not image.strip():
        raise ValueError('missing "path" (or "image"): the image file, relative to the manifest')
    if "\x00" in image:  # it crashed the run as "embedded null byte"
        raise ValueError(f"path {image!r} holds a NUL character, which no file path can hold")
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError('"tags" must be a list of strings')
    return image, clean_tags(tags)


def _manifest_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line, read one bounded line at a time: the file may be gigabytes
    (its cap), one line of it may not (a row is a path and its tags)."""
    try:
        handle = open_regular(file, "tags manifest", MAX_TAGS_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ManifestError(f"{file}: tags manifest not found") from None
    except InputError as exc:
        raise ManifestError(str(exc)) from None
    with handle:
        try:
            for number, raw in bounded_lines(handle, MAX_TAGS_LINE_BYTES):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise ManifestError(f"{file}:{number}: not UTF-8 text") from None
        except LineTooLong as exc:
            raise ManifestError(
                f"{file}:{exc.number}: a line longer than {MAX_TAGS_LINE_BYTES:,} bytes is not "
                "a row of tags"
            ) from None


class ManifestTags:
    """Tags per image from a JSONL manifest, looked up by resolved path (or the path as written)."""

    def __init__(self, file: Path, by_path: dict[Path, list[str]], by_text: dict[str, list[str]]):
        self.file = file
        self._by_path = by_path
        self._by_text = by_text

    @classmethod
    def load(cls, file: Path) -> ManifestTags:
        """Read the manifest; the first bad line raises ManifestError "FILE:LINE: problem"."""
        file = Path(file)
        by_path: dict[Path, list[str]] = {}
        by_text: dict[str, list[str]] = {}
        first_line: dict[Path, int] = {}
        for number, line in _manifest_lines(file):
            if not line.strip():
                continue
            try:
                image, tags = _parse_tags_line(line)
            except ValueError as exc:
                raise ManifestError(f"{file}:{number}: {exc}") from None
            key = _resolve(file.parent / image)
            if key in first_line:
                raise ManifestError(
                    f"{file}:{number}: {image!r} is listed twice (first on line {first_line[key]})"
                )
            first_line[key] = number
            by_path[key] = tags
            by_text.setdefault(str(Path(image)), tags)
        return cls(file, by_path, by_text)

    def __len__(self) -> int:
        return len(self._by_path)

    def tags_for(self, path: Path) -> list[str]:
        """Tags of one image; an image the manifest does not list has none."""
        tags = self._by_path.get(_resolve(Path(path)))
        if tags is None:
            tags = self._by_text.get(str(path), [])
        return list(tags)


# --- choosing a source ---------------------------------------------------------------------------


def _no_tags(path: Path) -> list[str]:
    """The "none" source: visual-only inference."""
    return []


def tag_source(kind: str, manifest: Path | None = None) -> Callable[[Path], list[str]]:
    """The per-image tag reader for ``--tags KIND``; a manifest is loaded (and checked) now."""
    if kind == "none":
        return _no_tags
    if kind == "xmp":
        return read_xmp_tags
    if kind == "sidecar":
        return read_sidecar_tags
    if kind == "manifest":
        if manifest is None:
            raise InputError("tag source 'manifest' needs a file: use --tags-manifest FILE")
        return ManifestTags.load(manifest).tags_for
    raise InputError(f"unknown tag source {kind!r}: use one of {', '.join(TAG_SOURCES)}")
