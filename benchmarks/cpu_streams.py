"""One engine with all the cores' threads against one single-threaded engine per core.

    .venv/bin/python benchmarks/cpu_streams.py runs/gate/gate.m3 runs/ray10k/images \\
        --work runs/cpu-streams --out benchmarks/results/cpu_streams --rounds 3

Why: on Ray, two actors with one engine thread each annotated the folder with less CPU per
image than the local engine with two threads (benchmarks/results/ray_process_cpu.md). This checks
the same split without Ray: the folder's files are hard-linked into one subfolder per core, and
one ``m3trt infer --threads 1 --workers 1`` per subfolder runs at the same time, against one
``m3trt infer`` (default threads and decoders) on the whole folder. Alternated, each contender in
its own processes; wall time and the machine's busy CPU-seconds per run. The local pipeline does
not run engines side by side yet: this measures what that would be worth here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_cpu import busy_seconds

M3TRT = [sys.executable, "-m", "m3trt.cli"]


def split(folder: Path, parts: int, work: Path) -> list[Path]:
    """Hard links of the folder's files (sorted), dealt into ``parts`` subfolders."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    targets = [work / f"part{i}" for i in range(parts)]
    for i, target in enumerate(targets):
        target.mkdir(parents=True, exist_ok=True)
        for source in files[i::parts]:
            link = target / source.name
            if not link.exists():
                os.link(source, link)
    return targets


def timed(commands: list[list[str]]) -> tuple[float, float]:
    """Start every command at once; wall seconds until the last ends, machine CPU-seconds."""
    start, busy = time.perf_counter(), busy_seconds()
    running = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in commands]
    codes = [p.wait() for p in running]
    if any(codes):
        raise SystemExit(f"a run failed (exit codes {codes}): {commands}")
    return time.perf_counter() - start, busy_seconds() - busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path, help="A flat folder of images.")
    parser.add_argument("--work", type=Path, default=Path("runs/cpu-streams"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_streams"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    parts = split(args.folder, args.streams, args.work / "parts")
    common = ["-q", "infer", str(args.bundle), "--overwrite"]
    one = [[*M3TRT, *common, str(args.folder), "-o", str(args.work / "one.jsonl")]]
    single = ["--threads", "1", "--workers", "1"]
    many = [
        [*M3TRT, *common, str(part), "-o", str(args.work / f"{part.name}.jsonl"), *single]
        for part in parts
    ]
    runs: list[dict] = []
    for r in range(args.rounds):
        for name, commands in (("one engine", one), (f"{args.streams} engines", many)):
            time.sleep(2)
            wall, cpu = timed(commands)
            runs.append({"round": r, "contender": name, "wall_s": round(wall, 2),
                         "cpu_s": round(cpu, 2)})  # fmt: skip
            print(runs[-1], flush=True)
    medians = {
        name: {
            key: statistics.median(x[key] for x in runs if x["contender"] == name)
            for key in ("wall_s", "cpu_s")
        }
        for name in dict.fromkeys(x["contender"] for x in runs)
    }
    names = list(medians)
    ratio = medians[names[1]]["wall_s"] / medians[names[0]]["wall_s"]
    lines = [
        "# One engine with every core's threads, or one single-threaded engine per core",
        "",
        f"Bundle `{args.bundle}`, folder `{args.folder}`, {os.cpu_count()} cores. "
        f"`{names[0]}`: one `m3trt infer` on the folder (default threads and decoders). "
        f"`{names[1]}`: one `m3trt infer --threads 1 --workers 1` per core on its share of the "
        "files (hard links), all at once. Alternated; CPU is the whole machine's busy time.",
        "",
        "| round | contender | wall s | CPU s |",
        "|---|---|---|---|",
        *[f"| {x['round']} | {x['contender']} | {x['wall_s']} | {x['cpu_s']} |" for x in runs],
        "",
        f"Medians: {names[0]} {medians[names[0]]['wall_s']} s ({medians[names[0]]['cpu_s']} "
        f"CPU-s), {names[1]} {medians[names[1]]['wall_s']} s ({medians[names[1]]['cpu_s']} "
        f"CPU-s): **{ratio:.2f}x the wall time**.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(
        json.dumps({"runs": runs, "medians": medians, "ratio": ratio}, indent=1) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
