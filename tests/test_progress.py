"""Progress output shows data as written: paths and reasons are not parsed as Rich markup."""

from __future__ import annotations

import io

from rich.console import Console

from m3trt.progress import Reporter


def _reporter() -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    return Reporter(console=Console(file=out, width=200, color_system=None)), out


def test_log_keeps_square_brackets() -> None:
    reporter, out = _reporter()
    reporter.log("installs: pip install 'm3trt[gpu]' for photos/[bold]x.jpg")
    assert "pip install 'm3trt[gpu]' for photos/[bold]x.jpg" in out.getvalue()


def test_task_description_and_fields_keep_square_brackets() -> None:
    reporter, out = _reporter()
    with reporter.task("annotate [gpu]", 2) as bar:
        bar.advance(1)
        bar.advance(1, file="a[red]b.jpg")
    text = out.getvalue()
    assert "annotate [gpu]" in text
    assert "a[red]b.jpg" in text
