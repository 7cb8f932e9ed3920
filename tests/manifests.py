"""Manifests the tests derive from the tiny synthetic set."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path


def junk_manifest(
    tmp_path: Path,
    tiny_data: Path,
    breaks: Callable[[int, dict], bool],
    drop_splits: bool = False,
) -> Path:
    """A copy of the tiny manifest whose rows ``breaks(i, row)`` picks point at junk files
    (``drop_splits``: with no split fields, so every record is in no split)."""
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    junk = tmp_path / "junk"
    junk.mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        row["image"] = str(tiny_data.parent / row["image"])
        if drop_splits:
            row.pop("split", None)
        if breaks(i, row):
            bad = junk / f"{i}.jpg"
            bad.write_bytes(b"junk")
            row["image"] = str(bad)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copyfile(tiny_data.parent / "labels.txt", tmp_path / "labels.txt")
    return manifest
