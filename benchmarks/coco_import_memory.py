"""Peak memory and time of ``m3trt data import-coco`` on a COCO-sized instances JSON (and a
captions JSON), this checkout against another revision, alternated in one run, each import in
its own process (peak RSS from the kernel).

    .venv/bin/python benchmarks/coco_import_memory.py --ref 2033356 [--images 118000]

The files are synthetic but shaped like COCO 2017's (``instances_train2017.json``: 118,287
images, 860,001 annotations with polygons, 448 MB; captions: 5 an image), so the default is
about as large as the largest real one. Both revisions must write identical manifests. Results
go to ``benchmarks/results/coco_import_memory.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
from pathlib import Path

from revisions import ROOT, export_revision, head, publish, run_child

CHILD = """
import resource, sys, time
from m3trt.data.importers import import_coco
start = time.perf_counter()
summary = import_coco(sys.argv[1], sys.argv[2], captions_json=sys.argv[3], image_dir=sys.argv[4])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(summary.n_images, round(seconds, 2), round(peak, 1))
"""
WORDS = [
    "a",
    "man",
    "dog",
    "riding",
    "red",
    "bus",
    "near",
    "the",
    "beach",
    "with",
    "two",
    "cats",
    "on",
    "table",
    "plate",
    "of",
    "food",
]


def write_coco(folder: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """An instances JSON in COCO's key order ("categories" last) and a captions JSON."""
    rng = random.Random(seed)
    instances, captions = folder / "instances_train2017.json", folder / "captions_train2017.json"
    images = [
        {"license": 3, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640, "id": i}
        for i in range(n_images)
    ]
    with open(instances, "w") as f:
        f.write('{"info": {"year": 2017}, "licenses": [], "images": ')
        json.dump(images, f)
        f.write(', "annotations": [')
        for a in range(n_images * 727 // 100):  # COCO: 7.27 annotations an image
            polygon = [round(rng.uniform(0, 640), 2) for _ in range(rng.choice((16, 24, 40, 60)))]
            ann = {
                "segmentation": [polygon],
                "area": round(rng.uniform(10, 5e4), 4),
                "iscrowd": 0,
                "image_id": rng.randrange(n_images),
                "bbox": [round(rng.uniform(0, 600), 2) for _ in range(4)],
                "category_id": rng.randrange(1, 81),
                "id": a,
            }
            f.write((", " if a else "") + json.dumps(ann))
        cats = [{"supercategory": "x", "id": c, "name": f"category {c}"} for c in range(1, 81)]
        f.write('], "categories": ' + json.dumps(cats) + "}")
    with open(captions, "w") as f:
        f.write('{"info": {"year": 2017}, "images": ')
        json.dump(images, f)
        f.write(', "annotations": [')
        for c in range(n_images * 5):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 14)))
            caption = {"image_id": c // 5, "id": c, "caption": text.capitalize() + "."}
            f.write((", " if c else "") + json.dumps(caption))
        f.write("]}")
    return instances, captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git revision to compare against")
    parser.add_argument("--images", type=int, default=118_000, help="images in the JSON")
    parser.add_argument("--rounds", type=int, default=2, help="imports per revision")
    args = parser.parse_args()
    revision = head()
    with tempfile.TemporaryDirectory(prefix="m3trt-coco-") as tmp:
        tmp = Path(tmp)
        codes = {"this checkout": ROOT, f"ref {args.ref}": export_revision(args.ref, tmp / "ref")}
        instances, captions = write_coco(tmp, args.images)
        sizes = {p.name: p.stat().st_size for p in (instances, captions)}
        (tmp / "images").mkdir()
        runs: dict[str, list[dict]] = {name: [] for name in codes}
        manifests: dict[str, bytes] = {}
        for r in range(args.rounds):
            for name, root in codes.items():
                out = tmp / f"out-{len(runs[name])}-{name.split()[0]}"
                stdout = run_child(
                    root, CHILD, str(instances), str(out), str(captions), str(tmp / "images")
                )
                n_images, seconds, peak = stdout.split()
                runs[name].append({"seconds": float(seconds), "peak_rss_mib": float(peak)})
                if r == 0:
                    manifests[name] = b"".join(
                        (out / f).read_bytes() for f in ("manifest.jsonl", "labels.txt")
                    )
    identical = len(set(manifests.values())) == 1
    rows = [
        {
            "code": name,
            "images": int(n_images),
            "seconds_median": statistics.median(x["seconds"] for x in found),
            "peak_rss_mib_max": max(x["peak_rss_mib"] for x in found),
            "runs": found,
        }
        for name, found in runs.items()
    ]
    now, ref = rows
    result = {
        "head": revision,
        "ref": args.ref,
        "files_bytes": sizes,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "identical_manifests": identical,
        "rows": rows,
        "peak_ratio": round(now["peak_rss_mib_max"] / ref["peak_rss_mib_max"], 3),
        "time_ratio": round(now["seconds_median"] / ref["seconds_median"], 3),
    }
    sized = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in sizes.items())
    lines = [
        "# `m3trt data import-coco` on COCO-sized files: this checkout against a reference",
        "",
        f"`.venv/bin/python benchmarks/coco_import_memory.py --ref {args.ref} --images "
        f"{args.images} --rounds {args.rounds}` at {revision}: synthetic {sized}; each import in "
        f"its own process, the revisions alternated; {result['machine']}.",
        "",
        "| code | images | median seconds | peak RSS MiB (max) |",
        "|---|---|---|---|",
        *(
            f"| {r['code']} | {r['images']:,} | {r['seconds_median']} | {r['peak_rss_mib_max']} |"
            for r in rows
        ),
        "",
        f"Peak RSS ratio (this / ref): **{result['peak_ratio']}x**; time ratio "
        f"{result['time_ratio']}x. Manifests and labels.txt identical: {identical}.",
    ]
    publish("coco_import_memory", result, lines)
    if not identical:
        raise SystemExit("the revisions wrote different manifests")


if __name__ == "__main__":
    main()
