"""Result files of ``m3trt infer``: JSONL (default) or CSV, plus ``<stem>.errors.jsonl``.

Lines are appended and synced once per batch, so after Ctrl-C or a kill the file holds every
finished batch and at most one torn last line. ``--resume`` first checks that both files are
m3trt's (every complete line parses; a torn last line looks like the start of one of ours), and
only then cuts the torn line off; a file that is not ours is refused untouched.

File names are bytes on POSIX and need not be UTF-8 (``caf\\xe9.jpg`` from a Latin-1 disk). Python
carries such names as str with lone surrogates (``os.fsdecode``), which no UTF-8 file can hold.
So ``path`` is always valid UTF-8 text for people and tools (undecodable bytes shown as U+FFFD),
and a name that is not valid UTF-8 also gets ``path_bytes``: its exact bytes in base64, which is
what ``--resume`` and ``read_results`` use to get the name back.

CSV lists (labels, scores) are joined by ``|``; a ``|`` or ``\\`` inside a label is escaped with a
backslash, so labels split back exactly. Rows end in CRLF (RFC 4180), so a carriage return in a
file name is quoted, not taken for the end of a row. A CSV name that a spreadsheet would run as
a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return first) is shown after a ``'``, with its
exact bytes in ``path_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from m3trt.data.safe_open import os_reason
from m3trt.errors import InputError, OutputFailure

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("path", "labels", "scores", "k", "quantity", "path_bytes")
LIST_SEPARATOR = "|"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell
MAX_LINE_BYTES = 1 << 20  # longer than any line m3trt writes: a bigger one is not ours
_JSONL_START = b'{"path": "'


# --- file names ------------------------------------------------------------------------------


def display_path(path: str) -> str:
    """``path`` as valid UTF-8: undecodable bytes become U+FFFD (for people, not for lookup)."""
    try:
        return os.fsencode(path).decode("utf-8", "replace")
    except UnicodeError:  # surrogates that no file name decodes to (a caller's str)
        return path.encode("utf-8", "replace").decode("utf-8")


def _exact(path: str) -> str:
    """The name's bytes in base64."""
    try:
        raw = os.fsencode(path)
    except UnicodeError:
        raw = path.encode("utf-8", "surrogatepass")
    return base64.b64encode(raw).decode("ascii")


def path_fields(path: str) -> dict[str, str]:
    """``{"path": text}``, plus ``"path_bytes"`` (base64) when the name is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        return {"path": display_path(path), "path_bytes": _exact(path)}


def csv_path_fields(path: str) -> dict[str, str]:
    """``path_fields`` for a CSV cell: a name a spreadsheet would run as a formula (it starts
    with = + - @, a tab or a carriage return: ``=HYPERLINK(...).jpg`` given as a PATH) is shown
    after a ``'``, as OWASP advises, with its exact bytes in ``path_bytes``."""
    fields = path_fields(path)
    if fields["path"].startswith(FORMULA_START):
        return {"path": "'" + fields["path"], "path_bytes": _exact(path)}
    return fields


def path_from_fields(row: dict[str, Any]) -> str:
    """The exact name written by ``path_fields`` (raises ValueError if the fields are bad)."""
    encoded = row.get("path_bytes")
    if encoded:
        if not isinstance(encoded, str):
            raise ValueError('"path_bytes" is not a string')
        try:
            return os.fsdecode(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError('"path_bytes" is not base64') from None
    path = row.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError('no "path"')
    return path


def clean_text(text: str) -> str:
    """Any str made writable as UTF-8 (error reasons may quote a non-UTF-8 name)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- CSV lists -------------------------------------------------------------------------------


def join_list(items: list[str]) -> str:
    """``["a|b", "c"]`` -> ``a\\|b|c``: backslash escapes ``\\`` and ``|`` inside an item."""
    return LIST_SEPARATOR.join(i.replace("\\", "\\\\").replace("|", "\\|") for i in items)


def split_list(text: str) -> list[str]:
    """Inverse of ``join_list``; an empty cell is an empty list."""
    if not text:
        return []
    items, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == LIST_SEPARATOR:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


# --- formats and names -----------------------------------------------------------------------


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


# --- reading back for --resume ---------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(number, line, complete) for each line, never holding more than one bounded line."""
    with open(path, "rb") as f:
        number = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise InputError(
                    f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes is not one "
                    "m3trt wrote; move the file away or use --overwrite"
                )
            yield number, line, line.endswith(b"\n")


def _not_ours(path: Path, number: int, why: str) -> InputError:
    return InputError(
        f"{path}:{number}: not a line m3trt wrote ({why}); --resume changes nothing in it: "
        "move it away, choose another -o, or use --overwrite"
    )


def _scan_jsonl(path: Path, key: str) -> tuple[set[str], int]:
    """Paths in an m3trt JSONL file whose lines carry ``key``, and the size to keep."""
    done: set[str] = set()
    keep = 0
    for number, line, complete in _lines(path):
        if not complete:
            if not (line.startswith(_JSONL_START) or _JSONL_START.startswith(line)):
                raise _not_ours(path, number, "a last line that does not start like ours")
            return done, keep  # a torn last line: cut after validation
        keep += len(line)
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict) or key not in row:
                raise ValueError(f'no "{key}"')
            done.add(path_from_fields(row))
        except (ValueError, RecursionError) as exc:
            raise _not_ours(path, number, str(exc).split("\n")[0][:80]) from None
    return done, keep


