"""The GPU folder pipeline on a GPU host, in one run (issue 12): where the limits are and how close
`m3trt infer` gets to them.

    python3 benchmarks/gpu_folder.py CHECKPOINT --bundle CUDA_BUNDLE.m3 \
        --work /var/tmp/m3gpu/folder --out benchmarks/results/gpu_folder

Side by side, over >= 3000 JPEG photos of 1-3 MP that it renders itself (the synthetic scenes
with sensor noise of benchmarks/infer_folder.py, kept in --work between runs):
- the decoders alone: m3trt's CPU decoder (`load_image`, JPEG draft mode) on W threads, and the
  GPU decoder (nvImageCodec + the cupy resize, batches of 64), each to S x S uint8;
- the engine alone: the bundle's engine on the GPU, batches of --batch-size from device-bound I/O
  (`Engine.run`), images/s;
- `m3trt infer --device cuda` with `--decode cpu` and `--decode gpu` (each in its own process,
  `--profile`, peak RSS), and with `--decode cpu` on half the folder (memory must be flat);
- the naive PyTorch GPU loop a user writes first: PIL open + resize, the checkpoint on CUDA in
  eager FP32, batches of 64.
It writes OUT.json and OUT.md. Without a CUDA GPU it stops at once with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_folder import agreement, make_photos, run_child, warm_cache

ROOT = Path(__file__).resolve().parent.parent
NAIVE_BATCH = 64


def gpu_present() -> tuple[bool, str]:
    """Whether a CUDA GPU answers here (through cuda-python, as the runtime sees it)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        return False, f"cuda-python is not importable ({exc})"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        return False, f"no CUDA device ({getattr(err, 'name', err)})"
    return True, f"{count} CUDA device(s)"


# -- the limits --------------------------------------------------------------------------------


def cpu_decoder_rate(paths: list[Path], size: int, workers: int) -> dict:
    from m3trt.data.images import load_image

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda p: load_image(p, size), paths):
            pass
    elapsed = time.perf_counter() - start
    return {"workers": workers, "images": len(paths), "images_per_s": len(paths) / elapsed}


def gpu_decoder_rate(paths: list[Path], size: int, workers: int) -> dict:
    from m3trt.data.gpu_decode import probe_gpu_decoder

    decoder, why = probe_gpu_decoder(size)
    if decoder is None:
        return {"available": False, "reason": why}
    out = [np.zeros((size, size, 3), np.uint8) for _ in range(64)]
    refused = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for i in range(0, len(paths), 64):
            blobs = list(pool.map(Path.read_bytes, paths[i : i + 64]))
            refused += sum(r is not None for r in decoder.decode_into(blobs, out[: len(blobs)]))
    elapsed = time.perf_counter() - start
    return {
        "available": True,
        "reason": why,
        "images": len(paths),
        "refused": refused,
        "images_per_s": len(paths) / elapsed,
    }


def engine_rate(bundle: Path, batch: int, images: int) -> dict:
    from m3trt.runtime.annotator import Annotator

    with Annotator.load(bundle, device="cuda") as annotator:
        size = annotator.image_size
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        for _ in range(5):
            annotator.run(x)
        rounds = max(1, images // batch)
        start = time.perf_counter()
        for _ in range(rounds):
            annotator.run(x)
        elapsed = time.perf_counter() - start
        return {
            "engine": annotator.description,
            "batch": batch,
            "images_per_s": rounds * batch / elapsed,
        }


# -- the contenders (child processes) -----------------------------------------------------------


def m3trt_infer(bundle: Path, folder: Path, out: Path, args: argparse.Namespace, decode: str):
    summary = out.with_suffix(".summary.json")
    for stale in (out, out.with_name(out.stem + ".errors.jsonl"), summary):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "m3trt.cli", "-q", "infer", str(bundle), str(folder)]
    cmd += ["-o", str(out), "--device", "cuda", "--batch-size", str(args.batch_size)]
    cmd += ["--workers", str(args.workers), "--decode", decode, "--streams", str(args.streams)]
    cmd += ["--profile", "--summary-json", str(summary)]
    _, wall, rss = run_child(cmd)
    data = json.loads(summary.read_text())
    return {
        "decode": decode,
        "images": data["annotated"],
        "failed": data["failed"],
        "images_per_s": data["images_per_s"],
        "wall_s": wall,
        "peak_rss_mib": rss,
        "pipeline": data.get("pipeline"),
        "profile": data.get("profile"),
    }


