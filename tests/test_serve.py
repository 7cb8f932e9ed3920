"""`m3trt serve`: Triton's own HTTP client against the server, malformed requests, the bounded
queue, metrics, and SIGTERM under load."""

from __future__ import annotations

import gzip
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")

from m3trt.runtime.annotator import Annotator  # noqa: E402
from m3trt.serve.app import bind, create_app, uvicorn_server  # noqa: E402
from m3trt.serve.limits import Limits  # noqa: E402
from m3trt.serve.metrics import Metrics  # noqa: E402
from m3trt.serve.server import ServeOptions, load_models, parse_model_specs  # noqa: E402


@contextmanager
def running(models, limits: Limits, metrics: Metrics | None = None):
    """The app on a free loopback port, in a thread; yields "127.0.0.1:PORT"."""
    app = create_app(models, limits, metrics)
    server = uvicorn_server(app, limits)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


LIMITS = Limits(max_body_bytes=1 << 20, max_pixels=1_000_000, timeout_s=10, max_queue=64)


@pytest.fixture(scope="module")
def served(int8_bundle):
    metrics = Metrics()
    models = load_models(
        parse_model_specs([f"tiny={int8_bundle}"]),
        ServeOptions(max_batch=8, max_delay_ms=2, device="cpu", threads=1, limits=LIMITS),
        metrics,
    )
    with running(models, LIMITS, metrics) as url:
        yield url


@pytest.fixture(scope="module")
def annotator(int8_bundle):
    return Annotator.load(int8_bundle, device="cpu", threads=1)


@pytest.fixture(scope="module")
def images(test_images, annotator):
    paths = sorted(p for p in Path(test_images).rglob("*") if p.suffix in (".jpg", ".png"))[:4]
    batch = np.stack([annotator.prepare(p) for p in paths])
    return paths, batch


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get(url: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def triton_infer(client, batch, tags=None, *, binary: bool):
    inputs = [httpclient.InferInput("image", list(batch.shape), "UINT8")]
    inputs[0].set_data_from_numpy(batch, binary_data=binary)
    if tags is not None:
        inputs.append(httpclient.InferInput("tags", list(tags.shape), "FP32"))
        inputs[1].set_data_from_numpy(tags, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary)
        for name in ("scores", "quantity", "k", "topk")
    ]
    return client.infer("tiny", inputs, outputs=outputs)


# ------------------------------------------------------------------------ Triton's client works
def test_triton_client_health_and_metadata(served, annotator):
    url = served
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("tiny")
    info = annotator.info
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["image"] == {
        "name": "image",
        "datatype": "UINT8",
        "shape": [-1, info.image_size, info.image_size, 3],
    }
    assert inputs["tags"]["datatype"] == "FP32" and inputs["tags"]["shape"] == [-1, info.num_tags]
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]}
    assert outputs == {
        "scores": ("FP32", [-1, info.num_labels]),
        "quantity": ("FP32", [-1]),
        "k": ("INT32", [-1]),
        "topk": ("INT32", [-1, info.k_max]),
    }
    assert meta["parameters"]["label_names"] == info.label_names
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 8
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_triton_client_infer_equals_python_api(served, annotator, images, binary):
    url = served
    _, batch = images
    tags = np.zeros((len(batch), annotator.info.num_tags), np.float32)
    tags[0, :3] = 1
    tags[2, -1] = 1
    expected = annotator.run(batch, tags)
    result = triton_infer(httpclient.InferenceServerClient(url), batch, tags, binary=binary)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_triton_client_default_request_without_tags(served, annotator, images):
    url = served
    _, batch = images
    inputs = [httpclient.InferInput("image", list(batch[:1].shape), "UINT8")]
    inputs[0].set_data_from_numpy(batch[:1])
    result = httpclient.InferenceServerClient(url).infer("tiny", inputs)  # all outputs, binary
    expected = annotator.run(batch[:1])
    for name, want in expected.items():
        np.testing.assert_array_equal(result.as_numpy(name), want, err_msg=name)


