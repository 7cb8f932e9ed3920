"""The v2 codec, the request limits and the batcher, without a server or a model."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib

import numpy as np
import pytest

from m3trt.serve.batcher import Batcher, QueueFull
from m3trt.serve.limits import LimitError, read_body
from m3trt.serve.protocol import (
    ProtocolError,
    RequestedOutput,
    encode_infer_response,
    parse_infer_request,
)


def binary_request(arrays: dict[str, np.ndarray], names: dict[str, str], extra=None):
    header = {"inputs": [], **(extra or {})}
    for name, array in arrays.items():
        header["inputs"].append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": names[name],
                "parameters": {"binary_data_size": array.nbytes},
            }
        )
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for a in arrays.values()), len(head)


def test_binary_and_json_inputs_decode_to_the_same_arrays():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    tags = rng.random((2, 5)).astype(np.float32)
    body, length = binary_request(
        {"image": image, "tags": tags}, {"image": "UINT8", "tags": "FP32"}
    )
    parsed = parse_infer_request(body, length)
    np.testing.assert_array_equal(parsed.inputs["image"], image)
    np.testing.assert_array_equal(parsed.inputs["tags"], tags)
    nested = {
        "id": "r1",
        "inputs": [
            {"name": "image", "shape": [2, 4, 4, 3], "datatype": "UINT8", "data": image.tolist()},
            {"name": "tags", "shape": [2, 5], "datatype": "FP32", "data": tags.ravel().tolist()},
        ],
        "outputs": [{"name": "k"}, {"name": "scores", "parameters": {"binary_data": True}}],
    }
    parsed = parse_infer_request(json.dumps(nested).encode())
    np.testing.assert_array_equal(parsed.inputs["image"], image)
    np.testing.assert_array_equal(parsed.inputs["tags"], tags)
    assert parsed.id == "r1"
    assert parsed.outputs == [RequestedOutput("k", False), RequestedOutput("scores", True)]


def test_response_encoding_json_and_binary():
    outputs = {
        "scores": np.array([[0.5, 0.25]], np.float32),
        "k": np.array([1], np.int32),
    }
    body, headers = encode_infer_response("m", outputs, None, binary_default=False)
    data = json.loads(body)
    assert headers == {"content-type": "application/json"}
    assert data["outputs"][0] == {"name": "scores", "datatype": "FP32", "shape": [1, 2],
                                  "data": [0.5, 0.25]}  # fmt: skip
    wanted = [RequestedOutput("k", False), RequestedOutput("scores", True)]
    body, headers = encode_infer_response("m", outputs, wanted, binary_default=False)
    length = int(headers["inference-header-content-length"])
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["k", "scores"]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), [0.5, 0.25])


@pytest.mark.parametrize(
    ("body", "length", "reason"),
    [
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": []}]}', None,
         "not >= 0"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}', None,
         "BYTES is not supported"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}]}', None,
         "must be integers"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP16", "data": [1e9]}]}', None,
         "beyond FP16"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', None,
         "numbers only"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}xxxx', 10**6,
         "Inference-Header-Content-Length is 1000000"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}xxxx', 74,
         "declare 0 bytes but 4 follow"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], '
         b'"outputs": [{"name": "s", "parameters": {"classification": 3}}]}', None,
         "classification extension"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], '
         b'"outputs": [{"name": "k"}, {"name": "k"}]}', None,
         "output 'k' is requested twice"),  # it came back twice
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ' + b"[" * 5000
         + b"]" * 5000 + b"}]}", None, "nested too deeply"),
    ],
)  # fmt: skip
def test_protocol_errors_are_one_line(body, length, reason):
    with pytest.raises(ProtocolError) as caught:
        parse_infer_request(body, length)
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_shape_cannot_claim_more_than_the_bytes_sent():
    # A tiny body declaring a 1e12-element tensor is refused before anything is allocated.
    header = {"inputs": [{"name": "image", "shape": [10**6, 10**6], "datatype": "UINT8",
                          "parameters": {"binary_data_size": 10**12}}]}  # fmt: skip
    head = json.dumps(header).encode()
    with pytest.raises(ProtocolError, match="binary data ends after 3 of 1000000000000 bytes"):
        parse_infer_request(head + b"abc", len(head))
    header["inputs"][0]["parameters"]["binary_data_size"] = 3
    head = json.dumps(header).encode()
    with pytest.raises(ProtocolError, match="needs 1000000000000 bytes"):
        parse_infer_request(head + b"abc", len(head))


async def _chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_read_body_limits_plain_and_compressed():
    run = asyncio.run
    assert run(read_body(_chunks(b"x" * 5000), 5000)) == b"x" * 5000
    with pytest.raises(LimitError, match="over the limit of 4999 bytes") as caught:
        run(read_body(_chunks(b"x" * 5000), 4999))
    assert caught.value.status == 413
    payload = b"{" + b" " * 100_000 + b"}"
    assert run(read_body(_chunks(gzip.compress(payload)), 200_000, "gzip")) == payload
    assert run(read_body(_chunks(zlib.compress(payload)), 200_000, "deflate")) == payload
    bomb = gzip.compress(b"\0" * (16 << 20), 1)  # 16 MiB in ~70 KiB
    with pytest.raises(LimitError, match="after decompression") as caught:
        run(read_body(_chunks(bomb), 1 << 20, "gzip"))
    assert caught.value.status == 413
    with pytest.raises(LimitError, match="truncated"):
        run(read_body(_chunks(gzip.compress(payload)[:-20]), 200_000, "gzip"))
    with pytest.raises(LimitError, match="not supported") as caught:
        run(read_body(_chunks(b"x"), 10, "br"))
    assert caught.value.status == 415


def _double(feeds):
    return {"y": feeds["x"] * 2}


def test_batcher_batches_concurrent_requests_and_splits_results():
    calls: list[int] = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        time.sleep(0.02)
        return _double(feeds)

    async def main():
        batcher = Batcher(run, max_batch=8, max_delay_s=0.005, max_queue=64)
        batcher.start()
        rows = [1, 2, 1, 3, 1, 1, 2, 1, 1, 1]
        requests = [np.full((n, 2), i, np.float32) for i, n in enumerate(rows)]
        results = await asyncio.gather(*(batcher.submit({"x": r}, len(r)) for r in requests))
        await batcher.close()
        return requests, results

    requests, results = asyncio.run(main())
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request * 2)
    assert sum(calls) == 14 and max(calls) <= 8 and len(calls) < 10


def test_idle_batcher_does_not_wait_for_company():
    async def main():
        batcher = Batcher(_double, max_batch=16, max_delay_s=0.5, max_queue=64)
        batcher.start()
        start = time.perf_counter()
        await batcher.submit({"x": np.ones((1, 2), np.float32)}, 1)
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 0.25  # far below the 0.5 s hold


def test_full_queue_refuses_and_timeouts_leave_the_queue():
    gate = threading.Event()

    def blocked(feeds):
        gate.wait(10)
        return _double(feeds)

    async def main():
        batcher = Batcher(blocked, max_batch=2, max_delay_s=0, max_queue=2)
        batcher.start()
        x = {"x": np.ones((1, 2), np.float32)}
        running = asyncio.ensure_future(batcher.submit(x, 1))
        await asyncio.sleep(0.05)  # taken by the engine
        queued = [asyncio.ensure_future(batcher.submit(x, 1)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit(x, 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queued[0], 0.01)  # a client that gave up
        gate.set()
        await running
        await queued[1]
        await batcher.close()
        with pytest.raises(QueueFull, match="shutting down"):
            await batcher.submit(x, 1)

    asyncio.run(main())


def test_engine_failure_reaches_every_request_of_the_batch():
    def broken(_feeds):
        raise RuntimeError("engine fell over")

    async def main():
        batcher = Batcher(broken, max_batch=4, max_delay_s=0, max_queue=8)
        batcher.start()
        x = {"x": np.ones((1, 2), np.float32)}
        results = await asyncio.gather(
            *(batcher.submit(x, 1) for _ in range(3)), return_exceptions=True
        )
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "fell over" in str(r) for r in results)
