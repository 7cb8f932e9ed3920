"""``bundle.json`` checked against the graphs it describes, field by field, at load.

Hashes tie each artifact to ``bundle.json``, but ``bundle.json`` itself is only as good as its
author: an ``image_size`` edited to 100000 made the runtime allocate a batch of 100000 x 100000
images (killed by the kernel at 24 GB). So before anything is allocated, every field the runtime
sizes buffers from is compared with the ONNX graph: the graph's own m3trt metadata (labels, tag
vocabulary, preprocessing, K_max) and its input/output types and static shapes (DESIGN §3.3). A
graph that stores weights as external data may only point at files that are artifacts of the
bundle (listed in ``bundle.json``, hashed, inside the folder): anything else is refused.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from m3trt.config import MAX_IMAGE_SIZE  # the graph takes S x S images
from m3trt.runtime.onnx_scan import flat_graph_problem

MAX_SOURCE_BYTES = 2 << 30  # protobuf's own limit for one message
MAX_NODES = 100_000  # an M3 graph has a few hundred
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})

# name -> (ONNX element type name, shape after the batch dimension, from the model info)
_UINT8, _FLOAT, _FLOAT16, _INT32, _INT64 = "UINT8", "FLOAT", "FLOAT16", "INT32", "INT64"


def _expected(info: Any) -> tuple[dict[str, tuple[set[str], tuple[int, ...]]], dict[str, Any]]:
    s, c, k = info.image_size, info.num_labels, info.k_max
    inputs = {"image": ({_UINT8}, (s, s, 3))}
    if info.use_tags:
        inputs["tags"] = ({_FLOAT, _FLOAT16}, (info.num_tags,))
    outputs = {
        "scores": ({_FLOAT, _FLOAT16}, (c,)),
        "quantity": ({_FLOAT, _FLOAT16}, ()),
        "k": ({_INT32, _INT64}, ()),
        "topk": ({_INT32, _INT64}, (k,)),
    }
    return inputs, outputs


def _dims(value_info: Any) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _check_values(
    kind: str,
    found: Any,
    expected: dict[str, tuple[set[str], tuple[int, ...]]],
    where: str,
    described_by: str = "bundle.json",
) -> list[str]:
    import onnx

    problems = []
    by_name = {v.name: v for v in found}
    for name, (types, shape) in expected.items():
        value = by_name.get(name)
        if value is None:
            problems.append(f"the graph has no {kind} {name!r}")
            continue
        elem = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if elem not in types:
            problems.append(f"{kind} {name!r} is {elem}, {described_by} implies {'/'.join(types)}")
        dims = _dims(value)
        if dims[1:] != list(shape):
            problems.append(
                f"{kind} {name!r} has shape {dims}, {described_by} implies [batch, "
                f"{', '.join(map(str, shape))}]".replace(", ]", "]")
            )
    extra = sorted(set(by_name) - set(expected)) if kind == "input" else []
    if extra:
        problems.append(f"the graph has inputs {described_by} does not describe: {extra}")
    return problems


def _check_metadata(info: Any, props: dict[str, str], where: str) -> list[str]:
    """bundle.json's model section against the graph's own m3trt metadata (when it has it)."""
    import json

    problems = []
    pairs = (
        ("m3trt.label_names", "label_names", info.label_names),
        ("m3trt.tag_vocab", "tag_vocab", info.tag_vocab),
        ("m3trt.preprocessing", "preprocessing", info.preprocessing),
    )
    for key, field, value in pairs:
        if key not in props:
            continue
        try:
            theirs = json.loads(props[key])
        except (ValueError, RecursionError):
            problems.append(f"its metadata {key} is not valid JSON")
            continue
        if theirs != value:
            problems.append(f"bundle.json's {field} differs from the graph's")
    if "m3trt.model" in props:
        try:
            flags = json.loads(props["m3trt.model"])
        except (ValueError, RecursionError):
            flags = None
        if not isinstance(flags, dict):
            problems.append("its metadata m3trt.model is not a JSON object")
        else:
            for name in ("k_max", "use_tags", "quantity_head"):
                if name in flags and flags[name] != getattr(info, name):
                    problems.append(
                        f"bundle.json's {name} is {getattr(info, name)!r}, "
                        f"the graph's is {flags[name]!r}"
                    )
    return problems


def external_files(model: Any) -> set[str]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    files = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            entry = {e.key: e.value for e in tensor.external_data}
            files.add(entry.get("location", ""))
    return files


def check_model_info(info: Any, where: str) -> None:
    """Bounds that need no graph: sizes the runtime allocates from."""
    from m3trt.runtime.model_io import BundleError

    if not 1 <= info.image_size <= MAX_IMAGE_SIZE:
        raise BundleError(
            f"{where}: preprocessing.image_size {info.image_size} is outside "
            f"1..{MAX_IMAGE_SIZE}; rebuild the bundle with `m3trt build`"
        )


def check_graph(
    info: Any, graph: Path, where: str, folder: Path, artifact_files: Collection[str]
) -> None:
    """Raise BundleError (one line) if ``graph`` is not the graph ``info`` describes, or if it
    reads external data from a file that is not one of ``artifact_files`` inside ``folder``."""
    import onnx

    from m3trt.runtime.model_io import REBUILD, BundleError

    check_model_info(info, where)
    try:
        data = _read_graph(graph, "ONNX graph", REBUILD)  # checked already: a file of the bundle
    except FileNotFoundError:  # removed since
        raise BundleError(f"{graph}: ONNX graph is missing; {REBUILD}") from None
    try:
        flat = flat_graph_problem(data, MAX_NODES)  # before parsing: parsing is what costs
        if flat:
            raise BundleError(f"{where}: {graph.name} is not an m3trt graph: {flat}")
        model = onnx.load_model_from_string(data)
    except BundleError:
        raise
    except Exception as exc:  # protobuf raises assorted types on garbage
        detail = " ".join(str(exc).split())[:200]
        raise BundleError(f"{graph}: not a readable ONNX graph ({detail})") from None
    inputs, outputs = _expected(info)
    problems = _check_metadata(info, {p.key: p.value for p in model.metadata_props}, where)
    problems += _check_values("input", model.graph.input, inputs, where)
    problems += _check_values("output", model.graph.output, outputs, where)
    allowed = {os.path.normpath(f) for f in artifact_files}
    root = os.path.realpath(folder)
    for location in sorted(external_files(model)):
        target = os.path.realpath(os.path.join(graph.parent, location))
        relative = os.path.relpath(target, root)
        if _climbs(relative) or os.path.isabs(location):
            problems.append(f"external data {location!r} lies outside the bundle")
        elif os.path.normpath(relative) not in allowed:
            problems.append(f"external data {location!r} is not an artifact (not hashed)")
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        raise BundleError(f"{where}: does not match {graph.name}: {shown}; rebuild the bundle")


def oversize(path: Path | str, what: str, size: int, fix: str) -> str:
    """The one line for a graph past protobuf's limit: refused before it is hashed or read."""
    limit = f"protobuf's limit of {MAX_SOURCE_BYTES:,} bytes ({MAX_SOURCE_BYTES / 2**30:g} GiB)"
    return f"{path}: {what} of {size:,} bytes is over {limit} for one graph; {fix}"