def _scan_csv(path: Path) -> tuple[set[str], int]:
    """Paths in an m3trt CSV, and the size to keep (everything up to the last complete row)."""
    done: set[str] = set()
    header = ",".join(CSV_COLUMNS).encode()
    keep = 0
    pending: list[bytes] = []  # a row may span lines (a quoted newline inside a name)
    pending_bytes = quotes = number = 0
    for number, line, complete in _lines(path):
        if number == 1:
            if line.rstrip(b"\r\n") != header:
                if not complete and header.startswith(line):
                    return done, 0
                raise _not_ours(path, 1, "not m3trt's CSV header")
            keep += len(line)
            continue
        pending.append(line)
        pending_bytes += len(line)
        quotes += line.count(b'"')  # counted a line at a time: linear in the file
        if not complete:
            break
        if pending_bytes > MAX_LINE_BYTES:
            raise _not_ours(path, number, "an unterminated quoted field")
        if quotes % 2 == 1:
            continue  # inside a quoted field (a newline in a name): the row goes on
        row = _csv_row(path, number, b"".join(pending))
        keep += pending_bytes
        pending, pending_bytes, quotes = [], 0, 0
        if row:
            try:
                done.add(path_from_fields(dict(zip(CSV_COLUMNS, row, strict=True))))
            except ValueError as exc:
                raise _not_ours(path, number, str(exc)) from None
    if pending:  # a row cut short: cut off only if it starts like one m3trt writes
        _check_torn_csv(path, number, b"".join(pending))
    return done, keep


def _csv_row(path: Path, number: int, data: bytes) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _not_ours(path, number, str(exc)[:80]) from None
    if len(rows) != 1 or (rows[0] and len(rows[0]) != len(CSV_COLUMNS)):
        raise _not_ours(path, number, f"not a row of {len(CSV_COLUMNS)} columns")
    return rows[0]


_NUMBER_PART = frozenset("0123456789.eE+-")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")


