"""``m3trt inspect NAME.m3``: what a bundle holds, readable by a person or a script.

Plain text without square-bracket lists, so it is safe to print through rich (still, print it with
``markup=False``: label names are user data). No torch, no onnx: it reads ``bundle.json`` only.
"""

from __future__ import annotations

from typing import Any

from m3trt.errors import terminal_safe
from m3trt.runtime.bundle import Bundle

INDENT = "  "
SHOWN_LABELS = 5
SHOWN_ITEMS = 8  # longer lists in provenance/accuracy/latency are cut with "(+N more)"


def describe_bundle(bundle: Bundle) -> str:
    """A multi-line report: identity, model, artifacts, provenance, accuracy, latency, runtime."""
    sections = [
        _header(bundle),
        _section("model", _model_lines(bundle)),
        _section("artifacts", _artifact_lines(bundle)),
        _section("provenance", _dict_lines(bundle.provenance)),
        _section("accuracy vs FP32 reference", _dict_lines(bundle.accuracy)),
        _section("latency", _dict_lines(bundle.latency)),
        _section("runtime (engine the build measured fastest)", _dict_lines(bundle.runtime)),
    ]
    if bundle.extra:
        sections.append(_section("extra", _dict_lines(bundle.extra)))
    return printable("\n\n".join(sections)) + "\n"


def printable(text: str) -> str:
    """Text from bundle.json made safe for a terminal, its line breaks kept."""
    return terminal_safe(text, keep_newlines=True)


def inspect_json(bundle: Bundle) -> dict[str, Any]:
    """The machine-readable twin of ``describe_bundle``: ``bundle.json`` plus where it lives."""
    return {"path": str(bundle.path), **bundle.to_json()}


def _header(bundle: Bundle) -> str:
    return _table(
        [
            ("bundle", f"{bundle.name} ({bundle.path})"),
            ("target", bundle.target),
            ("precision", bundle.precision),
            ("runs", bundle.engine_artifact.file),
            ("schema", str(bundle.schema_version)),
        ]
    )


def _section(title: str, lines: list[str]) -> str:
    body = lines or [INDENT + "(none)"]
    return "\n".join([title, *body])


def _model_lines(bundle: Bundle) -> list[str]:
    m = bundle.model
    pre = m.preprocessing
    names = ", ".join(m.label_names[:SHOWN_LABELS])
    more = f", ... (+{m.num_labels - SHOWN_LABELS} more)" if m.num_labels > SHOWN_LABELS else ""
    image = f"{m.image_size}x{m.image_size}"
    if "resize" in pre:
        image += f", {pre['resize']} resize"
    rows = [
        ("backbone", m.backbone),
        ("multi-scale", _value(m.multi_scale)),
        ("tags", f"yes, {m.num_tags}-tag vocabulary" if m.use_tags else "no (visual only)"),
        ("quantity head", _value(m.quantity_head)),
        ("labels", f"{m.num_labels}: {names}{more}"),
        ("image size", image),
        ("mean / std", f"{_value(pre.get('mean'))} / {_value(pre.get('std'))}"),
        ("K_max", str(m.k_max)),
    ]
    return _table(rows, INDENT).splitlines()


def _artifact_lines(bundle: Bundle) -> list[str]:
    running = bundle.engine_artifact.role
    rows = [
        [
            role,
            art.file,
            _human_bytes(art.bytes),
            art.format or "-",
            art.precision or "-",
            f"sha256 {art.sha256[:12]}",
            "(runs)" if role == running else "",
        ]
        for role, art in sorted(bundle.artifacts.items())
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    return [
        (INDENT + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def _dict_lines(data: dict[str, Any], depth: int = 1) -> list[str]:
    """Any nested dict, one key per line, sub-dicts indented under their key."""
    lines: list[str] = []
    flat = [(str(k), v) for k, v in sorted(data.items()) if not isinstance(v, dict)]
    if flat:
        lines += _table([(k, _value(v)) for k, v in flat], INDENT * depth).splitlines()
    for key, value in sorted(data.items()):
        if isinstance(value, dict):
            lines.append(f"{INDENT * depth}{key}")
            lines += _dict_lines(value, depth + 1) or [INDENT * (depth + 1) + "(none)"]
    return lines


def _table(rows: list[tuple[str, str]], indent: str = "") -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in rows)


def _value(value: Any) -> str:
    """Short text for one value: 4 significant digits for floats, yes/no, cut long lists."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_value(v) for v in value[:SHOWN_ITEMS])
        extra = len(value) - SHOWN_ITEMS
        return shown + (f", ... (+{extra} more)" if extra > 0 else "") if value else "(empty)"
    return str(value)


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"
