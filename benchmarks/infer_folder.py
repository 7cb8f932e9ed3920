"""`m3trt infer` against the naive PyTorch loop a user would write, on folders of JPEG photos.

    .venv/bin/python benchmarks/infer_folder.py runs/bench/resnet50 \
        --data runs/bench/data/manifest.jsonl --work runs/bench/infer \
        --out benchmarks/results/infer_folder

One run, side by side, each contender in its own process (so peak memory is its own):
- `m3trt infer` with the ResNet-50 M3 INT8 CPU bundle, on a folder of N photos and of 2N photos
  (peak memory must not grow with the folder);
- the naive loop: the same checkpoint in PyTorch eager FP32, `PIL.Image.open(...).convert("RGB")
  .resize(...)` one file after another, batches of 16.

Photos are the synthetic scenes (seeds past the training set) rendered at 1-3 megapixels, 4:3 or
3:4, with sensor-like noise so the JPEGs cost what camera JPEGs cost to decode. Files are read once
before timing so both contenders start from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from m3trt.bench.machine import describe_machine

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16


# -- photos -----------------------------------------------------------------------------------


def make_photos(folder: Path, n: int, seed: int, processes: int = 1) -> Path:
    """n JPEGs of 1-3 MP (deterministic from ``seed``); kept between runs."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (folder / f"IMG_{i:05d}.jpg").exists()]
    if processes > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(make_photo, [folder] * len(todo), [seed] * len(todo), todo))
    else:
        for i in todo:
            make_photo(folder, seed, i)
    return folder


def make_photo(folder: Path, seed: int, i: int) -> None:
    """Photo ``i`` of the set ``seed``: a synthetic scene at 1-3 MP with sensor-like noise."""
    from PIL import Image

    from m3trt.data.synth import sample_image

    rng = np.random.default_rng([seed, i])
    megapixels = rng.uniform(1.0, 3.0)
    landscape = rng.random() < 0.75
    long_side = int(np.sqrt(megapixels * 1e6 * 4 / 3))
    size = (long_side, long_side * 3 // 4) if landscape else (long_side * 3 // 4, long_side)
    _, _, img = sample_image(seed, 100_000 + i, 448)
    big = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 6, (*big.shape[:2], 1)).astype(np.int16)
    pixels = np.clip(big + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"IMG_{i:05d}.jpg", quality=90)


def warm_cache(folder: Path) -> int:
    total = 0
    for path in sorted(folder.iterdir()):
        total += len(path.read_bytes())
    return total


# -- contenders (each runs in a child process) -------------------------------------------------


def naive_loop(checkpoint: Path, folder: Path, out: Path) -> None:
    """What a user would write first: PIL open + resize, eager FP32 model, batches of 16."""
    import torch
    from PIL import Image

    from m3trt import metrics
    from m3trt.train.checkpoint import load_checkpoint
    from m3trt.train.predict import preprocess_for

    start_all = time.perf_counter()
    model, config = load_checkpoint(checkpoint)
    model.eval()
    pre = preprocess_for(config)
    size = config.preprocessing.image_size
    labels = config.label_names
    num_tags = config.model.num_tags
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    start = time.perf_counter()
    rows = []
    for i in range(0, len(paths), BATCH):
        batch = paths[i : i + BATCH]
        images = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in batch]
        with torch.inference_mode():
            x = pre(torch.from_numpy(np.stack(images)))
            logits, q = model(x, torch.zeros(len(batch), num_tags))
            scores = torch.sigmoid(logits).numpy()
        ks = metrics.decode_quantity(q.numpy(), config.model.k_max)
        for path, s, k in zip(batch, scores, ks, strict=True):
            top = np.argsort(-s, kind="stable")[:k]
            rows.append({"path": path, "labels": [labels[j] for j in top]})
    elapsed = time.perf_counter() - start
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print(
        json.dumps(
            {
                "images": len(rows),
                "loop_s": elapsed,
                "images_per_s": len(rows) / elapsed,
                "total_s": time.perf_counter() - start_all,
            }
        )
    )