def _check_torn_csv(path: Path, number: int, tail: bytes) -> None:
    """Refuse a torn last row unless it is the start of one m3trt writes: at most six fields,
    quoted as the writer quotes them, with the scores, k and quantity numbers so far. (A name
    cut short cannot be told from other text, so that much is taken on trust.)"""
    for cut in range(4):  # a UTF-8 character may be cut mid-way
        try:
            text = tail[: len(tail) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        raise _not_ours(path, number, "a torn last row that is not UTF-8")
    closed = text + '"' if text.count('"') % 2 else text
    try:
        rows = list(csv.reader(io.StringIO(closed, newline="")))
    except csv.Error as exc:
        raise _not_ours(path, number, f"a torn last row ({str(exc)[:60]})") from None
    fields = rows[0] if len(rows) == 1 else None
    if fields is None or len(fields) > len(CSV_COLUMNS) or not _row_prefix_ok(text, fields):
        raise _not_ours(path, number, "a torn last row that does not start like ours")


def _row_prefix_ok(text: str, fields: list[str]) -> bool:
    """The writer, given the fields before the last, writes exactly the start of ``text``; the
    last (cut) field is quoted, or holds no quote; every field holds what m3trt writes there."""
    complete = fields[:-1]
    written = _csv_text(complete) + "," if complete else ""
    if not text.startswith(written):
        return False
    rest = text[len(written) :]
    if not rest.startswith('"') and '"' in rest:
        return False  # the writer quotes every field that holds a quote
    last = len(fields) - 1
    return all(_field_ok(i, field, i == last) for i, field in enumerate(fields))


def _csv_text(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return buffer.getvalue()


def _field_ok(i: int, field: str, partial: bool) -> bool:
    """Field ``i`` as m3trt writes it, or (``partial``) the start of one."""
    if i == 2:  # scores
        parts = field.split(LIST_SEPARATOR) if field else []
        whole, cut = (parts[:-1], parts[-1:]) if partial else (parts, [])
        return all(_is_float(p) for p in whole) and all(set(p) <= _NUMBER_PART for p in cut)
    if i == 3:  # k
        return field.isdigit() or (partial and not field)
    if i == 4:  # quantity
        return set(field) <= _NUMBER_PART if partial else _is_float(field)
    if i == 5:  # path_bytes
        return set(field) <= _BASE64
    return True  # the name and the labels: any text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_regular(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: exists and is not a regular file; choose another -o")


def done_paths(output: Path, fmt: str) -> set[str]:
    """Paths already in the results and errors files. Both files are validated first; only
    then are torn last lines cut off, so a file that is not m3trt's is never changed. The
    results file is held (``_hold``) while it is read and cut: a run writing it under another
    name (a hard link) lost the rows it appended between this scan and the cut."""
    with contextlib.ExitStack() as held:
        if output.is_file():
            _hold(held.enter_context(open(output, "rb")), output)
        return _scan_and_cut(output, fmt)


def _scan_and_cut(output: Path, fmt: str) -> set[str]:
    plans: list[tuple[Path, int]] = []
    done: set[str] = set()
    errors = errors_path(output)
    for path, scan in (
        (output, (lambda p: _scan_csv(p)) if fmt == "csv" else (lambda p: _scan_jsonl(p, "k"))),
        (errors, lambda p: _scan_jsonl(p, "error")),
    ):
        if not path.exists():
            continue
        _check_regular(path)
        paths, keep = scan(path)
        done |= paths
        plans.append((path, keep))
    for path, keep in plans:
        if path.stat().st_size != keep:
            try:
                os.truncate(path, keep)
            except OSError as exc:  # read-only: --resume could not append to it either
                reason = exc.strerror or exc
                raise InputError(f"{path}: cannot cut its torn last line ({reason})") from None
    return done


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that has no newline (a write interrupted mid-line); returns bytes cut.

    Only for files this process is writing (``ResultWriter.close``); ``--resume`` validates
    before it cuts (``done_paths``)."""
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


# --- writing ---------------------------------------------------------------------------------


def _hold(f: IO[Any], output: Path) -> None:
    """An exclusive lock on the open file itself (its inode, whatever its name)."""
    try:
        import fcntl
    except ImportError:  # Windows: no hard-link check
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(
            f"{output}: another m3trt run is writing this file under another name (a hard "
            "link to it); wait for that run to end, or choose another -o"
        ) from None
    except OSError:  # a file system without flock: the lock by name still holds
        return


class ResultWriter:
    """Appends result rows and error lines; ``flush`` at the end of every batch."""

    def __init__(self, output: Path, fmt: str, *, resume: bool, overwrite: bool) -> None:
        self.output = output
        self.fmt = fmt
        self.errors_file = errors_path(output)
        self.rows_written = 0
        existing = [p for p in (output, self.errors_file) if p.exists() or p.is_symlink()]
        if existing and not (resume or overwrite):
            raise InputError(
                f"{existing[0]} exists: continue it with --resume, replace it with --overwrite, "
                "or choose another -o"
            )
        for path in existing:
            _check_regular(path)
        had_rows = resume and output.exists() and output.stat().st_size > 0
        self._created = not had_rows
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            if not resume and output.is_symlink():
                output.unlink()  # --overwrite replaces the link, as every other output does,
                # never the file it points at
            # Appending, and emptied only once this run holds the file itself: a hard link
            # gives it a second name, with a lock of its own, and two runs wrote one file
            self._out: IO[str] = open(output, "a", encoding="utf-8", newline="")  # noqa: SIM115
            try:
                _hold(self._out, output)
                if not resume:
                    self._out.truncate(0)
                if not resume and (self.errors_file.exists() or self.errors_file.is_symlink()):
                    self.errors_file.unlink()  # --overwrite: the old errors are the old results'
            except BaseException:
                self._out.close()
                raise
        except OSError as exc:
            raise OutputFailure(f"{output}: cannot write results ({os_reason(exc)})") from None
        self._err: IO[str] | None = None
        # Rows of a batch wait here and reach the file in one write at flush(): Ctrl-C between
        # two rows then loses the unfinished batch (redone by --resume), never half a line.
        self._rows = io.StringIO()
        self._errors = io.StringIO()
        self._csv = (
            csv.writer(self._rows, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
            if fmt == "csv"
            else None
        )
        if self._csv is not None and not had_rows:
            self._csv.writerow(CSV_COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        """One annotated image; ``row["path"]`` is the name as the walk spells it."""
        if self._csv is not None:
            fields = csv_path_fields(row["path"])
            self._csv.writerow(
                [
                    fields["path"],
                    join_list(row["labels"]),
                    LIST_SEPARATOR.join(f"{s:.6f}" for s in row["scores"]),
                    row["k"],
                    f"{row['quantity']:.6f}",
                    fields.get("path_bytes", ""),
                ]
            )
        else:
            fields = path_fields(row["path"])
            line = {**row, **fields} if "path_bytes" in fields else {**row, "path": fields["path"]}
            self._rows.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.rows_written += 1

    def error(self, path: str, reason: str) -> None:
        line = {**path_fields(path), "error": clean_text(reason)}
        if "path_bytes" in line:  # keep "path" first, as in the results
            line = {"path": line["path"], "error": line["error"], "path_bytes": line["path_bytes"]}
        self._errors.write(json.dumps(line, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Write the batch's rows and errors, each file in one write, and sync them to disk."""
        rows, errors = self._take(self._rows), self._take(self._errors)
        target = self.output
        try:
            if errors and self._err is None:
                target = self.errors_file
                self._err = open(self.errors_file, "a", encoding="utf-8")  # noqa: SIM115
            for f, text in ((self._out, rows), (self._err, errors)):
                if f is not None and text:
                    target = Path(f.name)
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as exc:
            raise OutputFailure(
                f"{target}: cannot write ({os_reason(exc)}); what was written before is "
                "valid: free space and continue with --resume"
            ) from None

    @staticmethod
    def _take(buffer: io.StringIO) -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    def close(self) -> None:
        """Flush and close; a line torn by an interrupt inside a write is cut off. A results
        file this run created and never wrote a row to is removed (nothing was annotated)."""
        try:
            self.flush()
        finally:
            for f in (self._out, self._err):
                if f is not None:
                    with contextlib.suppress(OSError):  # the flush has said what went wrong
                        f.close()
                    repair_torn_tail(Path(f.name))
            if self._created and self.rows_written == 0:
                self.output.unlink(missing_ok=True)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_READ_BYTES = 4 << 30  # a results file of some ten million images


def read_results(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a results or errors file in either format (``fmt``, else the name's ending, as
    ``infer`` chose it); ``path`` of each row is the exact name (from ``path_bytes`` when
    present). A last JSONL line without its newline, as a kill leaves it, is not a row. A file
    that is not m3trt's raises InputError naming the file and line."""
    from m3trt.data.safe_open import read_regular

    path = Path(path)
    data = read_regular(path, "results file", MAX_READ_BYTES)  # a FIFO hung, /dev/zero grew
    try:
        text = data.decode("utf-8")  # no newline translation: a name may hold a CR
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); not m3trt's") from None
    if format_for(path, fmt) == "jsonl":
        return _jsonl_rows(path, text)
    return _csv_rows(path, text)


def _jsonl_rows(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    lines = text.split("\n")[:-1]  # the piece after the last newline is torn (or empty)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            row["path"] = path_from_fields(row)
        except (ValueError, RecursionError) as exc:
            detail = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise InputError(f"{path}:{number}: not a row of m3trt's ({detail})") from None
        row.pop("path_bytes", None)
        rows.append(row)
    return rows


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not set(CSV_COLUMNS[:5]) <= set(reader.fieldnames):
        raise InputError(f"{path}: not m3trt's CSV (its header is not {','.join(CSV_COLUMNS)})")
    rows = []
    for row in reader:
        try:
            scores = row["scores"]
            rows.append(
                {
                    "path": path_from_fields(row),
                    "labels": split_list(row["labels"]),
                    "scores": [float(s) for s in scores.split(LIST_SEPARATOR)] if scores else [],
                    "k": int(row["k"]),
                    "quantity": float(row["quantity"]),
                }
            )
        except (ValueError, TypeError, AttributeError) as exc:
            line = reader.line_num
            raise InputError(f"{path}:{line}: not a row of m3trt's ({exc})") from None
    return rows
