"""The top-level lists of a large JSON object, item by item, in bounded memory.

A COCO-style annotation file is one object whose lists hold millions of items; ``json.load``
holds all of them at once (a 394 MB instances file: 2.7 GB peak). Here the object's own
structure is scanned by hand and each item is decoded alone by the standard library's C decoder,
so memory is one item plus a read buffer. Hand-written because ijson, the usual library for this,
takes memory quadratic in the nesting depth (a 200 kB file of nested brackets used all 24 GB of
this machine) and fails on ``\\udcXX`` escapes, which Python writes for non-UTF-8 file names.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import BinaryIO

from m3trt.data.safe_open import NotJSON, open_regular, os_reason
from m3trt.errors import InputError

MAX_ITEM_CHARS = 64 << 20
"""One list item (or one value that is not a list) larger than this is refused, not buffered."""
CHUNK = 1 << 20

ItemHandler = Callable[[int, object], None]
"""Called with each item's index in its list and the item."""

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# An error this close to the end of the buffer may be an item cut by the read ("tr", "1e", "\u12")
_TAIL = 16


class _Scanner:
    """A read buffer over a UTF-8 stream that knows the line and column of every position."""

    def __init__(self, f: BinaryIO, name: str, what: str) -> None:
        self.f = f
        self.name = name
        self.what = what
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.lines_before = 0  # line breaks in the text dropped from the buffer's front
        self.column_before = 0  # characters after the last of them, before the buffer

    # ------------------------------------------------------------------------------ reading
    def more(self, size: int = 0) -> None:
        """Drop what was consumed and append about ``size`` (default CHUNK) more characters."""
        if self.eof:
            return
        try:
            data = self.f.read(size or CHUNK)
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read {self.what} ({os_reason(exc)})") from None
        try:
            text = self.utf8.decode(data, final=not data)
        except UnicodeDecodeError:
            raise self.invalid("not UTF-8") from None
        self.eof = not data
        done = self.buf[: self.pos]
        breaks = done.count("\n")
        if breaks:
            self.lines_before += breaks
            self.column_before = len(done) - done.rfind("\n") - 1
        else:
            self.column_before += len(done)
        self.buf = self.buf[self.pos :] + text
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self.more()

    def expect(self, chars: str, description: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise self.invalid(f"Expecting {description}", self.pos)
        self.pos += 1
        return found

    def value(self, where: str) -> object:
        """The JSON value at the read position, decoded whole (at most MAX_ITEM_CHARS)."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.buf) - _TAIL or exc.msg.startswith("Unterminated")
                if self.eof or not cut:
                    raise self.invalid(exc.msg, exc.pos) from None
            except RecursionError:
                raise self.invalid(f"{where} is nested too deeply") from None
            except ValueError as exc:  # an integer longer than Python converts
                reason = " ".join(str(exc).split()).split(";")[0][:100]
                raise self.invalid(f"{where}: {reason}") from None
            else:
                if end <= len(self.buf) - _TAIL or self.eof:  # "1" of "1e5" cut by a read
                    self.pos = end
                    return value
            held = len(self.buf) - self.pos
            if held > MAX_ITEM_CHARS:
                raise InputError(
                    f"{self.name}: {where} in the {self.what} is larger than "
                    f"{MAX_ITEM_CHARS >> 20} MiB or does not end; the file is malformed"
                )
            self.more(max(CHUNK, held))  # doubling: a long item is decoded O(1) times

    # ------------------------------------------------------------------------------- errors
    def invalid(self, reason: str, at: int | None = None) -> NotJSON:
        if at is None:
            return NotJSON(f"{self.name}: {self.what} is not valid JSON ({reason})")
        line_start = self.buf.rfind("\n", 0, at)
        line = self.lines_before + self.buf.count("\n", 0, at) + 1
        column = at - line_start if line_start >= 0 else self.column_before + at + 1
        return NotJSON(
            f"{self.name}: {self.what} is not valid JSON ({reason}: line {line} column {column})"
        )


def _kind(first: str) -> str:
    return {"{": "an object", "[": "a list", '"': "a string"}.get(first, "a number or literal")


def scan_object_lists(
    path: str | os.PathLike, what: str, lists: Mapping[str, ItemHandler]
) -> dict[str, str]:
    """Call ``lists[key]`` with each item of the file's top-level list ``key``, in file order.

    Returns what each top-level key held ("a list", "an object", ...), so that the caller can
    name a key that is missing or not a list. One of ``lists`` listed twice is refused
    (``json.load`` silently kept the last). Raises NotJSON for a file that is not one UTF-8
    JSON document, InputError if the top level is not an object, FileNotFoundError unchanged.
    """
    name = os.fsdecode(path)
    with open_regular(path, what, None) as f:
        scan = _Scanner(f, name, what)
        first = scan.peek()
        if first != "{":
            if first and first in '["-0123456789tfnNI':
                if first not in '["':
                    scan.value("the top level")  # NotJSON if it is not even JSON
                raise InputError(f"{name}: the top level must be a JSON object, not {_kind(first)}")
            raise scan.invalid("Expecting '{'", scan.pos)
        scan.pos += 1
        kinds: dict[str, str] = {}
        if scan.peek() == "}":
            scan.pos += 1
        else:
            while True:
                if scan.peek() != '"':
                    expected = "property name enclosed in double quotes"
                    raise scan.invalid(f"Expecting {expected}", scan.pos)
                key = scan.value("a key")
                assert isinstance(key, str)
                if key in kinds and key in lists:
                    raise InputError(f'{name}: key "{key}" appears twice; the file is malformed')
                scan.expect(":", "':' delimiter")
                kinds[key] = _kind(scan.peek())
                if kinds[key] == "a list":
                    _scan_list(scan, key, lists.get(key))
                else:
                    scan.value(f'"{key}"')
                if scan.expect(",}", "',' delimiter") == "}":
                    break
        if scan.peek():
            raise scan.invalid("Extra data", scan.pos)
    return kinds


def _scan_list(scan: _Scanner, key: str, handler: ItemHandler | None) -> None:
    scan.expect("[", "'['")
    if scan.peek() == "]":
        scan.pos += 1
        return
    index = 0
    while True:
        if not scan.peek():
            raise scan.invalid("Expecting value", scan.pos)
        item = scan.value(f"{key}[{index}]")
        if handler is not None:
            handler(index, item)
        index += 1
        if scan.expect(",]", "',' delimiter") == "]":
            return
