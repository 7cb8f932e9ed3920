"""TensorRT's ONNX parser errors, turned into one line that says what and the way out.

Nothing here imports TensorRT or CUDA at module level: the policy is plain Python, testable
without a GPU (tests/test_tensorrt_builder.py runs it against fakes shaped like TensorRT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from m3trt.tensorrt.environment import CPU_FALLBACK

SHOWN_PARSER_ERRORS = 3


@dataclass(frozen=True)
class ParserIssue:
    """One ONNX parser error, copied out of TensorRT's ``ParserError``."""

    node: int
    node_name: str
    operator: str
    code: str
    desc: str


def format_parser_errors(onnx_path: str | Path, version: str, issues: Sequence[ParserIssue]) -> str:
    """One line: which nodes TensorRT could not parse, why, and what to do."""
    shown = []
    for issue in issues[:SHOWN_PARSER_ERRORS]:
        where = f"node '{issue.node_name}' ({issue.operator})" if issue.node_name else "the graph"
        shown.append(f"{where}: {issue.code}: {one_line(issue.desc)}")
    more = len(issues) - len(shown)
    detail = "; ".join(shown) or "no details reported"
    if more > 0:
        detail += f"; and {more} more"
    return (
        f"{onnx_path}: TensorRT {version} cannot parse the graph: {detail}; "
        f"try a newer TensorRT, or {CPU_FALLBACK}"
    )


def one_line(text: str) -> str:
    return " ".join(str(text).split())
