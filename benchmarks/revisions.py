"""What the side-by-side benchmarks share: this checkout's revision, another revision's
``m3trt`` package exported to a folder, and a child process timed against either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def export_revision(ref: str, dest: Path) -> Path:
    """``ref``'s m3trt package under ``dest`` (``git archive``; nothing else is touched)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref, "m3trt"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_child(code_root: Path, source: str, *args: str) -> str:
    """stdout of ``python -c source args`` importing m3trt from ``code_root``."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    done = subprocess.run(
        [sys.executable, "-c", source, *args],
        env=env,
        cwd=code_root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def publish(name: str, result: dict, lines: list[str]) -> None:
    """``results/NAME.json`` (the figures) and ``results/NAME.md`` (``lines``), and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
