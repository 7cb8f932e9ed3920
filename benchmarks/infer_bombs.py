"""Peak memory of `m3trt infer` on a folder of decompression bombs (issue 10, item 7).

A bomb here is a real, decodable RGBA PNG of 10000 x 9999 pixels (just under the default
--max-pixels of 100 million) that compresses to a few hundred KB: a hostile folder can hold
thousands. Without a decode budget every worker thread decodes one at once (1+ GB each); with
it (`--decode-memory`, default 1024 MiB) large decodes wait their turn.

Each contender is one `m3trt infer` process on the same folder, run one after the other in this
script; peak RSS is the kernel's ru_maxrss for that process (wait4). Usage:

    .venv/bin/python benchmarks/infer_bombs.py [--bundle NAME.m3] [--bombs 8] [--unbounded]

Without --bundle a tiny FP32 CPU bundle is built first (synthetic data, 1 epoch, 64 px): the
model is not what is measured. --unbounded adds the run without a budget (today's behaviour on
main; it needs about 1.3 GB per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

BUDGET_GIB = 1.5
ROOT = Path(__file__).resolve().parent.parent
M3 = [sys.executable, "-m", "m3trt.cli", "-q"]


def png_bomb(path: Path, width: int, height: int) -> int:
    """A valid RGBA PNG, all pixels transparent black; returns its size in bytes."""
    row = b"\x00" * (1 + 4 * width)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
    path.write_bytes(data + chunk(b"IEND", b""))
    return path.stat().st_size


def tiny_bundle(work: Path) -> Path:
    data, ckpt, bundle = work / "data", work / "ckpt", work / "tiny.m3"
    steps = [
        ["data", "synth", str(data), "--n", "96", "--size", "64", "--seed", "1"],
        ["train", str(data / "manifest.jsonl"), "-o", str(ckpt), "--image-size", "64"],
        ["build", str(ckpt), "-o", str(bundle), "--precision", "fp32", "--target", "cpu"],
    ]
    steps[1] += ["--epochs", "1", "--tag-hidden", "64", "--visual-dim", "64", "--threads", "2"]
    for step in steps:
        subprocess.run([*M3, *step], check=True)
    return bundle


def run_infer(bundle: Path, folder: Path, out: Path, extra: list[str]) -> dict:
    cmd = [*M3, "infer", str(bundle), str(folder), "-o", str(out), "--overwrite", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    rows = out.read_bytes().count(b"\n") if out.exists() else 0
    return {
        "args": extra,
        "exit_code": code,
        "annotated": rows,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "wall_s": round(wall, 1),
        "stderr_tail": stderr.strip().splitlines()[-1:] if stderr.strip() else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--bombs", type=int, default=8)
    parser.add_argument("--unbounded", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/infer_bombs")
    parser.add_argument("--render", action="store_true", help="Rewrite the .md from the .json.")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        bombs, size = int(saved["what"].split()[3]), int(saved["what"].split()[-3])
        write_report(args.out, bombs, size, saved["results"])
        return
    with tempfile.TemporaryDirectory(prefix="m3trt-bombs-") as tmp:
        work = Path(tmp)
        bundle = args.bundle or tiny_bundle(work)
        folder = work / "bombs"
        folder.mkdir()
        size = png_bomb(folder / "bomb000.png", 10000, 9999)
        for i in range(1, args.bombs):
            os.link(folder / "bomb000.png", folder / f"bomb{i:03d}.png")
        contenders = [
            ["--workers", "4"],
            ["--workers", "16"],
            ["--workers", "4", "--decode-memory", "256"],
        ]
        if args.unbounded:
            contenders.append(["--workers", "4", "--decode-memory", str(1 << 20)])
        results = [run_infer(bundle, folder, work / "out.jsonl", c) for c in contenders]
    write_report(args.out, args.bombs, size, results)


def describe(run_args: list[str]) -> str:
    memory = (
        run_args[run_args.index("--decode-memory") + 1] if "--decode-memory" in run_args else None
    )
    if memory is None:
        return "default budget (1024 MiB)"
    if int(memory) >= 1 << 20:
        return "no budget in effect (1 TiB): all workers decode at once"
    return f"budget {memory} MiB"


def write_report(out: Path, bombs: int, size: int, results: list[dict]) -> None:
    report = {
        "what": f"m3trt infer on {bombs} RGBA PNG bombs of 10000x9999 px, {size} bytes each",
        "budget_gib": BUDGET_GIB,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "shared with other jobs while measured; memory figures do not depend on it",
        },
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# {report['what']}",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.platform()}; shared with other jobs while "
        "measured (wall times are noisy, peak memory is not).",
        "",
        "| options | decode memory | exit | annotated | peak RSS MiB | wall s | under 1.5 GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ok = "yes" if r["peak_rss_mib"] <= BUDGET_GIB * 1024 else "**no**"
        lines.append(
            f"| `{' '.join(r['args'])}` | {describe(r['args'])} | {r['exit_code']} | "
            f"{r['annotated']} | {r['peak_rss_mib']} | {r['wall_s']} | {ok} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
