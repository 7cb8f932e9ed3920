"""Opening untrusted input files: regular files only, never blocking, with a size cap.

A name in a user's folder may be a FIFO (``open`` blocks forever, Ctrl-C included), a link to
``/dev/zero`` (reads until memory runs out) or a folder. Every input m3trt reads from a folder
(images, tag sidecars, tag manifests) goes through here: the file is opened with ``O_NONBLOCK``
(so a FIFO open returns at once), then checked with ``fstat`` on the open descriptor (so the check
and the read see the same file, whatever is renamed in between), then read with a cap. Symbolic
links are followed, as the folder walk follows them; the check applies to what they point at.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from m3trt.errors import InputError

_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for error messages."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def os_reason(exc: OSError) -> str:
    """A short reason for an OSError, without the path (the caller names the file)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def open_regular(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file of at most ``max_bytes`` bytes.

    Raises FileNotFoundError unchanged (callers decide whether absence is an error) and
    InputError "PATH: WHAT is a FIFO ..." for anything else that is wrong.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise InputError(f"{name}: {what} is a folder, not a file") from None
        raise InputError(f"{name}: cannot open {what} ({os_reason(exc)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{name}: {what} is {file_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise InputError(
                f"{name}: {what} is {st.st_size:,} bytes; the limit is {max_bytes:,} bytes"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The whole of a regular file of at most ``max_bytes`` bytes (checked again while reading,
    since a file may grow after ``fstat``)."""
    with open_regular(path, what, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            name = os.fsdecode(path)
            raise InputError(f"{name}: cannot read {what} ({os_reason(exc)})") from None
    if len(data) > max_bytes:
        raise InputError(
            f"{os.fsdecode(path)}: {what} is larger than the limit of {max_bytes:,} bytes"
        )
    return data


class NotJSON(InputError):
    """A file that could be read but holds no UTF-8 JSON document."""


def read_json(path: str | os.PathLike, what: str, max_bytes: int) -> object:
    """A JSON document from a regular file of at most ``max_bytes`` bytes (``read_regular``'s
    rules); NotJSON naming ``what`` when it is not UTF-8 JSON. FileNotFoundError unchanged."""
    data = read_regular(path, what, max_bytes)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg}: line {exc.lineno} column {exc.colno}"  # msg may end "at"
    except ValueError as exc:  # an integer longer than Python converts
        reason = str(exc).split(";")[0][:100]  # not the advice to Python programmers
    except RecursionError:
        reason = "nested too deeply"
    raise NotJSON(f"{os.fsdecode(path)}: {what} is not valid JSON ({reason})")


class LineTooLong(ValueError):
    """A line past a reader's cap; ``number`` is its line number."""

    def __init__(self, number: int) -> None:
        super().__init__(f"line {number} is too long")
        self.number = number


def bounded_lines(f: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of ``f`` (their ``\n`` kept), split at ``\n`` only (JSON may hold a raw
    U+2028), each at most ``max_line_bytes`` before its newline: a longer one raises LineTooLong
    before it is read whole, so memory stays bounded whatever the file holds."""
    for number in itertools.count(1):
        data = f.readline(max_line_bytes + 1)
        if not data:
            return
        if len(data) > max_line_bytes and not data.endswith(b"\n"):
            raise LineTooLong(number)
        yield number, data
