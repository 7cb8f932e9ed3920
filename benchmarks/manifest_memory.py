"""Peak memory and time of ``read_manifest`` on a large manifest, this checkout against another
revision, side by side in one run (each read in its own process, peak RSS from the kernel).

    .venv/bin/python benchmarks/manifest_memory.py --ref 1a52e2b~1 [--mb 100]

The reference revision is exported with ``git archive`` into a temporary folder and imported from
there; results go to ``benchmarks/results/manifest_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from revisions import ROOT, export_revision, head, publish, run_child

LINE = (
    '{"image": "images/000001.jpg", "labels": ["circle", "square"], '
    '"tags": ["red", "blue"], "split": "train"}\n'
)
CHILD = """
import resource, sys, time
from m3trt.data.manifest import read_manifest
start = time.perf_counter()
m = read_manifest(sys.argv[1], check_images=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(len(m.records), round(seconds, 2), round(peak, 1))
"""


def write_manifest(folder: Path, megabytes: int) -> tuple[Path, int]:
    count = megabytes * 10**6 // len(LINE)
    path = folder / "manifest.jsonl"
    with open(path, "w") as f:
        for _ in range(count // 10_000):
            f.write(LINE * 10_000)
        f.write(LINE * (count % 10_000))
    (folder / "labels.txt").write_text("circle\nsquare\n")
    return path, count


def measure(code_root: Path, manifest: Path) -> dict[str, float]:
    records, seconds, peak = run_child(code_root, CHILD, str(manifest)).split()
    return {"records": int(records), "seconds": float(seconds), "peak_rss_mib": float(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git revision to compare against")
    parser.add_argument("--mb", type=int, default=100, help="manifest size in MB")
    args = parser.parse_args()
    revision = head()
    with tempfile.TemporaryDirectory(prefix="m3trt-manifest-") as tmp:
        tmp = Path(tmp)
        ref_root = export_revision(args.ref, tmp / "ref")
        data = tmp / "data"
        data.mkdir()
        manifest, count = write_manifest(data, args.mb)
        rows = []
        for name, root in (("this checkout", ROOT), (f"ref {args.ref}", ref_root)):
            rows.append({"code": name, **measure(root, manifest)})
    now, ref = rows
    result = {
        "head": revision,
        "ref": args.ref,
        "manifest_mb": args.mb,
        "records": count,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
        "peak_ratio": round(now["peak_rss_mib"] / ref["peak_rss_mib"], 3),
        "time_ratio": round(now["seconds"] / ref["seconds"], 3),
    }
    lines = [
        "# `read_manifest` on a large manifest: this checkout against a reference revision",
        "",
        f"`.venv/bin/python benchmarks/manifest_memory.py --ref {args.ref} --mb {args.mb}` at "
        f"{revision}: {count:,} records in {args.mb} MB, each read in its own process (peak RSS "
        f"from the kernel), {result['machine']}.",
        "",
        "| code | records | seconds | peak RSS MiB |",
        "|---|---|---|---|",
        *(
            f"| {r['code']} | {r['records']:,} | {r['seconds']} | {r['peak_rss_mib']} |"
            for r in rows
        ),
        "",
        f"Peak RSS ratio (this / ref): **{result['peak_ratio']}x**; time ratio "
        f"{result['time_ratio']}x.",
    ]
    publish("manifest_memory", result, lines)


if __name__ == "__main__":
    main()
