"""The HTTP app (Starlette on uvicorn): KServe v2 / Open Inference Protocol routes, ``annotate``,
``/metrics``, and the per-request log line.

Every error is a JSON ``{"error": "one line"}`` with a 4xx for the client's mistakes, 503 with
``Retry-After`` when the queue is full or the server is stopping, 504 when a request waited past
its timeout. SIGTERM (handled by uvicorn) stops accepting connections, lets in-flight requests
finish, then the lifespan shutdown drains each batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as RoutingError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3trt import __version__
from m3trt.data.manifest import normalise_tag
from m3trt.errors import ImageDecodeError, M3Error
from m3trt.serve import limits as serve_limits
from m3trt.serve.batcher import QueueFull
from m3trt.serve.limits import LimitError, Limits, check_content_length, drain, paced, read_body
from m3trt.serve.metrics import Metrics
from m3trt.serve.model import VERSION, ServedModel
from m3trt.serve.protocol import (
    HEADER_LENGTH,
    OutputNotJSON,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)

log = logging.getLogger("m3trt.serve")
EXTENSIONS = ["binary_tensor_data", "model_configuration", "m3trt_annotate"]
RETRY_AFTER_S = 1
BODIES_AT_ONCE = 4


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    limits: Limits
    metrics: Metrics
    decoder: ThreadPoolExecutor
    ready: bool = False
    # Request bodies read (and JSON parsed) at once: memory stays within BODIES_AT_ONCE bodies of
    # --max-body-mb (a JSON tensor takes ~10x its size while parsed); the other requests wait
    # with their bytes in the kernel's socket buffers.
    bodies: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(BODIES_AT_ONCE))


def create_app(models: Sequence[ServedModel], limits: Limits, metrics: Metrics | None = None):
    """The ASGI app serving ``models``; batchers start and drain with the app's lifespan."""
    state = ServerState(
        {m.name: m for m in models},
        limits,
        metrics or Metrics(),
        ThreadPoolExecutor(2, thread_name_prefix="m3trt-decode"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        for model in state.models.values():
            model.start()
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await asyncio.gather(*(m.close() for m in state.models.values()))
            state.decoder.shutdown(wait=True)

    async def server_metadata(_request: Request) -> Response:
        return JSONResponse({"name": "m3trt", "version": __version__, "extensions": EXTENSIONS})

    async def live(_request: Request) -> Response:
        return Response(status_code=200)

    async def ready(_request: Request) -> Response:
        return Response(status_code=200 if state.ready else 503)

    async def model_ready(request: Request) -> Response:
        _model(state, request)
        return Response(status_code=200 if state.ready else 503)

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(_model(state, request).metadata())

    async def model_config(request: Request) -> Response:
        from m3trt.serve.triton_repo import served_config

        return JSONResponse(served_config(_model(state, request)))

    async def infer(request: Request) -> Response:
        model = _model(state, request)
        _room(state, model)
        header_length = _header_length(request)
        async with _body_slot(state):
            body = await _body(request, state.limits)
            # Off the event loop: a 60 MB JSON body held /v2/health/live for 10 s when parsed here.
            parsed = await asyncio.to_thread(parse_infer_request, body, header_length)
            del body
        feeds, rows = model.check_inputs(parsed.inputs)
        known = {s.name for s in model.outputs}
        for item in parsed.outputs or []:
            if item.name not in known:
                raise ProtocolError(f"model {model.name!r} has no output {item.name!r}")
        timeout = _timeout(parsed.parameters, state.limits)
        outputs = await _queued(state, model, model.infer(feeds, rows), timeout)
        content, headers = encode_infer_response(
            model.name,
            outputs,
            parsed.outputs,
            binary_default=parsed.binary_output,
            request_id=parsed.id,
        )
        return Response(content, headers=headers)

    async def annotate(request: Request) -> Response:
        model = _model(state, request)
        _room(state, model)
        async with _body_slot(state):
            body = await _body(request, state.limits)
        if not body:
            raise HTTPError(400, "the body is empty: POST the image file's bytes")
        tags = [t for v in request.query_params.getlist("tags") for t in v.split(",") if t.strip()]
        work = model.annotate(body, tags, state.decoder)
        annotation = await _queued(state, model, work, state.limits.timeout_s)
        if not annotation.finite:
            raise HTTPError(500, "the model gave NaN or infinite scores (its weights are broken)")
        return JSONResponse(
            {"model_name": model.name, **annotation.to_json(), **_tag_use(model, tags)}
        )

    async def metrics(_request: Request) -> Response:
        for model in state.models.values():
            if model.batcher is not None:
                state.metrics.queue.labels(model.name).set(model.batcher.queued_rows)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    model_routes = [
        ("", model_metadata, ["GET"]),
        ("/ready", model_ready, ["GET"]),
        ("/config", model_config, ["GET"]),
        ("/infer", infer, ["POST"]),
    ]
    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}/annotate", annotate, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    for suffix, handler, methods in model_routes:
        routes.append(Route("/v2/models/{name}" + suffix, handler, methods=methods))
        routes.append(
            Route("/v2/models/{name}/versions/{version}" + suffix, handler, methods=methods)
        )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            **{
                cls: _error_response
                for cls in (
                    HTTPError,
                    LimitError,
                    ProtocolError,
                    ImageDecodeError,
                    ValueError,
                    OutputNotJSON,
                )
            },
            RoutingError: _routing_error,
            ClientDisconnect: _client_gone,
        },
    )
    app.router.redirect_slashes = False  # "/v2/models/m/" is not a route: a 404, not a 307
    app.state.m3trt = state
    return RequestLog(app, state)