def run_child(args: list[str]) -> tuple[dict, float, float]:
    """(the child's JSON line or {}, wall seconds, peak RSS in MiB) of one contender."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args[:4]} failed ({proc.returncode}):\n{stderr[-2000:]}")
    line = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
    return json.loads(line), wall, usage.ru_maxrss / 1024


def m3trt_infer(bundle: Path, folder: Path, out: Path, work: Path) -> dict:
    summary = work / f"{folder.name}.summary.json"
    for stale in (out, out.with_name(out.stem + ".errors.jsonl")):
        stale.unlink(missing_ok=True)
    cmd = [str(ROOT / ".venv/bin/m3trt"), "-q", "infer", str(bundle), str(folder), "-o", str(out)]
    cmd += ["--batch-size", str(BATCH), "--summary-json", str(summary)]
    _, wall, rss = run_child(cmd)
    data = json.loads(summary.read_text())
    return {
        "images": data["annotated"],
        "failed": data["failed"],
        "loop_s": data["elapsed_s"],
        "images_per_s": data["images_per_s"],
        "wall_s": wall,
        "peak_rss_mib": rss,
    }


def naive(checkpoint: Path, folder: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--naive-child", str(checkpoint), str(folder), str(out)]
    data, wall, rss = run_child(cmd)
    return {**data, "wall_s": wall, "peak_rss_mib": rss}


# -- the benchmark ------------------------------------------------------------------------------


def ensure_bundle(checkpoint: Path, data: Path, work: Path) -> Path:
    checkpoint, data = checkpoint.resolve(), data.resolve()
    bundle = work / f"{checkpoint.name}-int8.m3"
    if not (bundle / "bundle.json").exists():
        subprocess.run(
            [
                *(str(ROOT / ".venv/bin/m3trt"), "-q", "build", str(checkpoint)),
                *("-o", str(bundle), "--precision", "int8", "--target", "cpu"),
                *("--calib", str(data)),
            ],
            check=True,
            cwd=ROOT,
        )
    return bundle


def agreement(a: Path, b: Path) -> float:
    rows_a = {r["path"]: set(r["labels"]) for r in map(json.loads, a.read_text().splitlines())}
    rows_b = {r["path"]: set(r["labels"]) for r in map(json.loads, b.read_text().splitlines())}
    common = sorted(set(rows_a) & set(rows_b))
    return float(np.mean([rows_a[p] == rows_b[p] for p in common])) if common else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-child":
        naive_loop(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="manifest for calibration")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/bench/infer")
    parser.add_argument("--n", type=int, default=500, help="photos in the small folder")
    parser.add_argument("--bundle", type=Path, help="an INT8 CPU bundle of the checkpoint")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/infer_folder")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    small = make_photos(work / f"photos_{args.n}", args.n, seed=11)
    large = make_photos(work / f"photos_{2 * args.n}", 2 * args.n, seed=12)
    bundle = (args.bundle or ensure_bundle(args.checkpoint, args.data, work)).resolve()
    sizes = {"small": warm_cache(small), "large": warm_cache(large)}

    m3_small = m3trt_infer(bundle, small, work / "m3trt_small.jsonl", work)
    base = naive(args.checkpoint.resolve(), small, work / "naive_small.jsonl")
    m3_large = m3trt_infer(bundle, large, work / "m3trt_large.jsonl", work)
    result = {
        "machine": describe_machine(),
        "bundle": str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
        "photos": {
            "small": {"count": args.n, "mib": round(sizes["small"] / 2**20, 1)},
            "large": {"count": 2 * args.n, "mib": round(sizes["large"] / 2**20, 1)},
        },
        "m3trt_small": m3_small,
        "naive_small": base,
        "m3trt_large": m3_large,
        "speedup_images_per_s": m3_small["images_per_s"] / base["images_per_s"],
        "speedup_wall": base["wall_s"] / m3_small["wall_s"],
        "peak_rss_growth": m3_large["peak_rss_mib"] / m3_small["peak_rss_mib"],
        "label_set_agreement_with_naive": agreement(
            work / "m3trt_small.jsonl", work / "naive_small.jsonl"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result) + "\n")
    print(render(result))


def render(r: dict) -> str:
    rows = [
        ("m3trt infer (R50 INT8 bundle)", r["photos"]["small"]["count"], r["m3trt_small"]),
        ("naive PyTorch loop (R50 eager FP32)", r["photos"]["small"]["count"], r["naive_small"]),
        ("m3trt infer (R50 INT8 bundle)", r["photos"]["large"]["count"], r["m3trt_large"]),
    ]
    lines = [
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores.",
        "",
        "| contender | photos | images/s (loop) | wall s (with start-up) | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, n, d in rows:
        lines.append(
            f"| {name} | {n} | {d['images_per_s']:.1f} | {d['wall_s']:.1f} | "
            f"{d['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        f"- m3trt sustains {r['speedup_images_per_s']:.2f}x the naive loop's images/s "
        f"({r['speedup_wall']:.2f}x in wall time, start-up included).",
        f"- Peak memory at {r['photos']['large']['count']} photos is "
        f"{r['peak_rss_growth']:.3f}x that at {r['photos']['small']['count']}.",
        "- Label sets equal to the naive loop's on "
        f"{100 * r['label_set_agreement_with_naive']:.1f}% of the photos (INT8 vs FP32, "
        "draft-mode JPEG decoding vs full decode + resize).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
