"""Result files of ``m3trt infer``: JSONL (default) or CSV, plus ``<stem>.errors.jsonl``.

Lines are appended and flushed once per batch, so after Ctrl-C or a kill the file holds every
finished batch and at most one torn last line. ``--resume`` cuts that torn line off and reads the
paths already written, so the run continues without duplicates or gaps. An existing file is never
replaced without ``--overwrite``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from m3trt.errors import InputError

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("path", "labels", "scores", "k", "quantity")
LIST_SEPARATOR = "|"


def errors_path(output: Path) -> Path:
    """``results.jsonl`` -> ``results.errors.jsonl`` (DESIGN §5)."""
    return output.with_name(f"{output.stem}.errors.jsonl")


def format_for(output: Path, fmt: str | None) -> str:
    """``--format``, else the output's suffix, else JSONL."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"--format {fmt!r}: use jsonl or csv")
        return fmt
    return "csv" if output.suffix.lower() == ".csv" else "jsonl"


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write interrupted mid-line); returns bytes cut."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def _jsonl_paths(path: Path) -> Iterable[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)["path"]
            except (ValueError, KeyError, TypeError):
                raise InputError(
                    f"{path}:{number}: not a line m3trt wrote (no JSON object with a path); "
                    "cannot resume from it: move it away or use --overwrite"
                ) from None


def _csv_paths(path: Path) -> Iterable[str]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        if tuple(header) != CSV_COLUMNS:
            raise InputError(
                f"{path}: not an m3trt CSV (header {header!r}); move it away or use --overwrite"
            )
        for row in reader:
            if row:
                yield row[0]


def done_paths(output: Path, fmt: str) -> set[str]:
    """Paths already in the results and error files (after repairing torn tails)."""
    done: set[str] = set()
    if output.exists():
        repair_torn_tail(output)
        done.update(_csv_paths(output) if fmt == "csv" else _jsonl_paths(output))
    errors = errors_path(output)
    if errors.exists():
        repair_torn_tail(errors)
        done.update(_jsonl_paths(errors))
    return done


class ResultWriter:
    """Appends result rows and error lines; ``flush`` at the end of every batch."""

    def __init__(self, output: Path, fmt: str, *, resume: bool, overwrite: bool) -> None:
        self.output = output
        self.fmt = fmt
        self.errors_file = errors_path(output)
        existing = [p for p in (output, self.errors_file) if p.exists()]
        if existing and not (resume or overwrite):
            raise InputError(
                f"{existing[0]} exists: continue it with --resume, replace it with --overwrite, "
                "or choose another -o"
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if resume else "w"
        new_csv = fmt == "csv" and (not resume or not output.exists() or output.stat().st_size == 0)
        self._out: IO[str] = open(output, mode, encoding="utf-8", newline="")  # noqa: SIM115
        self._err: IO[str] | None = None
        if not resume and self.errors_file.exists():
            self.errors_file.unlink()  # --overwrite: the old errors belong to the old results
        # Rows of a batch wait here and reach the file in one write at flush(): Ctrl-C between
        # two rows then loses the unfinished batch (redone by --resume), never half a line.
        self._rows = io.StringIO()
        self._errors = io.StringIO()
        self._csv = csv.writer(self._rows, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None and new_csv:
            self._csv.writerow(CSV_COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(
                [
                    row["path"],
                    LIST_SEPARATOR.join(row["labels"]),
                    LIST_SEPARATOR.join(f"{s:.6f}" for s in row["scores"]),
                    row["k"],
                    f"{row['quantity']:.6f}",
                ]
            )
        else:
            self._rows.write(json.dumps(row, ensure_ascii=False) + "\n")

    def error(self, path: str, reason: str) -> None:
        self._errors.write(json.dumps({"path": path, "error": reason}, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Write the batch's rows and errors, each file in one write, and sync them to disk."""
        rows, errors = self._take(self._rows), self._take(self._errors)
        if errors and self._err is None:
            self._err = open(self.errors_file, "a", encoding="utf-8")  # noqa: SIM115
        for f, text in ((self._out, rows), (self._err, errors)):
            if f is not None and text:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

    @staticmethod
    def _take(buffer: io.StringIO) -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    def close(self) -> None:
        """Flush and close; a line torn by an interrupt inside a write is cut off."""
        try:
            self.flush()
        finally:
            for f in (self._out, self._err):
                if f is not None:
                    f.close()
                    repair_torn_tail(Path(f.name))

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file in either format (tests, eval and users' scripts)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".csv":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        labels = row["labels"].split(LIST_SEPARATOR) if row["labels"] else []
        scores = [float(s) for s in row["scores"].split(LIST_SEPARATOR)] if row["scores"] else []
        rows.append(
            {
                "path": row["path"],
                "labels": labels,
                "scores": scores,
                "k": int(row["k"]),
                "quantity": float(row["quantity"]),
            }
        )
    return rows
