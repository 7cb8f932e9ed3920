"""`m3trt infer --executor ray` against the local engine on the same folder, side by side.

    .venv/bin/m3trt data synth runs/ray10k --n 10000 --size 64 --seed 11
    .venv/bin/python benchmarks/ray_infer.py runs/gate/gate.m3 runs/ray10k/images \
        --work runs/ray-bench --out benchmarks/results/ray_infer

In one run, each contender in its own process, so each wall time includes its start-up (Ray's
included), alternating local, ray, ray, local for ``--rounds 2``:
- the local engine: `m3trt infer BUNDLE FOLDER` (decoding threads + ONNX Runtime, all cores);
- Ray Data: `m3trt infer BUNDLE FOLDER --executor ray` (a local Ray instance with the machine's
  CPUs, one actor per CPU, one engine thread per actor).
Then both on a folder holding one of the images (what start-up and shut-down cost alone), then
the rows are compared (the same paths in the same order, label sets, k, scores), and a last
Ray run in this process kills one actor (SIGKILL) after the first block comes back and checks
that the output still holds each image exactly once, with the local engine's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from m3trt.bench.machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
M3TRT = [sys.executable, "-m", "m3trt.cli"]


def run_infer(
    bundle: Path,
    folder: Path,
    out: Path,
    ray: bool,
    batch: int,
    address: str | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """One `m3trt infer` process; wall time from before its start to after its exit. With
    ``address``, the Ray run joins that running instance instead of starting its own."""
    summary = out.with_suffix(".summary.json")
    for stale in (out, out.with_name(f"{out.stem}.errors.jsonl"), summary):
        stale.unlink(missing_ok=True)  # this script's own outputs from an earlier run
    cmd = [*M3TRT, "-q", "infer", str(bundle), str(folder), "-o", str(out)]
    cmd += ["--batch-size", str(batch), "--summary-json", str(summary), "--engine", engine]
    if ray:
        cmd += ["--executor", "ray"]
    if address:
        cmd += ["--address", address]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    data = json.loads(summary.read_text())
    return {
        "executor": ("ray, joined" if address else "ray") if ray else "local",
        "wall_s": round(wall, 2),
        "job_s": round(data["elapsed_s"], 2),
        "annotated": data["annotated"],
        "failed": data["failed"],
        "engine": data["engine"],
        "load_avg_1min_before": round(load, 2),
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(local: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """How far two result files agree, row by row."""
    same_order = [r["path"] for r in local] == [r["path"] for r in other]
    by_path = {r["path"]: r for r in other}
    label_sets = ks = 0
    max_score_diff = 0.0
    for row in local:
        twin = by_path.get(row["path"])
        if twin is None:
            continue
        label_sets += set(row["labels"]) == set(twin["labels"])
        ks += row["k"] == twin["k"]
        if row["labels"] == twin["labels"]:
            diffs = [abs(a - b) for a, b in zip(row["scores"], twin["scores"], strict=True)]
            max_score_diff = max([max_score_diff, *diffs])
    return {
        "rows": len(other),
        "unique_paths": len(by_path),
        "same_paths_same_order": same_order,
        "label_sets_equal": label_sets,
        "k_equal": ks,
        "max_abs_score_diff": max_score_diff,
        "identical_files": local == other,
    }


def killed_actor_run(
    bundle: Path, folder: Path, out: Path, batch: int, engine: str = "auto"
) -> dict[str, Any]:
    """A Ray run whose first actor to return a block is killed right then."""
    from m3trt.runtime.pipeline import InferOptions
    from m3trt.runtime.ray_executor import RayOptions, run_folder_ray

    killed: list[int] = []
    pids: set[int] = set()

    def kill_first(block_pids: list[int]) -> None:
        pids.update(block_pids)
        if not killed:
            killed.append(block_pids[0])
            os.kill(block_pids[0], signal.SIGKILL)

    for stale in (out, out.with_name(f"{out.stem}.errors.jsonl")):
        stale.unlink(missing_ok=True)
    options = InferOptions(output=out, batch_size=batch)
    start = time.perf_counter()
    load = {"engine": engine}
    summary = run_folder_ray(bundle, [folder], options, RayOptions(on_block=kill_first), load)
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "killed_pid": killed[0] if killed else None,
        "actor_pids_seen": sorted(pids),
        "annotated": summary.annotated,
        "failed": summary.failed,
    }


def joined_rounds(args: argparse.Namespace, rounds: int) -> list[dict[str, Any]]:
    """Local and Ray alternated again, the Ray runs joining a Ray instance started beforehand
    (`ray start --head`, as on a cluster that is already up): Ray Data's own per-job cost
    without the instance's start-up. The instance is stopped at the end (`ray stop`)."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port = "6391"
    start = [ray_cli, "start", "--head", "--port", port]
    start += ["--num-cpus", str(os.cpu_count() or 1), "--include-dashboard", "false"]
    subprocess.run(start, check=True, env=env, capture_output=True)
    runs = []
    try:
        for r in range(rounds):
            for ray in (False, True) if r % 2 == 0 else (True, False):
                name = f"{'joined' if ray else 'local'}-j{r}.jsonl"
                out = args.work / name
                address = "auto" if ray else None  # the instance started above
                runs.append(
                    run_infer(
                        args.bundle, args.folder, out, ray, args.batch_size, address, args.engine
                    )
                )
                print(json.dumps(runs[-1]), flush=True)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ray-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_infer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "onnxruntime", "openvino"],
        help="The engine kind both contenders use (auto: the one the build chose).",
    )
    parser.add_argument(
        "--joined-rounds",
        type=int,
        default=0,
        help="Also alternate local with Ray runs that join an instance started beforehand.",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    n_files = sum(1 for p in args.folder.rglob("*") if p.is_file())
    for p in args.folder.rglob("*"):  # page cache: both contenders read warm files
        if p.is_file():
            p.read_bytes()

    runs = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for ray in order:
            name = f"{'ray' if ray else 'local'}-{r}.jsonl"
            out = args.work / name
            runs.append(
                run_infer(args.bundle, args.folder, out, ray, args.batch_size, engine=args.engine)
            )
            print(json.dumps(runs[-1]), flush=True)
    local_rows = read_rows(args.work / "local-0.jsonl")
    agreement = compare(local_rows, read_rows(args.work / "ray-0.jsonl"))
    # Start-up and shut-down alone: the same command on a folder of one of the images.
    one = args.work / "one-image"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir()
    first = min(p for p in args.folder.rglob("*") if p.is_file())
    shutil.copyfile(first, one / first.name)
    fixed = {
        ("ray" if ray else "local"): run_infer(
            args.bundle,
            one,
            args.work / f"one-{ray}.jsonl",
            ray,
            args.batch_size,
            None,
            args.engine,
        )["wall_s"]
        for ray in (False, True)
    }
    print(json.dumps({"one_image_wall_s": fixed}), flush=True)
    joined = joined_rounds(args, args.joined_rounds) if args.joined_rounds else []
    killed = killed_actor_run(
        args.bundle, args.folder, args.work / "killed.jsonl", args.batch_size, args.engine
    )
    killed["agreement"] = compare(local_rows, read_rows(args.work / "killed.jsonl"))
    print(json.dumps(killed), flush=True)

    local_wall = statistics.median(x["wall_s"] for x in runs if x["executor"] == "local")
    ray_wall = statistics.median(x["wall_s"] for x in runs if x["executor"] == "ray")
    result = {
        "machine": describe_machine(),
        "bundle": str(args.bundle),
        "folder": str(args.folder),
        "files": n_files,
        "batch_size": args.batch_size,
        "engine": args.engine,
        "runs": runs,
        "median_wall_s": {"local": round(local_wall, 2), "ray": round(ray_wall, 2)},
        "ray_over_local": round(ray_wall / local_wall, 3),
        "one_image_wall_s": fixed,
        "joined_runs": joined,
        "agreement_ray_vs_local": agreement,
        "killed_actor_run": killed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    a, k = result["agreement_ray_vs_local"], result["killed_actor_run"]
    lines = [
        "# `m3trt infer --executor ray` against the local engine",
        "",
        f"Bundle `{result['bundle']}`, folder `{result['folder']}` ({result['files']} files), "
        f"batch {result['batch_size']}, engine {result.get('engine', 'auto')}. "
        f"Machine: {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cores', '?')} cores (the 1-minute load average before each run "
        "is in the table; other jobs on the machine show there), contenders alternated in one "
        "run.",
        "",
        "| run | executor | wall s (process, start-up included) | job s | annotated | failed "
        "| load before |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["runs"]):
        lines.append(
            f"| {i} | {r['executor']} | {r['wall_s']} | {r['job_s']} | {r['annotated']} | "
            f"{r['failed']} | {r['load_avg_1min_before']} |"
        )
    lines += [
        "",
        f"- Median wall time: local {result['median_wall_s']['local']} s, Ray "
        f"{result['median_wall_s']['ray']} s: **Ray / local = {result['ray_over_local']}x** "
        "(target: at most 1.4x).",
        *joined_lines(result["joined_runs"]),
        f"- The same command on one image (start-up and shut-down alone): local "
        f"{result['one_image_wall_s']['local']} s, Ray {result['one_image_wall_s']['ray']} s.",
        f"- Rows, Ray vs local: {a['rows']} rows, {a['unique_paths']} distinct paths, same paths "
        f"in the same order: {a['same_paths_same_order']}; label sets equal on "
        f"{a['label_sets_equal']}, k equal on {a['k_equal']}; max |d score| "
        f"{a['max_abs_score_diff']:.2g}; files byte-identical as rows: {a['identical_files']}.",
        f"- Killed actor (SIGKILL to pid {k['killed_pid']} when the first block came back; "
        f"actor pids seen {k['actor_pids_seen']}): {k['annotated']} annotated, {k['failed']} "
        f"failed in {k['wall_s']} s; rows {k['agreement']['rows']}, distinct paths "
        f"{k['agreement']['unique_paths']}, same as local in the same order: "
        f"{k['agreement']['same_paths_same_order']}, identical rows: "
        f"{k['agreement']['identical_files']}.",
        "",
    ]
    return "\n".join(lines)


def joined_lines(runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return []
    local = statistics.median(x["wall_s"] for x in runs if x["executor"] == "local")
    joined = statistics.median(x["wall_s"] for x in runs if x["executor"] != "local")
    walls = ", ".join(f"{x['executor']} {x['wall_s']} s" for x in runs)
    return [
        f"- Joining a Ray instance started beforehand (`--address`, as on a running cluster; "
        f"alternated with local again: {walls}): median local {local:.2f} s, Ray {joined:.2f} s: "
        f"**{joined / local:.3f}x**."
    ]


if __name__ == "__main__":
    main()
