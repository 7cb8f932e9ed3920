"""The v2 inference protocol's tensors on the wire: JSON and Triton's binary data extension.

Framework-free codec, so it is tested without a server. A request body is a JSON header,
optionally followed by raw tensor bytes (``Inference-Header-Content-Length`` says where the JSON
ends; each binary input declares ``parameters.binary_data_size``). Everything a client sends is
checked against the body before any array is built: a shape may not claim more elements than the
bytes that came with it, so a small request cannot make the server allocate a large array.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3trt.runtime.model_io import one_line

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""v2 datatype names -> numpy (little-endian on the wire, as numpy stores them here). BYTES and
BF16 are not used by m3trt graphs and are refused with a reason."""

_NAMES = {dtype: name for name, dtype in DATATYPES.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 8


class ProtocolError(ValueError):
    """A request the protocol does not allow; the message is one line, sent back with a 400."""


def datatype_name(dtype: np.dtype | type) -> str:
    """numpy dtype -> v2 datatype name (``FP32``, ``UINT8``...)."""
    try:
        return _NAMES[np.dtype(dtype)]
    except KeyError:
        raise ProtocolError(f"no v2 datatype for numpy {np.dtype(dtype)}") from None


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded ``POST .../infer`` body."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool  # request-level default (``parameters.binary_data_output``)
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer body; ``header_length`` is the ``Inference-Header-Content-Length`` value."""
    if not body:
        raise ProtocolError("the request body is empty; send a JSON infer request")
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
        )
    header = _json_object(body[:header_length])
    binary = memoryview(body)[header_length:]
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    parameters = _parameters(header, "request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for raw in raw_inputs:
        name, array, used = _decode_input(raw, binary, offset)
        if name in inputs:
            raise ProtocolError(f"input {name!r} given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise ProtocolError(
            f"the binary inputs declare {offset} bytes but {len(binary)} follow the JSON header"
        )
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    return InferRequest(
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs"), binary_default),
        binary_output=binary_default,
        id=request_id,
        parameters=parameters,
    )


def _json_object(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        value = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer longer than Python converts
        reason = one_line(exc).split(";")[0][:120]  # not the advice to Python programmers
        raise ProtocolError(f"the request is not usable JSON: {reason}") from None
    except RecursionError:
        raise ProtocolError("the request JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise ProtocolError("the request must be a JSON object")
    return value


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    value = obj.get("parameters", {})
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} 'parameters' must be a JSON object")
    return value


def _decode_input(raw: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(raw, dict):
        raise ProtocolError("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError("each input needs a 'name' string")
    shape = _shape(raw.get("shape"), name)
    dtype = _dtype(raw.get("datatype"), name)
    count = math.prod(shape)
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise ProtocolError(f"input {name!r} has both 'data' and binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"input {name!r}: shape {shape} of {_NAMES[dtype]} needs "
                f"{count * dtype.itemsize} bytes, binary_data_size says {size}"
            )
        if offset + size > len(binary):
            raise ProtocolError(
                f"input {name!r}: binary data ends after {len(binary) - offset} of {size} bytes"
            )
        flat = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<"))
        return name, _finite(flat.astype(dtype, copy=True).reshape(shape), name), size
    if "data" not in raw:
        raise ProtocolError(f"input {name!r} has neither 'data' nor binary_data_size")
    return name, _from_json_data(raw["data"], shape, dtype, name), 0


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    """Float inputs hold finite numbers: a NaN tag weight would come back as NaN scores."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise _not_finite(name, array.dtype)
    return array


def _not_finite(name: str, dtype: np.dtype) -> ProtocolError:
    return ProtocolError(
        f"input {name!r}: holds a value that is not a finite number "
        f"(NaN, an infinity, or beyond {_NAMES[dtype]}'s range)"
    )


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of at most {MAX_DIMS} ints")
    for dim in value:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ProtocolError(f"input {name!r}: shape {value} has a dimension that is not >= 0")
    return value


def _dtype(value: Any, name: str) -> np.dtype:
    if value in ("BYTES", "BF16"):
        raise ProtocolError(f"input {name!r}: datatype {value} is not supported by m3trt models")
    if not isinstance(value, str) or value not in DATATYPES:
        raise ProtocolError(
            f"input {name!r}: unknown datatype {value!r} (one of {', '.join(DATATYPES)})"
        )
    return DATATYPES[value]


def _from_json_data(data: Any, shape: list[int], dtype: np.dtype, name: str) -> np.ndarray:
    """JSON numbers (flat or nested row-major) -> an array of ``shape``, range-checked."""
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: 'data' must be a list")
    flat = _flatten(data, name)
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(
            f"input {name!r}: shape {shape} holds {count} elements but 'data' has {len(flat)}"
        )
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            raise ProtocolError(f"input {name!r}: BOOL data must be true/false")
        return np.array(flat, dtype=dtype).reshape(shape)
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in flat):
        raise ProtocolError(f"input {name!r}: 'data' must hold numbers only")
    if dtype.kind in "iu":
        if any(isinstance(v, float) and not v.is_integer() for v in flat):
            raise ProtocolError(f"input {name!r}: {_NAMES[dtype]} data must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise ProtocolError(
                f"input {name!r}: values outside {_NAMES[dtype]}'s range {info.min}..{info.max}"
            )
        return np.array([int(v) for v in flat], dtype=dtype).reshape(shape)
    try:
        with np.errstate(over="ignore"):
            array = np.array(flat, dtype=np.float64).astype(dtype)
    except OverflowError:  # a JSON integer of hundreds of digits: no float holds it
        raise _not_finite(name, dtype) from None
    return _finite(array, name).reshape(shape)


def _flatten(data: list[Any], name: str) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) > MAX_DIMS:
                    raise ProtocolError(f"input {name!r}: 'data' is nested too deeply")
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list")
    result = []
    for raw in value:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError("each requested output needs a 'name' string")
        params = _parameters(raw, f"output {raw['name']!r}")
        if "classification" in params:
            raise ProtocolError(
                "the classification extension is not supported: request 'scores' and 'topk', "
                "or POST the image to /annotate for labels"
            )
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {raw['name']!r}: binary_data must be true or false")
        if any(r.name == raw["name"] for r in result):  # it came back twice
            raise ProtocolError(f"output {raw['name']!r} is requested twice")
        result.append(RequestedOutput(raw["name"], binary))
    return result


class OutputNotJSON(Exception):
    """The model's own output cannot be written as JSON: the server's fault (500), not the
    request's."""


def encode_infer_response(
    model_name: str,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput] | None,
    *,
    binary_default: bool,
    request_id: str | None = None,
    model_version: str = "1",
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as the v2 response; returns (body, extra headers)."""
    wanted = requested or [RequestedOutput(name, binary_default) for name in outputs]
    tensors, chunks = [], []
    for item in wanted:
        array = np.ascontiguousarray(outputs[item.name])
        tensor: dict[str, Any] = {
            "name": item.name,
            "datatype": datatype_name(array.dtype),
            "shape": list(array.shape),
        }
        if item.binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise OutputNotJSON(
                    f"output {item.name!r} holds NaN or infinite values, which JSON cannot "
                    "carry (the bundle's weights may be broken); ask for it as binary data"
                )
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = tensors
    header = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH.lower(): str(len(header)),
    }