def test_annotate_endpoint_equals_python_api(served, annotator, images):
    url = served
    paths, _ = images
    tags = annotator.info.tag_vocab[:2]
    status, _, body = post(
        url, "/v2/models/tiny/annotate?tags=" + ",".join(tags), paths[0].read_bytes()
    )
    assert status == 200, body
    want = annotator.annotate([paths[0].read_bytes()], [tags])[0].to_json()
    used = {"tags_used": list(tags), "tags_ignored": []}
    assert json.loads(body) == {"model_name": "tiny", **want, **used}
    # words the model does not know were dropped without a word to the client
    query = f"tags={tags[0].upper()},no-such-tag,{tags[0]}"
    status, _, body = post(url, f"/v2/models/tiny/annotate?{query}", paths[0].read_bytes())
    answer = json.loads(body)
    assert answer["tags_used"] == [tags[0]] and answer["tags_ignored"] == ["no-such-tag"]


def test_concurrent_requests_are_batched(served, annotator, images):
    url = served
    _, batch = images
    expected = annotator.decode(annotator.run(batch))
    client = httpclient.InferenceServerClient(url, concurrency=16)
    pending = []
    for i in range(32):
        inputs = [httpclient.InferInput("image", [1, *batch.shape[1:]], "UINT8")]
        inputs[0].set_data_from_numpy(batch[i % 4 : i % 4 + 1])
        pending.append(client.async_infer("tiny", inputs))
    for i, request in enumerate(pending):
        result = request.get_result()
        got = annotator.decode({n: result.as_numpy(n) for n in ("scores", "quantity", "k", "topk")})
        assert got[0].labels == expected[i % 4].labels
        assert abs(got[0].quantity - expected[i % 4].quantity) < 1e-4
    status, text = get(url, "/metrics")
    assert status == 200
    text = text.decode()
    count = float(re.search(r'm3trt_batch_size_count\{model="tiny"\} (\S+)', text).group(1))
    total = float(re.search(r'm3trt_batch_size_sum\{model="tiny"\} (\S+)', text).group(1))
    assert total > count  # at least one engine call held more than one request
    assert 'm3trt_requests_total{code="200",endpoint="infer",model="tiny"}' in text
    assert "m3trt_request_latency_seconds_bucket" in text


# ------------------------------------------------------------------------- malformed requests
def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def _infer_body(shape, datatype="UINT8", data=None) -> bytes:
    count = int(np.prod(shape))
    tensor = {"name": "image", "shape": shape, "datatype": datatype, "data": data or [0] * count}
    return json.dumps({"inputs": [tensor]}).encode()


def _tags_body(bad: str | None, num_tags: int) -> bytes:
    """An infer body whose tags hold one non-finite value: in JSON (``bad``) or, with None,
    as binary float32 data after the header (the test takes its length from the first NUL)."""
    image = {"name": "image", "shape": [1, 64, 64, 3], "datatype": "UINT8", "data": [0] * 12288}
    tags = {"name": "tags", "shape": [1, num_tags], "datatype": "FP32"}
    if bad is None:
        tags["parameters"] = {"binary_data_size": 4 * num_tags}
        values = np.zeros(num_tags, np.float32)
        values[-1] = np.nan
        return json.dumps({"inputs": [image, tags]}).encode() + values.tobytes()
    tags["data"] = [0] * (num_tags - 1) + ["BAD"]
    return json.dumps({"inputs": [image, tags]}).replace('"BAD"', bad).encode()


