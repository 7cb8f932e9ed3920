"""Where a command's CPU goes, process by process: e.g. what Ray's processes cost next to the work.

    .venv/bin/python benchmarks/process_cpu.py --out benchmarks/results/ray_process_cpu -- \\
        .venv/bin/m3trt infer runs/gate/gate.m3 runs/ray10k/images --executor ray \\
        -o runs/ray-bench/cpu.jsonl --overwrite -q

Samples /proc every 0.25 s while the command runs: each new process's CPU time (user + system, the
last value seen before it exited, so a process that lives under 0.25 s is missed) under its role
(Ray's process title, e.g. ``ray::_StatsActor``, or the script it runs), and the machine's busy
cores per second from /proc/stat. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle or waiting on I/O)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def processes() -> dict[int, tuple[float, str]]:
    """pid -> (CPU seconds so far, command line) for every process we may read."""
    seen = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone since listdir
            continue
        seen[int(name)] = ((int(fields[11]) + int(fields[12])) / TICK, cmdline)
    return seen


def role(cmdline: str) -> str:
    """A short name shared by processes doing the same job."""
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0]
        return "ray::IDLE" if title == "ray::IDLE" else re.sub(r"\.\w+$", "", title)
    words = cmdline.split() or ["?"]
    first = Path(words[0]).name
    if not first.startswith("python"):
        return first  # gcs_server, raylet
    for word in words[1:]:
        if word.endswith(".py"):  # Ray's monitors and dashboard
            return Path(word).name
    return Path(words[1]).name if len(words) > 1 else first  # a console script (m3trt)


def run(command: list[str], interval: float) -> dict:
    before = set(processes())
    cpu: dict[int, float] = {}
    roles: dict[int, str] = {}
    per_second: list[tuple[float, float]] = []
    start, busy = time.perf_counter(), busy_seconds()
    last_t, last_busy = start, busy
    child = subprocess.Popen(command)
    while child.poll() is None:
        time.sleep(interval)
        for pid, (seconds, cmdline) in processes().items():
            if pid in before:
                continue
            cpu[pid] = seconds
            if cmdline:  # a title is kept from when it last had one (exiting ones lose it)
                roles[pid] = role(cmdline)
        now, now_busy = time.perf_counter(), busy_seconds()
        per_second.append((now - start, (now_busy - last_busy) / (now - last_t)))
        last_t, last_busy = now, now_busy
    wall = time.perf_counter() - start
    by_role: dict[str, list[float]] = {}
    for pid, seconds in cpu.items():
        if seconds == 0:  # short-lived helpers (a shell, uname): nothing to show
            continue
        by_role.setdefault(roles.get(pid, "?"), []).append(round(seconds, 2))
    seconds_busy: dict[int, list[float]] = {}
    for t, cores in per_second:
        seconds_busy.setdefault(int(t), []).append(cores)
    busy_cores = [round(sum(v) / len(v), 2) for _, v in sorted(seconds_busy.items())]
    return {
        "command": command,
        "exit_code": child.returncode,
        "wall_s": round(wall, 2),
        "machine_cpu_s": round(busy_seconds() - busy, 2),
        "cores": os.cpu_count(),
        "by_role": dict(sorted(by_role.items(), key=lambda kv: -sum(kv[1]))),
        "busy_cores_per_second": busy_cores,
    }


def markdown(result: dict) -> str:
    lines = [
        "# CPU seconds by process",
        "",
        f"`{' '.join(result['command'])}`",
        "",
        f"Wall {result['wall_s']} s; the machine was busy {result['machine_cpu_s']} CPU-seconds "
        f"({result['cores']} cores; other processes included). Exit code {result['exit_code']}.",
        "",
        "| role | processes | CPU s each | CPU s total |",
        "|---|---|---|---|",
    ]
    for name, each in result["by_role"].items():
        lines.append(f"| `{name}` | {len(each)} | {', '.join(map(str, each))} | {sum(each):.2f} |")
    total = sum(sum(each) for each in result["by_role"].values())
    lines += [
        f"| all | | | {total:.2f} |",
        "",
        "Busy cores, second by second: " + " ".join(map(str, result["busy_cores_per_second"])),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, help="Write OUT.md and OUT.json.")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    result = run(args.command, args.interval)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