def naive_gpu_loop(checkpoint: Path, folder: Path, out: Path) -> None:
    """What a user writes first on a GPU: PIL open + resize, eager FP32 on CUDA, batches of 64."""
    import torch
    from PIL import Image

    from m3trt import metrics
    from m3trt.train.checkpoint import load_checkpoint
    from m3trt.train.predict import preprocess_for

    start_all = time.perf_counter()
    model, config = load_checkpoint(checkpoint)
    model = model.eval().cuda()
    pre = preprocess_for(config)
    size = config.preprocessing.image_size
    labels = config.label_names
    tags = torch.zeros(NAIVE_BATCH, config.model.num_tags, device="cuda")
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    start = time.perf_counter()
    rows = []
    for i in range(0, len(paths), NAIVE_BATCH):
        batch = paths[i : i + NAIVE_BATCH]
        images = [np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in batch]
        with torch.inference_mode():
            x = pre(torch.from_numpy(np.stack(images)).cuda())
            logits, q = model(x, tags[: len(batch)])
            scores = torch.sigmoid(logits).cpu().numpy()
            q = q.cpu().numpy()
        ks = metrics.decode_quantity(q, config.model.k_max)
        for path, s, k in zip(batch, scores, ks, strict=True):
            top = np.argsort(-s, kind="stable")[:k]
            rows.append({"path": path, "labels": [labels[j] for j in top]})
    elapsed = time.perf_counter() - start
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print(json.dumps({"images": len(rows), "images_per_s": len(rows) / elapsed,
                      "loop_s": elapsed, "total_s": time.perf_counter() - start_all}))  # fmt: skip


