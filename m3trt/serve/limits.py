"""What one request may cost the server: body bytes (after decompression), pixels, queue wait.

Every limit is checked while reading, before memory is spent: a ``Content-Length`` over the limit
is refused before the body is read, a body without one is cut off as soon as it passes the limit,
and a gzip/deflate body is inflated in bounded steps so a small compressed body cannot expand
into gigabytes (a decompression bomb).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from m3trt.data.images import DEFAULT_MAX_PIXELS

MiB = 1 << 20
MAX_TIMEOUT_S = 86400.0  # a day; a request waiting longer is lost anyway
BODY_IDLE_S = 5.0
"""A body that sends nothing for this long is cut off (408): four uploads that stalled held every
body slot for the whole ``--timeout``, so every other request waited 30 s behind them."""


@dataclass(frozen=True)
class Limits:
    """Server-wide limits; every field is a ``m3trt serve`` option."""

    max_body_bytes: int = 64 * MiB
    max_pixels: int = 40_000_000
    timeout_s: float = 30.0
    max_queue: int = 256  # queued rows (images) per model before 503

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(
                f"max body size must be at least 1024 bytes, not {self.max_body_bytes}"
            )
        if not 1 <= self.max_pixels <= DEFAULT_MAX_PIXELS * 10:
            raise ValueError(f"max pixels out of range: {self.max_pixels}")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:  # inf overflowed the server's timers
            raise ValueError(
                f"--timeout must be positive and at most {MAX_TIMEOUT_S:g} s, not {self.timeout_s}"
            )
        if self.max_queue < 1:
            raise ValueError(f"max queue must be at least 1, not {self.max_queue}")


class LimitError(ValueError):
    """A request over a limit; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_content_length(value: str | None, limit: int) -> None:
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise LimitError(400, f"Content-Length {value!r} is not a number") from None
    if length > limit:
        raise LimitError(413, f"request body of {length} bytes is over the limit of {limit}")


async def paced(chunks: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``chunks``, refused with a 408 when the next does not come within ``idle_s``."""
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise LimitError(408, f"no part of the request body arrived for {idle_s:g} s") from None
        yield chunk


DRAIN_BYTES = 8 << 20


async def drain(chunks: AsyncIterator[bytes], length: str | None) -> None:
    """Read and drop the body of a request refused for its size, if it is at most DRAIN_BYTES,
    so that a client still sending reads the 413: a connection closed with unread data is reset,
    and the client sees the reset instead. Bigger bodies are not read (that may happen then)."""
    try:
        if length is None or int(length) > DRAIN_BYTES:
            return
    except ValueError:
        return
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > DRAIN_BYTES:
            return


async def read_body(chunks: AsyncIterator[bytes], limit: int, encoding: str | None = None) -> bytes:
    """Read a request body, inflating ``gzip``/``deflate``, never holding more than ``limit``."""
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise LimitError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = None
    if encoding != "identity":
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    out = bytearray()
    async for chunk in chunks:
        if inflater is None:
            out += chunk
        else:
            _inflate(inflater, chunk, out, limit)
        if len(out) > limit:
            raise LimitError(413, _over(limit, encoding))
    if inflater is not None:
        try:
            out += inflater.flush()
        except zlib.error as exc:
            raise LimitError(400, f"the {encoding} body is corrupt: {exc}") from None
        if not inflater.eof:
            raise LimitError(400, f"the {encoding} body is truncated")
        if len(out) > limit:
            raise LimitError(413, _over(limit, encoding))
    return bytes(out)


def _inflate(inflater: zlib._Decompress, chunk: bytes, out: bytearray, limit: int) -> None:
    data = chunk
    while data:
        room = limit + 1 - len(out)
        try:
            out += inflater.decompress(data, room)
        except zlib.error as exc:
            raise LimitError(400, f"the compressed body is corrupt: {exc}") from None
        if len(out) > limit:
            return
        data = inflater.unconsumed_tail


def _over(limit: int, encoding: str) -> str:
    after = " after decompression" if encoding != "identity" else ""
    return f"request body is over the limit of {limit} bytes{after}"