def _read_graph(path: Path, what: str, fix: str) -> bytes:
    """The whole file (protobuf parses only whole messages), refused past protobuf's own limit
    for one message before any of it is read: a bundle's graph is always one file (build reads
    external data into it), and a 3 GiB sparse model.onnx was read whole (3.2 GB resident, 511 s
    of scanning) before being refused. FileNotFoundError passes through."""
    from m3trt.data.safe_open import open_regular, os_reason
    from m3trt.runtime.model_io import BundleError

    with open_regular(path, what) as f:  # a FIFO or a device: one line
        size = os.fstat(f.fileno()).st_size
        if size > MAX_SOURCE_BYTES:
            raise BundleError(oversize(path, what, size, fix))
        try:
            data = f.read(MAX_SOURCE_BYTES + 1)  # capped again: a file may grow after fstat
        except OSError as exc:
            raise BundleError(f"{path}: cannot read {what} ({os_reason(exc)}); {fix}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise BundleError(oversize(path, what + " (grown while read)", len(data), fix))
    return data


def check_source_graph(path: Path) -> Any:
    """An .onnx file given to ``build`` or ``calibrate``: the ModelInfo of its m3trt metadata,
    after checking that the graph is what that metadata describes, that it is plain (no control
    flow, no custom operators: m3trt's exports have none; 20 nested ``If`` nodes in 190 MB took
    7.7 GB before ONNX Runtime gave up) and that its external data are regular files in its own
    folder. Raises BundleError (one line, exit 2) otherwise."""
    import onnx

    from m3trt.runtime.model_io import EXPORT, BundleError, ModelInfo

    try:
        data = _read_graph(path, "ONNX model", EXPORT)
    except FileNotFoundError:
        raise BundleError(f"{path}: ONNX model not found; {EXPORT}") from None
    try:
        problems = [flat] if (flat := flat_graph_problem(data, MAX_NODES)) else []
        if not problems:  # parsed only once the scan passed: parsing is what costs
            model = onnx.load_model_from_string(data)  # its external data is not read here
            problems = _custom_operators(model.graph)
    except Exception as exc:  # protobuf raises assorted types on garbage
        detail = " ".join(str(exc).split())[:200]
        raise BundleError(f"{path}: not a readable ONNX model ({detail}); {EXPORT}") from None
    if problems:
        raise BundleError(f"{path}: not an m3trt export: {problems[0]}; {EXPORT}")
    info = ModelInfo.from_onnx_metadata({p.key: p.value for p in model.metadata_props}, str(path))
    check_model_info(info, str(path))
    inputs, outputs = _expected(info)
    where, metadata = str(path), "its m3trt metadata"
    problems = _check_values("input", model.graph.input, inputs, where, metadata)
    problems += _check_values("output", model.graph.output, outputs, where, metadata)
    problems += [_outside(path, location) for location in sorted(external_files(model))]
    problems = [p for p in problems if p]
    if problems:
        raise BundleError(f"{path}: {'; '.join(problems[:3])}")
    return info


def _custom_operators(graph: Any) -> list[str]:
    for node in graph.node:
        if node.domain == "com.microsoft":  # a bundle's engine graph, fused for ONNX Runtime
            return [
                f"node {node.name!r} is ONNX Runtime's {node.op_type}: the graph was optimized "
                "for one engine; build from the plain graph (a bundle's model.onnx)"
            ]
        if node.domain not in STANDARD_DOMAINS:
            return [f"node {node.name!r} is a {node.domain}::{node.op_type} operator"]
    return []


def _outside(path: Path, location: str) -> str:
    """Why external data at ``location`` may not be read ('' when it may): ONNX Runtime and onnx
    refuse escaping paths too, but as a traceback, and only when the weights are loaded."""
    import stat

    from m3trt.data.safe_open import file_kind

    folder = os.path.realpath(path.parent)
    target = os.path.realpath(os.path.join(path.parent, location))
    if os.path.isabs(location) or _climbs(os.path.relpath(target, folder)):
        return f"external data {location!r} lies outside the model's folder"
    try:
        mode = os.stat(target).st_mode
    except OSError as exc:
        return f"external data {location!r}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"external data {location!r} is {file_kind(mode)}, not a regular file"
    return ""


def _climbs(relative: str) -> bool:
    """Whether a relative path leaves its folder ('..weights.bin' is a name, not a climb)."""
    return relative == os.pardir or relative.startswith(os.pardir + os.sep)


def source_digest(path: Path) -> str:
    """sha256 over an .onnx file and its external data, in order: the calibration cache's key
    (the file alone missed weights changed in its external data)."""
    import hashlib

    import onnx

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        model = onnx.load(f, load_external_data=False)
        f.seek(0)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    for location in sorted(external_files(model)):
        digest.update(b"\0" + location.encode())
        with open(os.path.join(path.parent, location), "rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
