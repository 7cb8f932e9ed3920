"""Which bundle, and which options, wrote a results file, so that ``--resume`` never mixes two
kinds of rows.

A row names its file and labels, not the model or the rule that gave them: resuming ``r.jsonl``
with another bundle appended the second model's rows to the first one's, and resuming a
``--top-k 1`` run with ``--threshold 0`` gave one label to some rows and 14 to the rest, both
silently. Each run notes the bundle it used (the SHA-256 of its ``bundle.json``, which holds
every artifact's hash) and the options that decide a row's labels (``--top-k``, ``--threshold``,
``--tags``) in a hidden file beside the results, ``.r.jsonl.run.json``, written under the
output's lock; ``--resume`` with another bundle or other such options is refused. Results
written before a note existed, or before it held the options, resume as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from m3trt.atomic import write_text
from m3trt.data.safe_open import read_regular
from m3trt.errors import InputError
from m3trt.runtime.bundle import BUNDLE_FILE, MAX_MANIFEST_BYTES
from m3trt.runtime.outputs import named_entry

MARKER = "m3trt_run"
MAX_BYTES = 1 << 16


def record_path(output: Path) -> Path:
    """``out/r.jsonl`` -> ``out/.r.jsonl.run.json``; for a link, beside the file it names (as
    its lock is), so that resuming through the link finds the file's record."""
    named = named_entry(output)
    return named.with_name(f".{named.name}.run.json")


def identity(bundle: Path) -> dict[str, Any]:
    """What the record holds: the bundle's name and the hash of its ``bundle.json``."""
    data = read_regular(bundle / BUNDLE_FILE, "bundle manifest", MAX_MANIFEST_BYTES)
    return {MARKER: 1, "bundle": bundle.name, "bundle_sha256": hashlib.sha256(data).hexdigest()}


def _read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``; None when there is none, or the file there is not one (then it is
    left alone: it is not m3trt's)."""
    try:
        data = json.loads(read_regular(path, "run record", MAX_BYTES))
    except (FileNotFoundError, InputError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get(MARKER) == 1 else None


def spell(options: dict[str, Any]) -> str:
    """Row options as the command line gives them: ``--top-k 3 --tags xmp``."""
    words = [
        f"--{name.replace('_', '-')} {value}"
        for name, value in options.items()
        if value is not None and not (name == "tags" and value == "none")
    ]
    return " ".join(words) or "no --top-k, --threshold or --tags"


def _skip() -> None:
    return None


def check_run(
    output: Path, bundle: Path, options: dict[str, Any], *, resume: bool
) -> Callable[[], None]:
    """Refuse a ``resume`` of rows another bundle or other row ``options`` (``top_k``,
    ``threshold``, ``tags``) wrote. Returns what notes this run: call it once the results file
    is this run's (emptied by ``--overwrite``, or opened to resume), since a record written
    before that, by a run then stopped, described rows it never wrote. Call under the
    output's lock."""
    path = record_path(output)
    try:
        now = {**identity(bundle), "options": options}
    except (FileNotFoundError, InputError):  # no bundle folder (an API caller's own): no note
        return _skip
    then = _read(path)

    def note() -> None:
        write_text(path, json.dumps(now) + "\n")

    if resume and then is not None and output.exists():
        if then.get("bundle_sha256") != now["bundle_sha256"]:
            raise InputError(
                f"{output}: its rows came from bundle {then.get('bundle')!s} "
                f"(bundle.json {str(then.get('bundle_sha256'))[:12]}), this run's is "
                f"{now['bundle']} ({now['bundle_sha256'][:12]}): resume it with that bundle, "
                "or start again with --overwrite"
            )
        before = then.get("options")
        if isinstance(before, dict) and before != options:
            raise InputError(
                f"{output}: its rows were written with {spell(before)}, this run has "
                f"{spell(options)}: resume it with the same options, or start again with "
                "--overwrite"
            )
        return note if before is None else _skip  # an older record: note the options now
    if then is None and os.path.lexists(path):  # a file of that name m3trt did not write
        return _skip
    return note
