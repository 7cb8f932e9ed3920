"""uvicorn's httptools protocol with a bound on the requests one connection may queue.

HTTP/1.1 lets a client send requests without waiting for the answers (pipelining). uvicorn parses
all it reads into a queue of requests while the first runs, and resumes reading after every
answer, so one client that writes requests and never reads the answers grew the server by the size
of all it sent (30,000 pipelined 37 KB requests: 1.2 GB, still held after it left). Here the bytes
read are parsed a slice at a time, and parsing and reading stop while ``MAX_PIPELINED`` requests
wait: one connection holds at most one read of its socket (256 KiB) unparsed plus the requests of
one slice, and a client that does not read its answers stalls only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_PIPELINED = 8
SLICE_BYTES = 4096  # ~140 of the smallest requests; a 64 MB body parses as fast as before


class _HeldFlow(FlowControl):
    """uvicorn resumes reading after each answer and whenever the running request asks for more
    of its body; not while the connection's queue is full or its last read is not yet parsed."""

    def __init__(self, transport: asyncio.Transport, held: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._held = held

    def resume_reading(self) -> None:
        if not self._held():
            super().resume_reading()


class BoundedPipelineProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._unparsed = b""
        self._paused_to_parse = False  # reading paused here, not by uvicorn's own flow control
        self.flow = _HeldFlow(transport, self._held)

    def _held(self) -> bool:
        return bool(self._unparsed) or len(self.pipeline) >= MAX_PIPELINED

    def data_received(self, data: bytes) -> None:
        self._unparsed += data
        self._parse()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next queued request, if any
        if self._unparsed and not self.transport.is_closing():
            self._parse()

    def _parse(self) -> None:
        """Parse slices of what was read until it is all parsed (then reading may go on) or
        the queue is full (then it waits, paused, for an answer to go out)."""
        data, at = memoryview(self._unparsed), 0
        while at < len(data) and len(self.pipeline) < MAX_PIPELINED:
            if self.transport.is_closing():  # a malformed request was answered with a 400
                at = len(data)
                break
            super().data_received(bytes(data[at : at + SLICE_BYTES]))
            at += SLICE_BYTES
        self._unparsed = bytes(data[at:])
        if self._unparsed:
            self._paused_to_parse = True
            self.flow.pause_reading()
        elif self._paused_to_parse:  # resumed only if this paused it: a full body buffer stays
            self._paused_to_parse = False
            self.flow.resume_reading()