def _model(state: ServerState, request: Request) -> ServedModel:
    name = request.path_params["name"]
    model = state.models.get(name)
    if model is None:
        raise HTTPError(404, f"no model named {name!r} (serving: {', '.join(state.models)})")
    version = request.path_params.get("version")
    if version is not None and version != VERSION:
        raise HTTPError(404, f"model {name!r} has no version {version!r} (versions: {VERSION})")
    return model


def _room(state: ServerState, model: ServedModel) -> None:
    """Refuse at once, before reading the body, when the model's queue is already full."""
    try:
        if model.batcher is not None:
            model.batcher.check_room()
    except QueueFull as exc:
        state.metrics.rejected.labels(model.name).inc()
        raise HTTPError(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None


def _tag_use(model: ServedModel, tags: list[str]) -> dict[str, list[str]]:
    """Which of ``?tags=`` the model took: words outside its vocabulary, or every word for a
    model trained without tags, were dropped without a word to the client."""
    if not tags:
        return {}
    words = list(dict.fromkeys(normalise_tag(t) for t in tags))
    vocab = model.annotator.tag_vocab.index if model.annotator.uses_tags else {}
    return {
        "tags_used": [w for w in words if w in vocab],
        "tags_ignored": [w for w in words if w not in vocab],
    }


@contextlib.asynccontextmanager
async def _body_slot(state: ServerState) -> AsyncIterator[None]:
    """One of the BODIES_AT_ONCE slots for reading a body, waited for at most the timeout."""
    try:
        await asyncio.wait_for(state.bodies.acquire(), state.limits.timeout_s)
    except TimeoutError:
        raise HTTPError(
            503, "too many request bodies in flight", {"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    try:
        yield
    finally:
        state.bodies.release()


async def _body(request: Request, limits: Limits) -> bytes:
    length = request.headers.get("content-length")
    try:
        check_content_length(length, limits.max_body_bytes)
    except LimitError as exc:
        if exc.status == 413:
            await drain(request.stream(), length)
        raise
    chunks = request.stream()
    idle_s = serve_limits.BODY_IDLE_S
    if idle_s < limits.timeout_s:  # a client that stalls holds a slot: not for long
        chunks = paced(chunks, idle_s)
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await read_body(
                chunks, limits.max_body_bytes, request.headers.get("content-encoding")
            )
    except TimeoutError:
        raise LimitError(
            408, f"the request body did not arrive within the timeout of {limits.timeout_s:g} s"
        ) from None


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} {value!r} is not a number") from None


def _timeout(parameters: dict[str, Any], limits: Limits) -> float:
    """The server's timeout, shortened by the request's own ``timeout`` (microseconds)."""
    value = parameters.get("timeout")
    if value is None:
        return limits.timeout_s
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError("parameter 'timeout' must be a positive number of microseconds")
    if value >= limits.timeout_s * 1e6:  # compared exactly: a 400-digit value has no float
        return limits.timeout_s
    return value / 1e6


async def _queued(state: ServerState, model: ServedModel, work: Any, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(work, timeout)
    except QueueFull as exc:
        state.metrics.rejected.labels(model.name).inc()
        raise HTTPError(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
    except TimeoutError:
        raise HTTPError(504, f"no answer within the timeout of {timeout:g} s") from None


async def _error_response(_request: Request, exc: Exception) -> Response:
    return _as_response(exc)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """The client left while its body was read: nobody to answer, nothing to log but the line
    (499, nginx's "client closed request"); it was an ASGI traceback in the log."""
    return Response(status_code=499)


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 as the other errors are: JSON with one ``error`` line."""
    assert isinstance(exc, RoutingError)
    what = "no such route" if exc.status_code == 404 else str(exc.detail).lower()
    message = f"{request.method} {_loggable_path(request.scope)}: {what}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _as_response(exc: BaseException) -> Response:
    if isinstance(exc, HTTPError):
        status, message, headers = exc.status, str(exc), exc.headers
    elif isinstance(exc, OutputNotJSON):
        status, message, headers = 500, str(exc), {}
    elif isinstance(exc, LimitError):
        status, message, headers = exc.status, str(exc), {}
    elif isinstance(exc, ProtocolError | ImageDecodeError | ValueError):
        status, message, headers = 400, str(exc), {}
    else:
        log.exception("internal error")
        status, message, headers = 500, f"internal error: {type(exc).__name__}: {exc}", {}
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


def _endpoint(path: str) -> tuple[str, str]:
    """A bounded (endpoint, model) label pair for a request path."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["v2", "models"] and len(parts) >= 3:
        tail = parts[5:] if len(parts) > 4 and parts[3] == "versions" else parts[3:]
        return (tail[0] if tail else "metadata"), parts[2]
    if parts[:2] == ["v2", "health"]:
        return "health", "-"
    if parts == ["metrics"]:
        return "metrics", "-"
    return ("server" if parts == ["v2"] else "other"), "-"


def _loggable_path(scope: Scope) -> str:
    """The path as the client sent it, still percent-encoded, with anything unprintable as
    ``\\xNN``: the decoded path let ``%0A`` write a forged line into the log, and ``%1B`` a
    terminal escape sequence."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    text = raw.decode("ascii", "backslashreplace")
    return "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)


class RequestLog:
    """One log line and one metrics observation per request, with its latency."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - start
            endpoint, model = _endpoint(scope["path"])
            if model not in self.state.models:
                model = "-"
            known = {"infer", "annotate", "ready", "config", "metadata"}
            if endpoint not in known | {"health", "metrics", "server"}:
                endpoint = "other"
            self.state.metrics.observe_request(endpoint, model, status, seconds)
            client = scope.get("client") or ("-", 0)
            log.info(
                "%s %s %s %d %.1f ms",
                client[0],
                scope["method"],
                _loggable_path(scope),
                status,
                seconds * 1e3,
            )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: any free port; read it back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise M3Error(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_server(app: Any, limits: Limits):
    """A uvicorn server for ``app``: no access log of its own (ours has the latency), graceful
    shutdown long enough for a queued request to finish."""
    import uvicorn

    from m3trt.serve.http_protocol import BoundedPipelineProtocol

    config = uvicorn.Config(
        app,
        http=BoundedPipelineProtocol,  # its queue of pipelined requests is bounded
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(limits.timeout_s) + 5,
        server_header=False,
    )

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by
        the signal; here a finished graceful stop exits normally and says which signal ended it."""

        stopped_by: list[int] = []  # noqa: RUF012 (one server per process)

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            with super().capture_signals():
                try:
                    yield
                finally:
                    self.stopped_by = list(self._captured_signals)
                    self._captured_signals.clear()

    return Server(config)
