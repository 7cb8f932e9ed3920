"""Peak memory of ``m3trt eval BUNDLE`` against the number of images (issue 9: flat memory).

    .venv/bin/python benchmarks/eval_memory.py --work runs/eval-memory \
        --out benchmarks/results/eval_memory

Makes two synthetic sets of 112 px images (3300 and 6x as many, seeded), a ResNet-18 M3 checkpoint
trained for one epoch on the small one (its accuracy does not matter here), its FP32 CPU bundle,
then runs ``m3trt eval BUNDLE MANIFEST --split all`` on each set in a fresh process and reads the
child's peak resident memory (ru_maxrss). Before streaming, the bundle's images were all decoded
first: 601 MiB for 3300 images and 2300 MiB for 19800 (3.8x) in the issue's measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

M3 = [sys.executable, "-m", "m3trt.cli", "-q"]


def run(*args: object) -> None:
    subprocess.run([*M3, *map(str, args)], check=True)


def peak_rss_mib(*args: object) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of one m3trt command in a fresh process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *M3, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]) / 1024, float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("runs/eval-memory"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_memory"))
    parser.add_argument("--small", type=int, default=3300)
    parser.add_argument("--factor", type=int, default=6)
    args = parser.parse_args()
    sizes = {"small": args.small, "large": args.small * args.factor}
    for name, n in sizes.items():
        if not (args.work / name / "manifest.jsonl").is_file():
            run("data", "synth", args.work / name, "--n", n, "--size", 112, "--seed", 0)
    ckpt, bundle = args.work / "ckpt", args.work / "model.m3"
    if not (ckpt / "config.json").is_file():
        run(
            "train",
            args.work / "small" / "manifest.jsonl",
            "-o",
            ckpt,
            "--backbone",
            "resnet18",
            "--image-size",
            112,
            "--epochs",
            1,
            "--tag-hidden",
            256,
            "--seed",
            0,
        )
    if not bundle.is_dir():
        run("build", ckpt, "-o", bundle, "--target", "cpu", "--precision", "fp32")
    rows = {}
    for name, n in sizes.items():
        mib, wall = peak_rss_mib(
            "eval", bundle, args.work / name / "manifest.jsonl", "--split", "all"
        )
        rows[name] = {"images": n, "peak_rss_mib": round(mib, 1), "wall_s": round(wall, 1)}
        print(name, rows[name], flush=True)
    ratio = rows["large"]["peak_rss_mib"] / rows["small"]["peak_rss_mib"]
    result = {
        "rows": rows,
        "peak_rss_ratio": round(ratio, 3),
        "target": "<= 1.3 at 6x the images",
        "load_average_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
        "max_rss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| images (112 px) | peak RSS MiB | wall s |",
        "|---|---|---|",
        *(f"| {r['images']} | {r['peak_rss_mib']} | {r['wall_s']} |" for r in rows.values()),
        "",
        f"Peak RSS at {args.factor}x the images: {ratio:.2f}x (target <= 1.3x). "
        "Command: `.venv/bin/python benchmarks/eval_memory.py`.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