MALFORMED = {
    "bad json": ("infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    "wrong shape": ("infer", _infer_body([1, 8, 8, 3]), {}, 400, "expected [-1, 64, 64, 3]"),
    "wrong dtype": ("infer", _infer_body([1, 64, 64, 3], "FP32"), {}, 400, "must be UINT8"),
    "data count": ("infer", _infer_body([2, 64, 64, 3], data=[1, 2]), {}, 400, "holds 24576"),
    "out of range": ("infer", _infer_body([1, 1], data=[300]), {}, 400, "range 0..255"),
    "binary size lie": (
        "infer",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1000, 64, 64, 3],
                        "datatype": "UINT8",
                        "parameters": {"binary_data_size": 12288000},
                    }
                ]
            }
        ).encode()
        + b"\0" * 10,
        {"Inference-Header-Content-Length": None},
        400,
        "binary data ends after 10",
    ),
    "unknown input": (
        "infer",
        json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
        {},
        400,
        "has no input 'x'",
    ),
    "too big a batch": ("infer", _infer_body([9, 64, 64, 3]), {}, 400, "1 to 8 per request"),
    "not an image": ("annotate", b"this is not an image at all", {}, 400, "body:"),
    "empty body": ("annotate", b"", {}, 400, "empty"),
    "empty infer body": ("infer", b"", {}, 400, "the request body is empty"),
    "oversized body": ("annotate", b"\0" * (2 << 20), {}, 413, "over the limit"),
    "pixel bomb": ("annotate", _png(2000, 2000), {}, 400, "decompression bombs"),
    "gzip bomb": (
        "infer",
        gzip.compress(b" " * (8 << 20)),
        {"Content-Encoding": "gzip"},
        413,
        "after decompression",
    ),
    "unknown encoding": ("infer", b"{}", {"Content-Encoding": "br"}, 415, "not supported"),
    "huge integer": ("infer", b'{"inputs": [], "id": ' + b"9" * 5000 + b"}", {}, 400, "JSON"),
    "NaN tags": ("infer", partial(_tags_body, "NaN"), {}, 400, "not a finite number"),
    "infinite tags": ("infer", partial(_tags_body, "-Infinity"), {}, 400, "not a finite number"),
    "binary NaN tags": (
        "infer",
        partial(_tags_body, None),
        {"Inference-Header-Content-Length": None},
        400,
        "not a finite number",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(served, annotator, images, case):
    url = served
    endpoint, body, headers, status, reason = MALFORMED[case]
    body = body(annotator.info.num_tags) if callable(body) else body
    body = body if isinstance(body, bytes) else body.encode()
    if "Inference-Header-Content-Length" in headers:
        headers = {"Inference-Header-Content-Length": str(body.index(b"\0"))}
    got, _, answer = post(url, f"/v2/models/tiny/{endpoint}", body, headers)
    assert got == status, answer
    error = json.loads(answer)["error"]
    assert reason in error and "\n" not in error, error
    _, batch = images
    result = triton_infer(httpclient.InferenceServerClient(url), batch[:1], binary=True)
    assert result.as_numpy("k").shape == (1,)


def test_unknown_model_and_version_are_404(served):
    url = served
    assert get(url, "/v2/models/nope")[0] == 404
    assert get(url, "/v2/models/tiny/versions/2")[0] == 404
    assert get(url, "/v2/models/tiny/versions/1")[0] == 200
    # routes that do not exist answer as every other error does: JSON, one line; no redirects
    for path in ("/v2/nothing", "/v2/models/tiny/", "/v2/models/a%2Fb"):
        code, body = get(url, path)
        assert code == 404 and "no such route" in json.loads(body)["error"], (path, body)
    code, _, body = post(url, "/v2/health/live", b"")
    assert code == 405 and json.loads(body)["error"] == "POST /v2/health/live: method not allowed"


# ---------------------------------------------------------------------------- bounded queue
def test_full_queue_answers_503_with_retry_after(int8_bundle, images):
    limits = Limits(max_body_bytes=1 << 20, max_pixels=1_000_000, timeout_s=10, max_queue=1)
    options = ServeOptions(max_batch=1, max_delay_ms=0, device="cpu", threads=1, limits=limits)
    (model,) = load_models(parse_model_specs([f"slow={int8_bundle}"]), options)
    gate = threading.Event()
    run = model.annotator.run

    def blocked(images, tags=None):
        gate.wait(10)
        return run(images, tags)

    model.annotator.run = blocked  # the engine is busy until the gate opens
    _, batch = images
    body = _infer_body([1, *batch.shape[1:]], data=batch[:1].reshape(-1).tolist())
    with running([model], limits) as url:
        results: dict[int, int] = {}

        def send(i: int) -> None:
            results[i] = post(url, "/v2/models/slow/infer", body)[0]

        first = threading.Thread(target=send, args=(0,))
        first.start()
        _wait_for(lambda: model.batcher.queued_rows == 0 and gate is not None, 0.2)
        second = threading.Thread(target=send, args=(1,))
        second.start()
        _wait_for(lambda: model.batcher.queued_rows == 1)
        status, headers, answer = post(url, "/v2/models/slow/infer", body)
        assert status == 503 and headers.get("retry-after") == "1", answer
        assert "queue is full" in json.loads(answer)["error"]
        gate.set()
        first.join(10)
        second.join(10)
        assert results == {0: 200, 1: 200}


def _wait_for(condition, settle: float = 0.0) -> None:
    deadline = time.monotonic() + 10
    time.sleep(settle)
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# ------------------------------------------------------------------------ SIGTERM under load
def test_sigterm_under_load_loses_no_accepted_request(int8_bundle, images):
    _, batch = images
    body = _infer_body([1, *batch.shape[1:]], data=batch[:1].reshape(-1).tolist())
    command = [sys.executable, "-m", "m3trt.cli", "serve", str(int8_bundle), "--port", "0"]
    command += ["--threads", "1", "--max-batch-size", "4"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        log: list[str] = []
        while url is None:
            line = proc.stderr.readline()
            assert line, "server exited: " + "".join(log)
            log.append(line)
            found = re.search(r"on http://(\S+) ", line)
            url = found.group(1) if found else None
        reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
        reader.start()
        answers: list[int] = []
        refused: list[str] = []
        stop = time.monotonic() + 8

        def client() -> None:
            while time.monotonic() < stop:
                try:
                    answers.append(post(url, "/v2/models/tiny/infer", body)[0])
                except (urllib.error.URLError, ConnectionError) as exc:
                    refused.append(type(exc).__name__)  # not accepted: the listener is closed
                    return

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        _wait_for(lambda: len(answers) >= 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for t in threads:
            t.join(10)
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    served = [line for line in log if " POST /v2/models/tiny/infer " in line]
    assert set(answers) == {200}
    assert len(served) == len(answers)  # each request the server took was answered
    assert refused, "the clients kept being served after SIGTERM"


def test_serve_never_imports_torch(int8_bundle):
    script = f"""
import sys, threading, time, json, urllib.request
import m3trt.cli, m3trt.serve.protocol, m3trt.serve.triton_repo
from m3trt.serve.app import bind, create_app, uvicorn_server
from m3trt.serve.limits import Limits
from m3trt.serve.server import ServeOptions, load_models, parse_model_specs
limits = Limits()
models = load_models(parse_model_specs([{str(int8_bundle)!r}]), ServeOptions(threads=1))
server = uvicorn_server(create_app(models, limits), limits)
sock = bind("127.0.0.1", 0)
thread = threading.Thread(target=server.run, kwargs={{"sockets": [sock]}}, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.01)
url = "http://127.0.0.1:%d/v2/models/tiny/config" % sock.getsockname()[1]
assert json.loads(urllib.request.urlopen(url).read())["name"] == "tiny"
server.should_exit = True
thread.join(10)
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not bad, bad
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_serve_usage_errors_are_one_line(int8_bundle, tmp_path):
    from click.testing import CliRunner

    from m3trt.cli import main

    cases = [
        ([f"a={int8_bundle}", f"a={int8_bundle}"], "two models named 'a'"),
        ([str(tmp_path / "missing.m3")], "missing.m3"),
        ([str(int8_bundle), "--max-queue", "4", "--max-batch-size", "8"], "--max-queue 4 must be"),
        (["x="], "x=: names no bundle"),
    ]
    for args, reason in cases:
        result = CliRunner().invoke(main, ["serve", *args])
        assert result.exit_code == 2, result.output
        assert reason in result.output and len(result.output.strip().splitlines()) == 1
    # An empty --host listened on every interface; options outside their ranges are click's
    # usage errors, their ranges in --help (--max-pixels 5e8 started a server that sent Pillow's
    # own refusal for every image over its 179 MP limit)
    for option, value in [
        ("--host", ""),
        ("--max-batch-size", "0"),
        ("--max-queue-delay-ms", "nan"),
        ("--timeout", "0"),
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--max-pixels", "500000000"),
    ]:
        result = CliRunner().invoke(main, ["serve", str(int8_bundle), option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


def test_request_timeout_answers_504_and_the_server_goes_on(int8_bundle, images):
    limits = Limits(max_body_bytes=1 << 20, max_pixels=1_000_000, timeout_s=10, max_queue=8)
    options = ServeOptions(max_batch=1, max_delay_ms=0, device="cpu", threads=1, limits=limits)
    (model,) = load_models(parse_model_specs([f"slow={int8_bundle}"]), options)
    gate = threading.Event()
    run = model.annotator.run

    def blocked(images, tags=None):
        gate.wait(10)
        return run(images, tags)

    model.annotator.run = blocked
    _, batch = images
    tensor = {"name": "image", "shape": [1, *batch.shape[1:]], "datatype": "UINT8"}
    tensor["data"] = batch[:1].reshape(-1).tolist()
    body = {"inputs": [tensor], "parameters": {"timeout": 200_000}}  # v2: microseconds
    with running([model], limits) as url:
        start = time.monotonic()
        status, _, answer = post(url, "/v2/models/slow/infer", json.dumps(body).encode())
        assert status == 504 and "0.2 s" in json.loads(answer)["error"]
        assert time.monotonic() - start < 5
        gate.set()
        del body["parameters"]
        assert post(url, "/v2/models/slow/infer", json.dumps(body).encode())[0] == 200


def _stalled_upload(url: str, path: str, length: int = 1000):
    """A client that sends its headers and a few bytes of a body, then nothing."""
    import socket

    host, port = url.split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + b'{"inputs": ['
    )
    return conn


def test_a_stalled_body_times_out_and_the_server_stays_live(int8_bundle):
    """A body that stops arriving is a 408 after the timeout; while such uploads hold every body
    slot, health checks answer at once and a further request waits for a slot (at most the
    timeout; then a 503), instead of reading its body beside them."""
    limits = Limits(max_body_bytes=1 << 20, max_pixels=1_000_000, timeout_s=1.5, max_queue=64)
    models = load_models(
        parse_model_specs([f"tiny={int8_bundle}"]),
        ServeOptions(max_batch=8, max_delay_ms=2, device="cpu", threads=1, limits=limits),
    )
    from m3trt.serve.app import BODIES_AT_ONCE

    with running(models, limits) as url:
        stalled = [_stalled_upload(url, "/v2/models/tiny/infer") for _ in range(BODIES_AT_ONCE)]
        time.sleep(0.3)
        assert get(url, "/v2/health/live")[0] == 200
        start = time.monotonic()
        code, _, body = post(url, "/v2/models/tiny/infer", b"{}")  # waits for a slot, then runs
        assert code == 400 and b"inputs" in body, body
        assert 0.5 < time.monotonic() - start < 8.0  # it waited for a slot, not forever
        for conn in stalled:
            reply = conn.recv(4096)
            conn.close()
            assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
            assert b"did not arrive within the timeout of 1.5 s" in reply


def test_json_requests_are_parsed_off_the_event_loop(served, monkeypatch):
    import asyncio

    import m3trt.serve.app as app

    on_loop: list[bool] = []
    parse = app.parse_infer_request

    def recording(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread: no event loop runs here
            on_loop.append(False)
        return parse(*args, **kwargs)

    monkeypatch.setattr(app, "parse_infer_request", recording)
    post(served, "/v2/models/tiny/infer", b'{"inputs": []}')
    assert on_loop == [False]


class _Transport:
    """The part of an asyncio transport uvicorn's protocol uses; keeps what is written."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.paused = False
        self.closed = False

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_pipelined_requests_queue_a_bounded_number_and_all_are_answered_in_order():
    """uvicorn parsed every pipelined request it read into a queue and read on after each
    answer: a client that never reads its answers grew the server without end. Now one
    connection queues at most MAX_PIPELINED requests plus one slice's."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from m3trt.serve.http_protocol import MAX_PIPELINED, SLICE_BYTES, BoundedPipelineProtocol

    async def echo_path(scope, receive, send):
        body = scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> None:
        config = uvicorn.Config(echo_path, http=BoundedPipelineProtocol, lifespan="off")
        config.load()
        protocol = BoundedPipelineProtocol(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        requests = [f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3000)]
        protocol.data_received(b"".join(requests))  # one read of ~90 KB of requests
        assert len(protocol.pipeline) <= MAX_PIPELINED + SLICE_BYTES // len(requests[0])
        assert transport.paused  # no more is read until the queue drains
        for _ in range(100_000):
            if transport.out.count(b"HTTP/1.1 200 ") == len(requests):
                break
            await asyncio.sleep(0)
        answers = [a.rsplit(b"\r\n\r\n", 1)[-1] for a in transport.out.split(b"HTTP/1.1 ")[1:]]
        assert answers == [f"/{i}".encode() for i in range(len(requests))]
        assert not transport.paused and not protocol.pipeline

    asyncio.run(scenario())


def test_the_server_answers_every_pipelined_request(served):
    import socket

    host, port = served.split(":")
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        got = b""
        while got.count(b"HTTP/1.1 ") < 2000:
            chunk = conn.recv(1 << 20)
            assert chunk, got[-200:]
            got += chunk
    assert got.count(b"HTTP/1.1 200 ") == 2000


def test_a_path_cannot_write_a_line_of_its_own_into_the_log(served, caplog):
    """The log showed the decoded path: %0A began a forged line, %1B a terminal escape."""
    import logging

    forged = "x%0A2026-12-02%2014:00:00%20127.0.0.1%20POST%20/v2/models/tiny/infer%20200"
    with caplog.at_level(logging.INFO, logger="m3trt.serve"):
        assert get(served, f"/v2/models/{forged}")[0] == 404
        assert get(served, "/v2/health/live%1b%5b2J")[0] == 404
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if "%" in r.getMessage()]) < 2:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if "%" in r.getMessage()]
    assert any(forged in line for line in lines) and any("%1b%5b2J" in line for line in lines)
    assert not any(c in line for line in lines for c in "\n\x1b")


def test_a_timeout_parameter_no_float_holds_is_the_servers_timeout(served):
    """A 400-digit ``timeout`` was a 500 (OverflowError turning microseconds into seconds)."""
    body = json.loads(_infer_body([1, 64, 64, 3]))
    body["parameters"] = {"timeout": 10**400}
    code, _, answer = post(served, "/v2/models/tiny/infer", json.dumps(body).encode())
    assert code == 200, answer
    body["parameters"] = {"timeout": -(10**400)}
    code, _, answer = post(served, "/v2/models/tiny/infer", json.dumps(body).encode())
    assert code == 400 and "positive number of microseconds" in json.loads(answer)["error"]


def test_a_client_that_leaves_mid_body_is_a_499_line_not_a_traceback(served, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        conn = _stalled_upload(served, "/v2/models/tiny/infer", length=100_000)
        time.sleep(0.2)
        conn.close()
        deadline = time.monotonic() + 5
        while not any(" 499 " in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_nan_outputs_are_a_500_never_invalid_json(served, images, monkeypatch):
    """A hand-made bundle with broken weights: `annotate` answered a 400 (JSONResponse refused
    NaN, a ValueError) and a JSON v2 infer wrote bare NaN, which is not JSON."""
    from m3trt.runtime.annotator import Annotator

    real = Annotator.run

    def nan_scores(self, images, tags=None):
        outputs = dict(real(self, images, tags))
        outputs["scores"] = np.full_like(outputs["scores"], np.nan)
        return outputs

    monkeypatch.setattr(Annotator, "run", nan_scores)
    _, batch = images
    code, _, body = post(served, "/v2/models/tiny/annotate", _png(64, 64))
    assert code == 500 and "NaN or infinite scores" in json.loads(body)["error"], body
    code, _, body = post(served, "/v2/models/tiny/infer", _infer_body([1, 64, 64, 3]))
    assert code == 500 and "ask for it as binary data" in json.loads(body)["error"], body
    result = triton_infer(httpclient.InferenceServerClient(served), batch[:1], binary=True)
    assert np.isnan(result.as_numpy("scores")).all()  # binary carries NaN as it is


def _raw(url: str, data: bytes, *, close_after: float = 10.0) -> bytes:
    """What the server answers to ``data`` sent as is (until it closes, or ``close_after``)."""
    import socket

    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=close_after) as conn:
        conn.sendall(data)
        got = b""
        try:
            while chunk := conn.recv(1 << 16):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def _json_error(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)["error"]


@pytest.mark.parametrize("where", ["url", "header"])
def test_a_huge_request_head_is_refused_at_once(served, where):
    """One 64 MiB URL held the event loop for 265 s (the parser joins it in quadratic time);
    190 MiB of headers on four connections kept 750 MiB after they left. Heads over 64 KiB are
    a 431 now, cut off as soon as they pass it."""
    from m3trt.serve.http_protocol import MAX_HEAD_BYTES

    big = b"a" * (8 * MAX_HEAD_BYTES)
    head = (
        b"GET /v2/health/live?" + big + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        if where == "url"
        else b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n"
    )
    start = time.monotonic()
    status, error = _json_error(_raw(served, head))
    assert status == 431 and "over 64 KiB" in error
    assert time.monotonic() - start < 5
    assert get(served, "/v2/health/live")[0] == 200
    near = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    assert (
        _raw(
            served, near + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).count(b"HTTP/1.1 200")
        == 2
    )


def test_a_head_that_never_ends_is_a_408_and_frees_the_socket(served, monkeypatch):
    """Requests sent without their blank line held their sockets until the server had no
    file descriptors left; a connection that sends nothing is closed too."""
    from m3trt.serve import http_protocol

    monkeypatch.setattr(http_protocol, "HEAD_TIMEOUT_S", 0.5)
    start = time.monotonic()
    reply = _raw(served, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    status, error = _json_error(reply)
    assert status == 408 and "did not arrive within 0.5 s" in error
    assert _raw(served, b"") == b""  # closed, unanswered
    assert time.monotonic() - start < 5


def test_a_malformed_request_gets_a_json_400_with_the_reason(served):
    """uvicorn answered "Invalid HTTP request received." in plain text."""
    reply = _raw(served, b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n")
    status, error = _json_error(reply)
    assert status == 400 and error.startswith("invalid HTTP request: ") and len(error) > 22


def test_a_body_that_stops_arriving_frees_its_slot_before_the_timeout(served, monkeypatch):
    """Four stalled uploads held every body slot for the whole --timeout: each other request
    waited 30 s behind them. A body idle for BODY_IDLE_S is a 408."""
    from m3trt.serve import limits

    monkeypatch.setattr(limits, "BODY_IDLE_S", 0.5)
    start = time.monotonic()
    conn = _stalled_upload(served, "/v2/models/tiny/infer", length=100_000)
    try:
        reply = conn.recv(4096)
    finally:
        conn.close()
    status, error = _json_error(reply)
    assert status == 408 and "no part of the request body arrived for 0.5 s" in error
    assert time.monotonic() - start < 5  # LIMITS' timeout is 10 s


def test_the_head_timer_waits_while_this_side_is_still_answering(monkeypatch):
    """A pipelined head whose rest waited unread behind a slow answer was taken for a slow
    client: the connection was closed, the slow answer lost."""
    import asyncio
    import socket

    import uvicorn

    from m3trt.serve import http_protocol

    monkeypatch.setattr(http_protocol, "HEAD_TIMEOUT_S", 0.3)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(1.0)
        body = scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app, http=http_protocol.BoundedPipelineProtocol, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /th"
            )
            time.sleep(0.2)
            conn.sendall(b"ird HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert got.count(b"HTTP/1.1 200") == 3, got
        assert got.endswith(b"/third")
    finally:
        server.should_exit = True
        thread.join(10)
