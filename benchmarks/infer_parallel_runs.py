"""`m3trt infer` on a CPU: one batch at a time on every core's threads (`--streams 1`) against
two batches at once on half the threads each (`--streams 2`, the default), side by side.

    .venv/bin/python benchmarks/infer_parallel_runs.py runs/gate/gate.m3 runs/ray10k/images \\
        --work runs/parallel-runs --out benchmarks/results/infer_parallel_runs --rounds 5

Why: one single-threaded engine per core annotated a folder in 0.84x the wall time of one
engine on both cores (benchmarks/results/cpu_streams.md, two processes). The folder loop now
runs batches side by side in one process; this measures what it gives. Alternated, each run its
own process (start-up included); wall time, the machine's busy CPU-seconds, and whether the
contenders' results files are byte-identical.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_streams import M3TRT, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--work", type=Path, default=Path("runs/parallel-runs"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/infer_parallel_runs"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    contenders = {"--streams 1": ["--streams", "1"], "--streams 2": ["--streams", "2"]}
    common = ["-q", "infer", str(args.bundle), str(args.folder), "--overwrite"]
    runs: list[dict] = []
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            out = args.work / f"{name.replace('--', '').replace(' ', '')}.jsonl"
            time.sleep(2)
            wall, cpu = timed([[*M3TRT, *common, "-o", str(out), *contenders[name]]])
            runs.append({"round": r, "contender": name, "wall_s": round(wall, 2),
                         "cpu_s": round(cpu, 2)})  # fmt: skip
            print(runs[-1], flush=True)
    outs = [args.work / f"{n.replace('--', '').replace(' ', '')}.jsonl" for n in contenders]
    identical = filecmp.cmp(*outs, shallow=False)
    medians = {
        name: {
            key: round(statistics.median(x[key] for x in runs if x["contender"] == name), 2)
            for key in ("wall_s", "cpu_s")
        }
        for name in contenders
    }
    one, two = medians["--streams 1"], medians["--streams 2"]
    ratio, cpu_ratio = two["wall_s"] / one["wall_s"], two["cpu_s"] / one["cpu_s"]
    lines = [
        "# `m3trt infer` on a CPU: one batch at a time, or two at once",
        "",
        f"Bundle `{args.bundle}`, folder `{args.folder}`, {os.cpu_count()} cores, default "
        "threads, decoders and batch. `--streams 1`: one ONNX Runtime run at a time on every "
        "core's threads; `--streams 2`: two runs at once on half the threads each. Alternated "
        "(the order flips each round), each run its own process; CPU is the whole machine's "
        "busy time.",
        "",
        "| round | contender | wall s | CPU s |",
        "|---|---|---|---|",
        *[f"| {x['round']} | {x['contender']} | {x['wall_s']} | {x['cpu_s']} |" for x in runs],
        "",
        f"Medians: `--streams 1` {one['wall_s']} s ({one['cpu_s']} CPU-s), `--streams 2` "
        f"{two['wall_s']} s ({two['cpu_s']} CPU-s): **{ratio:.2f}x the wall time, "
        f"{cpu_ratio:.2f}x the CPU**. Results files byte-identical: {identical}.",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    report = {"runs": runs, "medians": medians, "ratio": ratio, "cpu_ratio": cpu_ratio}
    report["identical"] = identical
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
