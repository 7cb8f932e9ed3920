"""A look at an ONNX file's top-level nodes in protobuf's wire format, before it is parsed.

Parsing is what costs: a 190 MB file of 20 nested ``If`` nodes (a million subgraph nodes) took
3.5 GB to parse before its first node could be refused, 7.7 GB in ONNX Runtime. m3trt's graphs are
flat: a few hundred nodes, no subgraphs. This walks the ModelProto's graph and its nodes as
length-delimited fields, skipping every payload unread (weights included), and stops at the first
node that holds a subgraph or past ``max_nodes``. Field numbers from onnx.proto: ModelProto.graph 7,
GraphProto.node 1, NodeProto.attribute 5, AttributeProto.g 6 and .graphs 11.
"""

from __future__ import annotations

from collections.abc import Iterator

_MODEL_GRAPH, _GRAPH_NODE, _NODE_ATTRIBUTE = 7, 1, 5
_ATTRIBUTE_GRAPHS = frozenset({6, 11})
_LENGTH_DELIMITED = 2


class NotProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while at < end and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise NotProtobuf("a varint runs past its message")


def _fields(data: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field in data[start:end]; the other
    wire types are stepped over."""
    at = start
    while at < end:
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(data, at, end)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == _LENGTH_DELIMITED:
            length, at = _varint(data, at, end)
            if at + length > end:
                raise NotProtobuf("a field runs past its message")
            yield number, at, at + length
            at += length
        else:
            raise NotProtobuf(f"wire type {wire} (groups are not used by ONNX)")
        if at > end:
            raise NotProtobuf("a field runs past its message")


def flat_graph_problem(data: bytes | memoryview, max_nodes: int) -> str | None:
    """Why the model's top-level graph is not flat and small, or None."""
    view = memoryview(data)
    nodes = 0
    for number, start, end in _fields(view, 0, len(view)):
        if number != _MODEL_GRAPH:
            continue
        for field, node_start, node_end in _fields(view, start, end):
            if field != _GRAPH_NODE:
                continue
            nodes += 1
            if nodes > max_nodes:
                return f"more than {max_nodes:,} nodes (an M3 graph has a few hundred)"
            for attribute, a_start, a_end in _fields(view, node_start, node_end):
                if attribute != _NODE_ATTRIBUTE:
                    continue
                if any(f in _ATTRIBUTE_GRAPHS for f, _, _ in _fields(view, a_start, a_end)):
                    return f"node {nodes} holds a subgraph (control flow)"
    return None
