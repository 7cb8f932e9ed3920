"""A look at an ONNX file's top-level nodes in protobuf's wire format, before it is parsed.

Parsing is what costs: a 190 MB file of 20 nested ``If`` nodes (a million subgraph nodes) took
3.5 GB to parse before its first node could be refused, 7.7 GB in ONNX Runtime. m3trt's graphs are
flat: a few hundred nodes, no subgraphs. This walks the ModelProto's graph and its nodes as
length-delimited fields, skipping every payload unread (weights included), and stops at the first
node that holds a subgraph or past ``max_nodes``. Field numbers from onnx.proto: ModelProto.graph 7,
GraphProto.node 1, NodeProto.attribute 5, AttributeProto.g 6 and .graphs 11.

The walk itself is bounded too: stepping through a field costs ~0.4 us in Python, and 64 MiB of
zeros (field 0, invalid) or of ``08 00`` (valid: ``ir_version`` 0, over and over) are 32 million
fields, 12-17 s before the parser refused them. Field number 0 is refused where it is met, the
ModelProto's own fields are capped (an export has ~10-20: version, opsets, graph, metadata) and
so are all the fields stepped through (an M3 graph has ~2,300-3,700; ``BASE_FIELDS`` and
``FIELDS_PER_NODE`` per allowed node leave room for any graph of ``max_nodes`` nodes, and stop a
hostile file within 1-2 s).
"""

from __future__ import annotations

from collections.abc import Iterator

_MODEL_GRAPH, _GRAPH_NODE, _NODE_ATTRIBUTE = 7, 1, 5
_ATTRIBUTE_GRAPHS = frozenset({6, 11})
_LENGTH_DELIMITED = 2
MAX_MODEL_FIELDS = 10_000  # the ModelProto's own fields; an m3trt export has under 20
FIELDS_PER_NODE = 20  # the walk's budget per allowed node; an M3 graph uses ~10-16
BASE_FIELDS = 100_000  # and for the rest: initializers, inputs, outputs, metadata (M3: ~1,000)


class NotProtobuf(ValueError):
    """The bytes are not a well-formed protobuf message."""


class _TooMany(Exception):
    """More fields than any m3trt graph has; the message says which count."""


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


class _Walk:
    """The bytes and how many more fields the walk may step through (shared by every level, so
    no nesting of small messages multiplies the work)."""

    def __init__(self, data: memoryview, max_fields: int) -> None:
        self.data = data
        self.budget = self.left = max_fields

    def fields(
        self, start: int, end: int, cap: int | None = None
    ) -> Iterator[tuple[int, int, int]]:
        """(field number, start, end) of each length-delimited field in data[start:end]; the
        other wire types are stepped over. At most ``cap`` fields in this message."""
        data, at, count = self.data, start, 0
        while at < end:
            count += 1
            self.left -= 1
            if self.left < 0:
                raise _TooMany(
                    f"more than {self.budget:,} protobuf fields (an M3 graph has ~4,000)"
                )
            if cap is not None and count > cap:
                raise _TooMany(f"more than {cap:,} fields in its ModelProto (an export has ~20)")
            key_at = at
            key, at = _varint(data, at, end)
            number, wire = key >> 3, key & 7
            if number == 0:  # protobuf never writes it: not an ONNX file (64 MiB of zeros)
                raise NotProtobuf(f"field number 0 at byte {key_at:,}")
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
    """Why the model's top-level graph is not flat and small, or None. Raises NotProtobuf when
    the bytes are not a plausible ModelProto."""
    walk = _Walk(memoryview(data), BASE_FIELDS + FIELDS_PER_NODE * max_nodes)
    try:
        return _graph_problem(walk, max_nodes)
    except _TooMany as exc:
        return str(exc)


def _graph_problem(walk: _Walk, max_nodes: int) -> str | None:
    nodes = 0
    for number, start, end in walk.fields(0, len(walk.data), MAX_MODEL_FIELDS):
        if number != _MODEL_GRAPH:
            continue
        for field, node_start, node_end in walk.fields(start, end):
            if field != _GRAPH_NODE:
                continue
            nodes += 1
            if nodes > max_nodes:
                return f"more than {max_nodes:,} nodes (an M3 graph has a few hundred)"
            for attribute, a_start, a_end in walk.fields(node_start, node_end):
                if attribute != _NODE_ATTRIBUTE:
                    continue
                if any(f in _ATTRIBUTE_GRAPHS for f, _, _ in walk.fields(a_start, a_end)):
                    return f"node {nodes} holds a subgraph (control flow)"
    return None