def naive(checkpoint: Path, folder: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--naive-child", str(checkpoint), str(folder), str(out)]
    data, wall, rss = run_child(cmd)
    return {**data, "wall_s": wall, "peak_rss_mib": rss}


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-child":
        naive_gpu_loop(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the checkpoint the bundle was built from")
    parser.add_argument("--bundle", type=Path, required=True, help="a --target cuda bundle")
    parser.add_argument("--n", type=int, default=3000, help="photos (>= 3000 for the issue)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/m3gpu/folder"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    ok, why = gpu_present()
    if not ok:
        raise SystemExit(f"gpu_folder.py: {why}; it measures only on a GPU host (nothing written)")
    from m3trt.bench.machine import describe_machine
    from m3trt.runtime.bundle import load_bundle

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    photos = make_photos(work / f"photos_{args.n}", args.n, seed=21, processes=args.workers)
    half = work / f"photos_{args.n}_half"
    half.mkdir(exist_ok=True)
    for path in sorted(photos.glob("*.jpg"))[: args.n // 2]:
        if not (half / path.name).exists():
            os.link(path, half / path.name)
    mib = warm_cache(photos) / 2**20
    paths = sorted(photos.glob("*.jpg"))
    size = load_bundle(args.bundle).model.image_size
    bundle = args.bundle.resolve()

    result: dict = {"machine": describe_machine(), "gpu": why, "photos": args.n}
    result["photos_mib"] = round(mib, 1)
    result["decoder_cpu"] = cpu_decoder_rate(paths, size, args.workers)
    result["decoder_gpu"] = gpu_decoder_rate(paths, size, args.workers)
    result["engine"] = engine_rate(bundle, args.batch_size, min(args.n, 4096))
    result["infer_cpu_decode"] = m3trt_infer(bundle, photos, work / "cpu.jsonl", args, "cpu")
    result["infer_cpu_decode_half"] = m3trt_infer(bundle, half, work / "half.jsonl", args, "cpu")
    if result["decoder_gpu"]["available"]:
        result["infer_gpu_decode"] = m3trt_infer(bundle, photos, work / "gpu.jsonl", args, "gpu")
    result["naive"] = naive(args.checkpoint.resolve(), photos, work / "naive.jsonl")
    result["ratios"] = ratios(result, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result) + "\n")
    print(render(result))


def ratios(r: dict, work: Path) -> dict:
    limit = min(r["decoder_cpu"]["images_per_s"], r["engine"]["images_per_s"])
    out = {
        "cpu_decode_of_limit": r["infer_cpu_decode"]["images_per_s"] / limit,
        "cpu_decode_vs_naive": r["infer_cpu_decode"]["images_per_s"] / r["naive"]["images_per_s"],
        "peak_rss_full_over_half": r["infer_cpu_decode"]["peak_rss_mib"]
        / r["infer_cpu_decode_half"]["peak_rss_mib"],
        "labels_cpu_decode_vs_naive": agreement(work / "cpu.jsonl", work / "naive.jsonl"),
    }
    if "infer_gpu_decode" in r:
        gpu = r["infer_gpu_decode"]["images_per_s"]
        out["gpu_decode_images_per_s"] = gpu
        out["gpu_decode_vs_naive"] = gpu / r["naive"]["images_per_s"]
        out["labels_gpu_vs_cpu_decode"] = agreement(work / "gpu.jsonl", work / "cpu.jsonl")
    return out


def render(r: dict) -> str:
    q = r["ratios"]
    gpu_dec = r["decoder_gpu"]
    if gpu_dec["available"]:
        gpu_row = (
            f"| GPU decoder alone | {gpu_dec['images_per_s']:.0f} | nvImageCodec + cupy resize, "
            f"{gpu_dec['refused']} refused |"
        )
    else:
        gpu_row = f"| GPU decoder alone | - | {gpu_dec['reason']} |"
    lines = [
        f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['gpu']}; "
        f"{r['photos']} JPEGs of 1-3 MP ({r['photos_mib']} MiB).",
        "",
        "| what | images/s | notes |",
        "|---|---|---|",
        f"| CPU decoder alone ({r['decoder_cpu']['workers']} threads) | "
        f"{r['decoder_cpu']['images_per_s']:.0f} | m3trt load_image, draft mode |",
        gpu_row,
        f"| engine alone (batch {r['engine']['batch']}) | {r['engine']['images_per_s']:.0f} | "
        f"{r['engine']['engine']} |",
    ]
    for key in ("infer_cpu_decode", "infer_cpu_decode_half", "infer_gpu_decode"):
        if key in r:
            d = r[key]
            lines.append(
                f"| m3trt infer --decode {d['decode']} ({d['images']} images) | "
                f"{d['images_per_s']:.0f} | wall {d['wall_s']:.1f} s, peak RSS "
                f"{d['peak_rss_mib']:.0f} MiB |"
            )
    lines.append(
        f"| naive PyTorch GPU loop (batch {NAIVE_BATCH}) | {r['naive']['images_per_s']:.0f} | "
        f"wall {r['naive']['wall_s']:.1f} s |"
    )
    lines += [
        "",
        f"- `--decode cpu`: {100 * q['cpu_decode_of_limit']:.0f}% of min(CPU decoder, engine) "
        f"(target >= 85%); {q['cpu_decode_vs_naive']:.2f}x the naive loop.",
        f"- Peak RSS, full folder over half: {q['peak_rss_full_over_half']:.3f}.",
        f"- Label sets, `--decode cpu` vs naive: {100 * q['labels_cpu_decode_vs_naive']:.1f}%.",
    ]
    if "gpu_decode_images_per_s" in q:
        lines += [
            f"- `--decode gpu`: {q['gpu_decode_images_per_s']:.0f} img/s (target >= 2000), "
            f"{q['gpu_decode_vs_naive']:.2f}x the naive loop (target >= 4x); label sets equal to "
            f"`--decode cpu` on {100 * q['labels_gpu_vs_cpu_decode']:.1f}% (target >= 98%).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
