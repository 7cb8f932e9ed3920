"""The HTML contact sheet: a card per shown image, escaping, limits, thumbnails, atomic publish."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3trt.runtime.report import ReportWriter, write_report

SUMMARY = {
    "bundle": "demo.m3",
    "precision": "fp16",
    "annotated": 2,
    "failed": 1,
    "skipped": 0,
    "images_per_s": 1234.5,
    "elapsed_s": 3.2,
}
XSS = "<script>alert(1)</script>"
VOID = {"meta", "img", "input", "br", "hr", "link", "source", "wbr"}


class Page(HTMLParser):
    """Collects cards, image sources and text, and checks that every tag is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.cards = 0
        self.images: list[str] = []
        self.placeholders = 0
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self.tags.append((tag, attributes))
        self.cards += "card" in classes
        self.placeholders += "placeholder" in classes
        if tag == "img":
            self.images.append(attributes["src"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> tuple[Page, str]:
    source = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(source)
    page.close()
    assert page.problems == []
    assert page.stack == []
    return page, source


def image(seed: int = 0, shape: tuple[int, int] = (224, 224)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def fill(writer: ReportWriter, n: int) -> None:
    for i in range(n):
        writer.add(f"/data/img_{i}.jpg", ["cat", "dog"], [0.25, 0.9], 2, 1.6, image(i))


def test_cards_labels_scores_and_header(tmp_path):
    out = tmp_path / "report.html"
    with ReportWriter(out) as writer:
        writer.add("/data/a/cat.jpg", ["tree", "cat"], [0.412, 0.976], 2, 2.37, image(0))
        writer.add("/data/b/dog.jpg", [], [], 0, 0.0, None)
        writer.add_failure("/data/c/bad.jpg", "cannot identify image file")
        writer.close(SUMMARY)
    page, source = parse(out)
    text = " ".join(page.text)
    assert page.cards == 2
    assert page.placeholders == 1
    assert len(page.images) == 1
    assert source.index(">cat<") < source.index(">tree<")  # score order, not input order
    assert "98%" in text and "41%" in text
    assert 'title="0.9760"' in source
    assert "quantity 2.37" in text and "k = 2" in text
    assert 'title="/data/a/cat.jpg"' in source and ">cat.jpg<" in source
    assert "no labels" in text
    for needle in ("demo.m3", "fp16", "1,234.5", "images/s", "annotated", "skipped"):
        assert needle in text
    assert "/data/c/bad.jpg" in text and "cannot identify image file" in text
    assert "grid-template-columns:repeat(auto-fill,minmax(180px,1fr))" in source
    assert not re.search(r"""(?:src|href)=["']?(?!data:|#)[a-z]+:""", source)  # no external refs


def test_limit_counts_the_rest(tmp_path):
    out = tmp_path / "report.html"
    with ReportWriter(out, limit=3) as writer:
        fill(writer, 5)
        for i in range(4):
            writer.add_failure(f"/bad/{i}.jpg", "broken")
        writer.close({})
    page, source = parse(out)
    assert page.cards == 3
    assert "3 of 5" in " ".join(page.text)
    assert source.count("/bad/") == 2 * 3  # shown in the text and in the title
    assert "4 failed (showing the first 3)" in source
    assert writer.count == 5 and writer.failure_count == 4


def test_user_text_is_escaped(tmp_path):
    out = tmp_path / "report.html"
    with ReportWriter(out, title=XSS) as writer:
        writer.add(f"/x/{XSS}.jpg", [XSS, 'a"b'], [0.9, 0.1], 1, 1.0, None)
        writer.add_failure(XSS, XSS)
        writer.close({"bundle": XSS, "precision": XSS, "note": XSS})
    page, source = parse(out)
    assert "<script>alert" not in source
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in source
    assert "a&quot;b" in source
    assert [tag for tag, _ in page.tags].count("script") == 1  # only the page's own filter
    assert XSS in " ".join(page.text)  # a reader sees the text as typed


def test_thumbnails_are_inline_jpegs_of_thumb_size(tmp_path):
    out = tmp_path / "report.html"
    with ReportWriter(out, thumb_size=96) as writer:
        writer.add("/a.jpg", ["x"], [0.5], 1, 1.0, image(0))
        writer.add("/b.jpg", ["x"], [0.5], 1, 1.0, image(1, (64, 128)))
        writer.close({})
    page, _ = parse(out)
    sizes = []
    for src in page.images:
        prefix = "data:image/jpeg;base64,"
        assert src.startswith(prefix)
        decoded = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
        assert decoded.format == "JPEG" and decoded.mode == "RGB"
        sizes.append(decoded.size)
    assert sizes == [(96, 96), (96, 48)]  # longer side = thumb_size, aspect kept


def test_bad_inputs_are_rejected(tmp_path):
    with ReportWriter(tmp_path / "r.html") as writer:
        with pytest.raises(ValueError, match="labels"):
            writer.add("/a.jpg", ["x", "y"], [0.5], 1, 1.0, None)
        with pytest.raises(ValueError, match="uint8"):
            writer.add("/a.jpg", ["x"], [0.5], 1, 1.0, np.zeros((8, 8, 3), np.float32))
        writer.close({})
    with pytest.raises(RuntimeError, match="closed"):
        writer.add("/a.jpg", [], [], 0, 0.0, None)


def test_existing_report_replaced_only_at_close_and_no_temps_left(tmp_path):
    out = tmp_path / "report.html"
    out.write_text("old report", encoding="utf-8")
    writer = ReportWriter(out, limit=2)
    fill(writer, 3)
    writer.add_failure("/bad.jpg", "nope")
    assert out.read_text(encoding="utf-8") == "old report"
    assert len(list(tmp_path.iterdir())) > 1  # the streamed body lives beside it meanwhile
    assert writer.close(SUMMARY) == out
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_exception_still_publishes_what_was_added(tmp_path):
    out = tmp_path / "report.html"
    with pytest.raises(KeyError), ReportWriter(out) as writer:
        fill(writer, 2)
        raise KeyError("boom")
    page, source = parse(out)
    assert page.cards == 2
    assert "Incomplete: stopped by KeyError" in source
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_output_is_deterministic(tmp_path):
    entries = [
        {"path": f"/d/{i}.png", "labels": ["a", "b"], "scores": [0.3, 0.6], "k": 1,
         "quantity": 1.2, "thumbnail": image(i)}
        for i in range(3)
    ]  # fmt: skip
    failures = [("/d/bad.png", "truncated file")]
    first = write_report(tmp_path / "one.html", entries, failures, SUMMARY, limit=2)
    second = write_report(tmp_path / "two.html", entries, failures, SUMMARY, limit=2)
    assert first.read_bytes() == second.read_bytes()
    page, _ = parse(first)
    assert page.cards == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.html", "two.html"]


def test_a_resumed_runs_page_says_where_the_earlier_images_are(tmp_path):
    """It said "240 skipped" of the images an earlier run annotated: they are in the results
    file, not on the page, which the page now says."""
    entry = {"path": "a.jpg", "labels": ["x"], "scores": [0.9], "k": 1, "quantity": 1.0}
    page = write_report(tmp_path / "r.html", [entry], [], {**SUMMARY, "skipped": 240})
    text = page.read_text(encoding="utf-8")
    assert "<b>240</b> annotated by an earlier run (--resume): in the results file" in text
    fresh = write_report(tmp_path / "f.html", [entry], [], SUMMARY).read_text(encoding="utf-8")
    assert "<b>0</b> skipped" in fresh and "earlier run" not in fresh


def test_names_that_would_reorder_or_recolour_are_shown_escaped(tmp_path):
    """A bidi override showed 'evil\\u202egpj.exe.jpg' as 'evilgpj.exe...' reversed (a .exe
    look-alike); control characters went into the page as they were."""
    names = ["evil\u202egpj.exe.jpg", "\x1b[31mred.jpg"]
    entries = [
        {"path": n, "labels": ["x"], "scores": [0.9], "k": 1, "quantity": 1.0} for n in names
    ]
    text = write_report(tmp_path / "r.html", entries, [(names[0], "bad\u202e")], SUMMARY)
    page = text.read_text(encoding="utf-8")
    assert "\u202e" not in page and "\x1b" not in page
    assert "evil\\u202egpj.exe.jpg" in page and "\\x1b[31mred.jpg" in page
