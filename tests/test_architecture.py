"""The house's shape: no import cycle in m3trt (module-level and function-level imports alike),
and the runtime path never imports torch (checked in a fresh interpreter per command)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import m3trt

ROOT = Path(m3trt.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The m3trt module an import names (``from m3trt.a import b`` may name ``m3trt.a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            for target in targets:
                if target.startswith("m3trt"):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name and not name.startswith(f"{resolved}."):
                        graph[name].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("command", ["infer", "bench", "eval", "inspect", "doctor"])
def test_runtime_commands_do_not_import_torch(command, tmp_path, int8_bundle, tiny_data):
    """Each command really runs on a bundle, in a fresh interpreter, and torch stays unloaded."""
    argv = {
        "infer": ["infer", int8_bundle, tiny_data.parent / "images", "-o", tmp_path / "r.jsonl"],
        "bench": ["bench", int8_bundle, "--batch-sizes", "2", "--warmup", "0", "--duration", "0.1"],
        "eval": ["eval", int8_bundle, tiny_data, "--split", "test"],
        "inspect": ["inspect", int8_bundle, "--no-verify"],
        "doctor": ["doctor"],
    }[command]
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from m3trt.cli import main\n"
        f"result = CliRunner().invoke(main, ['-q', *{[str(a) for a in argv]!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
