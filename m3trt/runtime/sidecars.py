"""Annotations written beside the image, in the formats photo and dataset tools already read.

XMP sidecars carry the labels as ``dc:subject`` keywords (what photo managers show as tags) and
the scores in a private namespace that other readers ignore; ``.txt`` sidecars carry one
comma-separated line, as captioning and dataset tools expect. Writes are atomic and never
clobber an existing file unless asked, nor write through a symlink.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from m3trt.atomic import write_text
from m3trt.errors import InputError

M3TRT_NS = "https://m3trt.dev/ns/1.0/"  # tag_sources skips sidecars holding it

_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_XPACKET_END = '<?xpacket end="w"?>'
# Characters XML 1.0 cannot carry at all (plus lone surrogates, which UTF-8 cannot encode).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# --- paths ---------------------------------------------------------------------------------------


def _beside(image: Path, sidecar: Path) -> Path:
    """Refuse a sidecar that would be the image itself (``notes.txt``), even case-insensitively."""
    if sidecar.name.lower() == image.name.lower():
        raise InputError(f"{image}: its sidecar would be the file itself; rename the image")
    return sidecar


def xmp_sidecar_path(image: Path, *, keep_extension: bool = False) -> Path:
    """``photo.jpg`` -> ``photo.xmp`` (Adobe's rule); ``keep_extension`` -> ``photo.jpg.xmp``.

    darktable and digiKam default to ``photo.jpg.xmp``, which also keeps photo.jpg and photo.png
    apart; Adobe's ``photo.xmp`` is the default because the most tools recognise it.
    """
    image = Path(image)
    name = image.name + ".xmp" if keep_extension else image.with_suffix(".xmp").name
    return _beside(image, image.with_name(name))


def txt_sidecar_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.txt``, the caption/tag file dataset tools pair with an image."""
    image = Path(image)
    return _beside(image, image.with_suffix(".txt"))


# --- rendering -----------------------------------------------------------------------------------


def _xml_text(value: str) -> str:
    """Escape for element content; drop characters XML cannot hold so the file stays valid."""
    return escape(_NOT_XML.sub("", value)).replace("\r", "&#13;")


def _xml_attr(value: str) -> str:
    """Escape for a double-quoted attribute, keeping whitespace that parsers would normalise."""
    return _xml_text(value).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")


def _bag(labels: Sequence[str], indent: str) -> list[str]:
    items = [f"{indent} <rdf:li>{_xml_text(label)}</rdf:li>" for label in labels]
    return [f"{indent}<rdf:Bag>", *items, f"{indent}</rdf:Bag>"]


def _scores_seq(labels: Sequence[str], scores: Sequence[float], indent: str) -> list[str]:
    """Scores as an ordered array of {label, score} structs in m3trt's own namespace."""
    items = [
        f'{indent}  <rdf:li rdf:parseType="Resource">'
        f"<m3trt:label>{_xml_text(label)}</m3trt:label>"
        f"<m3trt:score>{float(score):.4f}</m3trt:score></rdf:li>"
        for label, score in zip(labels, scores, strict=True)
    ]
    return [
        f"{indent}<m3trt:scores>",
        f"{indent} <rdf:Seq>",
        *items,
        f"{indent} </rdf:Seq>",
        f"{indent}</m3trt:scores>",
    ]


def render_xmp(
    labels: Sequence[str], scores: Sequence[float] | None = None, tool: str = "m3trt"
) -> str:
    """A complete XMP sidecar: labels as ``dc:subject`` keywords in order, optional scores."""
    if scores is not None and len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    namespaces = [
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"',
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"',
    ]
    if scores is not None:
        namespaces.append(f'    xmlns:m3trt="{M3TRT_NS}"')
    lines = [
        _XPACKET_BEGIN,
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="{_xml_attr(tool)}">',
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">',
        '  <rdf:Description rdf:about=""',
        *namespaces,
        f'    xmp:CreatorTool="{_xml_attr(tool)}">',
        "   <dc:subject>",
        *_bag(labels, "    "),
        "   </dc:subject>",
        *(_scores_seq(labels, scores, "   ") if scores is not None else []),
        "  </rdf:Description>",
        " </rdf:RDF>",
        "</x:xmpmeta>",
        _XPACKET_END,
    ]
    return "\n".join(lines) + "\n"


def render_txt(labels: Sequence[str]) -> str:
    """``"label1, label2\\n"``: one line, so line breaks inside a label become spaces."""
    return ", ".join(" ".join(label.split()) for label in labels) + "\n"


# --- writing -------------------------------------------------------------------------------------


def write_sidecar(path: Path, text: str, *, overwrite: bool) -> bool:
    """Write ``text`` atomically; False (file untouched) if something exists and not overwrite."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        return False
    try:
        return write_text(path, text, overwrite=overwrite)
    except OSError as exc:
        raise InputError(f"{path}: cannot write sidecar ({exc.strerror or exc})") from None
