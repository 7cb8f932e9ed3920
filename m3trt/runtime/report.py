"""``m3trt infer --report report.html``: a self-contained HTML contact sheet of the annotations.

One file a person opens in a browser: a header (bundle, precision, counts, throughput), the failed
files with their reasons, and a grid of thumbnails with their labels and scores. No external
resources and no JavaScript needed to read it (a tiny inline script only adds a filter box).

Memory stays flat for a million-image run: cards and failures are streamed to hidden temp files
beside the report as they arrive (only the first ``limit`` of each; the rest are only counted),
and ``close()`` assembles header + body + footer into another temp file that is swapped onto the
report with ``os.replace``, so an existing report is never half-overwritten. Everything
user-supplied is HTML-escaped. The output is a pure function of the inputs (no clock reads).
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from PIL import Image

from m3trt.atomic import publish, temp_sibling
from m3trt.errors import terminal_safe

CHUNK = 1 << 20  # copy the streamed body in 1 MiB chunks
JPEG_QUALITY = 80
SHOWN_KEYS = (  # summary keys with a slot in the header; the rest are listed as they come
    "bundle",
    "precision",
    "date",
    "annotated",
    "failed",
    "skipped",
    "images_per_s",
    "elapsed_s",
    "incomplete",
)
OPEN_FAILURES = 20  # the failure list starts expanded only when it is short

CSS = """
*{box-sizing:border-box}
[hidden]{display:none!important}
body{margin:0;padding:24px;background:#f6f7f9;color:#1f2328;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{margin-bottom:20px}
h1{margin:0 0 4px;font-size:22px;font-weight:600}
h2{font-size:16px;font-weight:600;margin:0}
.sub{margin:0 0 12px;color:#57606a}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 8px;padding:0;list-style:none}
.stats li{background:#fff;border:1px solid #d8dee4;border-radius:999px;padding:3px 12px}
.stats .bad{border-color:#f1aeb5;background:#fff5f5}
.stats a{color:inherit}
.note{margin:4px 0;color:#57606a}
.warn{margin:4px 0;color:#9a3412}
.extra{margin:8px 0 0;color:#57606a;font-size:12px}
.extra code{background:#eef1f4;border-radius:4px;padding:0 4px}
#q{margin-top:8px;padding:6px 10px;width:min(360px,100%);font:inherit;
border:1px solid #d0d7de;border-radius:6px;background:#fff}
.failures{background:#fff;border:1px solid #f1aeb5;border-radius:8px;padding:10px 14px;
margin-bottom:20px}
.failures summary{cursor:pointer}
.failures summary h2{display:inline}
.failures ul{margin:8px 0 0;padding-left:18px}
.failures li{margin:2px 0;word-break:break-all}
.failures .err{color:#9a3412}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.grid>.card{width:200px;margin:0 14px 14px 0}
@supports (display:grid){
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr))}
.grid>.card{width:auto;margin:0}}
.card{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:8px;
display:flex;flex-direction:column;gap:6px;box-shadow:0 1px 2px rgba(0,0,0,.04)}
.thumb{display:block;width:100%;height:auto;aspect-ratio:1/1;object-fit:contain;
background:#eef1f4;border-radius:4px}
.placeholder{background:#c9ced4}
.file{margin:0;font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.labels{margin:0;padding:0;list-style:none;display:flex;flex-direction:column;gap:3px}
.labels li{display:grid;grid-template-columns:1fr auto;column-gap:6px;font-size:13px}
.labels .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.labels .score{color:#57606a;font-variant-numeric:tabular-nums}
.bar{grid-column:1/-1;height:3px;background:#eef1f4;border-radius:2px;overflow:hidden}
.bar i{display:block;height:100%;background:#2f81f7}
.none{color:#8c959f;font-size:13px}
.meta{margin:0;color:#57606a;font-size:12px}
footer{margin-top:24px;color:#8c959f;font-size:12px}
"""

SCRIPT = """
const q=document.getElementById("q");q.hidden=false;
q.addEventListener("input",()=>{const t=q.value.trim().toLowerCase();
for(const c of document.querySelectorAll(".card"))c.hidden=t!==""&&!c.dataset.text.includes(t);});
"""


class ReportWriter:
    """Streams annotation cards and failures to disk; ``close(summary)`` publishes the page."""

    def __init__(
        self,
        path: Path,
        *,
        title: str = "m3trt annotations",
        limit: int = 1000,
        thumb_size: int = 160,
    ) -> None:
        if limit < 0:
            raise ValueError(f"report limit must be >= 0, got {limit}")
        if thumb_size < 1:
            raise ValueError(f"report thumb_size must be >= 1, got {thumb_size}")
        self.path = Path(path)
        self.title = title
        self.limit = limit
        self.thumb_size = thumb_size
        self.count = 0
        self.failure_count = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cards_path = temp_sibling(self.path, "part")
        self._fails_path = temp_sibling(self.path, "fail")
        self._cards = _open_temp(self._cards_path)
        try:
            self._fails = _open_temp(self._fails_path)
        except BaseException:
            self._cards.close()
            self._cards_path.unlink(missing_ok=True)
            raise

    def add(
        self,
        path: str,
        labels: Sequence[str],
        scores: Sequence[float],
        k: int,
        quantity: float,
        thumbnail: np.ndarray | None,
    ) -> None:
        """Record one annotated image; past ``limit`` it is only counted (no JPEG encode)."""
        self._check_open()
        if len(labels) != len(scores):
            raise ValueError(f"{path}: {len(labels)} labels but {len(scores)} scores")
        self.count += 1
        if self.count > self.limit:
            return
        thumb = _placeholder() if thumbnail is None else _img(thumbnail, self.thumb_size, path)
        self._cards.write(_card(path, labels, scores, k, quantity, thumb))

    def add_failure(self, path: str, error: str) -> None:
        """Record a file that could not be annotated; past ``limit`` it is only counted."""
        self._check_open()
        self.failure_count += 1
        if self.failure_count <= self.limit:
            self._fails.write(_failure(path, error))

    def close(self, summary: Mapping[str, Any]) -> Path:
        """Write header + streamed body + footer to a temp file and swap it onto ``path``."""
        self._check_open()
        self._closed = True
        final = temp_sibling(self.path, "tmp")
        try:
            with open(final, "w", encoding="utf-8", newline="\n") as out:
                self._assemble(out, summary)
                out.flush()
                os.fsync(out.fileno())
            publish(final, self.path)
        finally:
            final.unlink(missing_ok=True)
            self._discard_temps()
        return self.path

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish what was added so far, even when the run stops early (then say so)."""
        if self._closed:
            return
        if exc is None:
            self.close({})
            return
        try:
            self.close({"incomplete": _describe(exc)})
        except Exception:  # the run's own exception matters more than the report's
            self._discard_temps()

    def _assemble(self, out: IO[str], summary: Mapping[str, Any]) -> None:
        out.write(self._header(summary))
        shown_fails = min(self.failure_count, self.limit)
        if self.failure_count:
            out.write(_failures_open(shown_fails, self.failure_count))
            _copy(self._fails, out)
            out.write("</ul>\n</details>\n")
        out.write('<main class="grid">\n')
        _copy(self._cards, out)
        out.write("</main>\n")
        out.write(_footer())

    def _header(self, summary: Mapping[str, Any]) -> str:
        shown = min(self.count, self.limit)
        parts = [
            _page_open(self.title),
            "<header>\n",
            f"<h1>{_esc(self.title)}</h1>\n",
            _subtitle(summary),
            _stats(summary, self.count, self.failure_count),
            f'<p class="note">{_showing(shown, self.count)}</p>\n',
        ]
        if summary.get("incomplete"):
            parts.append(f'<p class="warn">Incomplete: {_esc(summary["incomplete"])}</p>\n')
        parts += [_extra(summary), '<input id="q" type="search" ']
        parts.append('placeholder="Filter by label or file name" aria-label="filter" hidden>\n')
        parts.append("</header>\n")
        return "".join(parts)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"report {self.path} is already closed")

    def _discard_temps(self) -> None:
        self._closed = True
        for handle, temp in ((self._cards, self._cards_path), (self._fails, self._fails_path)):
            temp.unlink(missing_ok=True)  # first: on a full disk, close() fails (its flush)
            with contextlib.suppress(OSError):  # the file is gone; its unwritten buffer too
                handle.close()


def write_report(
    path: Path,
    entries: Iterable[Mapping[str, Any]],
    failures: Iterable[tuple[str, str]],
    summary: Mapping[str, Any],
    **kw: Any,
) -> Path:
    """One-shot report: ``entries`` are ``ReportWriter.add`` keyword mappings (``thumbnail``
    optional), ``failures`` are ``(path, error)`` pairs; ``kw`` goes to ``ReportWriter``."""
    with ReportWriter(path, **kw) as writer:
        for entry in entries:
            writer.add(**{"thumbnail": None, **entry})
        for file, error in failures:
            writer.add_failure(file, error)
        return writer.close(summary)


def thumbnail_jpeg(image: np.ndarray, size: int) -> tuple[bytes, int, int]:
    """JPEG bytes, width and height of ``image`` scaled so its longer side is ``size``."""
    pil = _to_pil(image)
    scale = size / max(pil.size)
    shape = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    if shape != pil.size:
        pil = pil.resize(shape, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), pil.width, pil.height


def _img(image: np.ndarray, size: int, path: str) -> str:
    """An ``<img>`` with the thumbnail inlined as a base64 data: URI (no external files)."""
    data, width, height = thumbnail_jpeg(image, size)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    alt = _esc(_basename(path))
    return f'<img class="thumb" src="{uri}" width="{width}" height="{height}" alt="{alt}">\n'


def _placeholder() -> str:
    return '<div class="thumb placeholder" role="img" aria-label="no thumbnail"></div>\n'


def _to_pil(image: np.ndarray) -> Image.Image:
    """uint8 HxWx3 RGB (HxW, HxWx1 and HxWx4 tolerated) as an RGB Pillow image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if not ok or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"thumbnail must be a non-empty HxWx3 image, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _card(
    path: str,
    labels: Sequence[str],
    scores: Sequence[float],
    k: int,
    quantity: float,
    thumb: str,
) -> str:
    path = terminal_safe(path)  # a bidi override showed "evil\u202egpj.exe" as "evilexe.jpg"
    name = _basename(path)
    ranked = sorted(zip(labels, scores, strict=True), key=lambda ls: -_finite(ls[1]))
    text = " ".join([name, *(str(label) for label, _ in ranked)]).lower()
    items = "".join(_label_item(label, score) for label, score in ranked)
    body = f'<ol class="labels">\n{items}</ol>\n' if ranked else '<p class="none">no labels</p>\n'
    return (
        f'<article class="card" data-text="{_esc(text)}">\n{thumb}'
        f'<p class="file" title="{_esc(path)}">{_esc(name)}</p>\n{body}'
        f'<p class="meta">k = {_esc(k)} · quantity {_number(quantity, 2)}</p>\n</article>\n'
    )


def _label_item(label: str, score: float) -> str:
    width = min(max(_finite(score), 0.0), 1.0) * 100
    return (
        f'<li><span class="name" title="{_esc(label)}">{_esc(label)}</span>'
        f'<span class="score" title="{_number(score, 4)}">{_percent(score)}</span>'
        f'<span class="bar"><i style="width:{width:.1f}%"></i></span></li>\n'
    )


def _failure(path: str, error: str) -> str:
    path = terminal_safe(path)
    file = f'<span title="{_esc(path)}">{_esc(path)}</span>'
    return f'<li>{file}: <span class="err">{_esc(terminal_safe(error))}</span></li>\n'


def _failures_open(shown: int, total: int) -> str:
    is_open = " open" if shown <= OPEN_FAILURES else ""
    note = f"{total} failed" if shown == total else f"{total} failed (showing the first {shown})"
    return (
        f'<details class="failures" id="failures"{is_open}>\n'
        f"<summary><h2>{note}</h2></summary>\n<ul>\n"
    )


def _page_open(title: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="m3trt">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
    )


def _footer() -> str:
    return f"<footer>Generated by m3trt.</footer>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"


def _subtitle(summary: Mapping[str, Any]) -> str:
    parts = [
        f"{key} <b>{_esc(summary[key])}</b>"
        for key in ("bundle", "precision")
        if summary.get(key) is not None
    ]
    if summary.get("date") is not None:
        parts.append(_esc(summary["date"]))
    return f'<p class="sub">{" · ".join(parts)}</p>\n' if parts else ""


def _stats(summary: Mapping[str, Any], count: int, failures: int) -> str:
    """Counts from the summary when given (the pipeline knows best), else the writer's own."""
    failed = summary.get("failed", failures)
    items = [
        f"<li><b>{_esc(summary.get('annotated', count))}</b> annotated</li>",
        f'<li class="bad"><a href="#failures"><b>{_esc(failed)}</b> failed</a></li>'
        if failures
        else f"<li><b>{_esc(failed)}</b> failed</li>",
        _skipped(summary.get("skipped", 0)),
    ]
    if summary.get("images_per_s") is not None:
        items.append(f"<li><b>{_number(summary['images_per_s'], 1, True)}</b> images/s</li>")
    if summary.get("elapsed_s") is not None:
        items.append(f"<li><b>{_number(summary['elapsed_s'], 1, True)}</b> s elapsed</li>")
    return '<ul class="stats">\n' + "\n".join(items) + "\n</ul>\n"


def _skipped(count: Any) -> str:
    """A resumed run's page shows its own images; the earlier ones are only in the results."""
    if not count:
        return f"<li><b>{_esc(count)}</b> skipped</li>"
    return (
        f"<li><b>{_esc(count)}</b> annotated by an earlier run (--resume): in the results "
        "file, not on this page</li>"
    )


def _extra(summary: Mapping[str, Any]) -> str:
    """Summary keys the header has no slot for, so nothing passed in is silently dropped."""
    extra = [
        f"<code>{_esc(key)}</code> {_esc(value)}"
        for key, value in summary.items()
        if key not in SHOWN_KEYS
    ]
    return f'<p class="extra">{" · ".join(extra)}</p>\n' if extra else ""


def _showing(shown: int, total: int) -> str:
    noun = "image" if total == 1 else "images"
    if shown < total:
        return f"Showing the first {shown} of {total} {noun}."
    return f"{total} {noun}."


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    return f"stopped by {name}: {exc}" if str(exc) else f"stopped by {name}"


def _basename(path: str) -> str:
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name or str(path)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else -math.inf


def _percent(score: float) -> str:
    score = float(score)
    return f"{score * 100:.0f}%" if math.isfinite(score) else _esc(score)


def _number(value: Any, digits: int, grouped: bool = False) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    return f"{number:,.{digits}f}" if grouped else f"{number:.{digits}f}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _open_temp(path: Path) -> IO[str]:
    return open(path, "w+", encoding="utf-8", newline="\n")  # closed by the writer


def _copy(src: IO[str], dst: IO[str]) -> None:
    src.flush()
    src.seek(0)
    shutil.copyfileobj(src, dst, CHUNK)
