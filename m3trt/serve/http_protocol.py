"""uvicorn's httptools protocol with bounds on what one connection may cost the server.

Request heads: the request line and headers of one request may take at most ``MAX_HEAD_BYTES``
(an answer 431, then the connection is closed) and must arrive within ``HEAD_TIMEOUT_S`` (408).
uvicorn bounded neither: the parser joins a long URL or header a fragment at a time, in time
quadratic in its length (one 64 MiB URL held the event loop, every other client included, for
265 s), four connections sending 190 MiB of headers each kept 750 MiB after they left, and
requests left without their blank line held their sockets until the server ran out of them.
A request the parser refuses is answered with a JSON error naming the parser's reason, as every
other error is (uvicorn answered "Invalid HTTP request received." in plain text).

Pipelining: HTTP/1.1 lets a client send requests without waiting for the answers. uvicorn
parses all it reads into a queue of requests while the first runs, and resumes reading after every
answer, so one client that writes requests and never reads the answers grew the server by the size
of all it sent (30,000 pipelined 37 KB requests: 1.2 GB, still held after it left). Here the bytes
read are parsed a slice at a time, and parsing and reading stop while ``MAX_PIPELINED`` requests
wait: one connection holds at most one read of its socket (256 KiB) unparsed plus the requests of
one slice, and a client that does not read its answers stalls only itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from m3trt.errors import terminal_safe

MAX_PIPELINED = 8
SLICE_BYTES = 4096  # ~140 of the smallest requests; a 64 MB body parses as fast as before
MAX_HEAD_BYTES = 64 << 10  # nginx allows 32 KiB of headers by default, Node.js 16 KiB
HEAD_TIMEOUT_S = 10.0
log = logging.getLogger("m3trt.serve")


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
        self._in_body = False  # between a request's head and its end
        self._head_bytes = 0  # fed to the parser since the current head began (about)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()  # a connection that never sends a request is closed too

    # ---------------------------------------------------------------------- the request head
    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._in_body:
            return
        answering = self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        if self._unparsed or answering:  # reading waits for this side's answers, not the client
            self._arm_head_timer()
            return
        if self._head_bytes:
            self._refuse(408, f"the request head did not arrive within {HEAD_TIMEOUT_S:g} s")
        else:
            self.transport.close()  # nothing asked: nothing to answer

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` with a JSON error and close: what is left of the request is not
        read, so the connection cannot go on."""
        body = json.dumps({"error": reason}).encode()
        phrase = {
            400: "Bad Request",
            408: "Request Timeout",
            431: "Request Header Fields Too Large",
        }
        head = (
            f"HTTP/1.1 {status} {phrase[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        client = self.client[0] if self.client else "-"
        log.info("%s - - %d %s", client, status, terminal_safe(reason))
        self._unparsed = b""
        self._disarm_head_timer()
        if self.cycle is None or self.cycle.response_complete:  # else: mid-answer, just close
            self.transport.write(head.encode() + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with the parser's own reason in a malformed request's
        answer (uvicorn's says only "Invalid HTTP request received.")."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # uvicorn's handling, unchanged
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            reason = str(exc).strip() or "malformed request"
            self._refuse(400, f"invalid HTTP request: {reason}")

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
            piece = bytes(data[at : at + SLICE_BYTES])
            if not self._in_body:
                self._head_bytes += len(piece)  # reset when a head ends inside the piece
                if self._head_bytes > MAX_HEAD_BYTES + SLICE_BYTES:
                    self._refuse(
                        431, f"the request line and headers are over {MAX_HEAD_BYTES >> 10} KiB"
                    )
                    return
            self._feed(piece)
            at += SLICE_BYTES
        self._unparsed = bytes(data[at:])
        if self._unparsed:
            self._paused_to_parse = True
            self.flow.pause_reading()
        elif self._paused_to_parse:  # resumed only if this paused it: a full body buffer stays
            self._paused_to_parse = False
            self.flow.resume_reading()
