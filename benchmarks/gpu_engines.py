"""Side by side on one GPU, in one run: the bundle's GPU engines against PyTorch on the same
checkpoint, at batch 1, 16, 64 and 256, with agreement.

    python3 benchmarks/gpu_engines.py CKPT --data MANIFEST --out benchmarks/results/gpu_engines

Engines (each skipped with its reason when it cannot run here):
- m3trt cuda FP32 and cuda FP16 bundles (``m3trt build --target cuda``), run two ways: through the
  engine interface with host arrays in and out (what ``m3trt infer``/``bench`` get), and raw, with
  ONNX Runtime's I/O binding and inputs already on the GPU (what PyTorch is timed with below);
- ONNX Runtime FP16 with ``enable_cuda_graph=1`` (raw, device inputs): captured per batch size,
  or the reason capture failed;
- the m3trt tensorrt bundle, when TensorRT is installed;
- PyTorch eager FP32, eager FP16 (channels_last) and FP16 replayed as a CUDA graph.
Times: CUDA events around each call (median of ``--rounds`` calls after warm-up). Agreement:
label sets (top-k with the predicted k) of each engine against the FP32 ONNX reference on the
CPU, over the validation images. Writes results.json and results.md into ``--out`` with the
machine (GPU, driver, library versions). Needs torch with CUDA and onnxruntime-gpu.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 16, 64, 256)
Runner = Callable[[int], float]  # batch -> ms of one call (already warmed up)


def cuda_events_ms(torch, fn: Callable[[], Any], rounds: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def wall_ms(fn: Callable[[], Any], rounds: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


# ------------------------------------------------------------------------------------- PyTorch
def torch_engines(checkpoint: Path, batches, rounds: int, image_size: int, num_tags: int):
    """ms per batch for eager FP32, eager FP16 channels_last and the FP16 CUDA graph."""
    import torch

    from m3trt.train.checkpoint import load_checkpoint
    from m3trt.train.predict import preprocess_for

    model, config = load_checkpoint(checkpoint)
    pre = preprocess_for(config).cuda()
    model = model.cuda().eval()
    results: dict[str, dict[int, float]] = {"torch eager fp32": {}, "torch eager fp16": {}}
    results["torch fp16 cuda graph"] = {}
    half = load_checkpoint(checkpoint)[0].cuda().eval().half().to(memory_format=torch.channels_last)
    for batch in batches:
        images = torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8)
        images = images.cuda()
        tags = torch.zeros(batch, num_tags, device="cuda")
        with torch.inference_mode():

            def fp32(images=images, tags=tags):
                return torch.sigmoid(model(pre(images), tags)[0])

            results["torch eager fp32"][batch] = cuda_events_ms(torch, fp32, rounds)

            def fp16(images=images, tags=tags):
                x = pre(images).half().contiguous(memory_format=torch.channels_last)
                return torch.sigmoid(half(x, tags.half())[0].float())

            results["torch eager fp16"][batch] = cuda_events_ms(torch, fp16, rounds)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                fp16()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            fp16()
        results["torch fp16 cuda graph"][batch] = cuda_events_ms(torch, graph.replay, rounds)
        del graph
        torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------- m3trt / ORT
def raw_ort_ms(path: Path, batch: int, info, rounds: int, cuda_graph: bool) -> float:
    """ONNX Runtime alone, inputs and outputs bound on the GPU (no host copies)."""
    import onnxruntime as ort

    from m3trt.runtime.engines.ort_engine import cuda_provider_options, session_options

    options = {**cuda_provider_options(), **({"enable_cuda_graph": "1"} if cuda_graph else {})}
    session = ort.InferenceSession(
        str(path), session_options(), providers=[("CUDAExecutionProvider", options)]
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (batch, info.image_size, info.image_size, 3), dtype=np.uint8)
    feeds = {"image": image, "tags": np.zeros((batch, info.num_tags), np.float32)}
    binding = session.io_binding()
    kept = []
    for i in session.get_inputs():
        value = ort.OrtValue.ortvalue_from_numpy(feeds[i.name], "cuda", 0)
        kept.append(value)
        binding.bind_ortvalue_input(i.name, value)
    outputs = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    for o, host in zip(session.get_outputs(), outputs, strict=True):
        value = ort.OrtValue.ortvalue_from_numpy(host, "cuda", 0)
        kept.append(value)
        binding.bind_ortvalue_output(o.name, value)

    def call():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return wall_ms(call, rounds)


def engine_ms(engine, batch: int, info, rounds: int) -> float:
    """Through the engine interface: host arrays in, host arrays out."""
    from m3trt.runtime.model_io import make_feeds

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (batch, info.image_size, info.image_size, 3), dtype=np.uint8)
    feeds = make_feeds(image, np.zeros((batch, info.num_tags), np.float32), engine.input_names)
    return wall_ms(lambda: engine.run(feeds), rounds)


def agreement(engine, reference_sets: np.ndarray, val) -> float:
    from m3trt.evaluation import run_outputs

    sets = run_outputs(engine, val.batches(16)).label_sets()
    return float(np.mean(np.all(sets == reference_sets, axis=1)))


def build(checkpoint: Path, data: Path, work: Path, target: str, precision: str):
    from m3trt.build.bundle import build_bundle
    from m3trt.build.options import BuildOptions

    out = work / f"{target}-{precision}.m3"
    options = BuildOptions(target=target, precision=precision, val=data, overwrite=True)
    options.calib = data if precision == "int8" else None
    return build_bundle(checkpoint, out, options)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from m3trt.bench.machine import describe_machine
    from m3trt.calibration.data import load_image_set
    from m3trt.evaluation import run_outputs
    from m3trt.runtime.engines import open_engine, open_path
    from m3trt.tensorrt.environment import tensorrt_available

    work = args.work or args.out / "bundles"
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[int, float]] = {}
    agree: dict[str, float] = {}
    notes: list[str] = []
    bundles = {p: build(args.checkpoint, args.data, work, "cuda", p) for p in ("fp32", "fp16")}
    info = bundles["fp32"].model
    kw = dict(image_size=info.image_size, label_names=info.label_names, tag_vocab=info.tag_vocab)
    val = load_image_set(args.data, count=args.val_count, splits=["test", "val"], **kw)
    with open_path(bundles["fp32"].artifact_path("reference")) as cpu_reference:
        reference_sets = run_outputs(cpu_reference, val.batches(16)).label_sets()
    trt_ok, trt_why = tensorrt_available()
    if trt_ok:
        bundles["tensorrt"] = build(args.checkpoint, args.data, work, "tensorrt", "fp16")
    else:
        notes.append(f"tensorrt skipped: {trt_why}")
    for name, bundle in bundles.items():
        engine, choice = open_engine(bundle, "cuda")
        with engine:
            label = f"m3trt {bundle.target} {bundle.precision} ({choice.engine})"
            rows[label] = {b: engine_ms(engine, b, info, args.rounds) for b in args.batches}
            agree[label] = agreement(engine, reference_sets, val)
        if choice.engine == "onnxruntime":
            graph = bundle.artifact_path(choice.artifact)
            rows[f"ort {bundle.precision} raw, device I/O"] = {
                b: raw_ort_ms(graph, b, info, args.rounds, False) for b in args.batches
            }
            if name == "fp16":
                graphs: dict[int, float] = {}
                for b in args.batches:
                    try:
                        graphs[b] = raw_ort_ms(graph, b, info, args.rounds, True)
                    except Exception as exc:  # capture refused: say why, keep going
                        notes.append(f"ORT CUDA graph at batch {b}: {str(exc).splitlines()[0]}")
                if graphs:
                    rows["ort fp16 cuda graph, device I/O"] = graphs
    rows |= torch_engines(
        args.checkpoint, args.batches, args.rounds, info.image_size, info.num_tags
    )
    return {
        "machine": describe_machine(),
        "checkpoint": str(args.checkpoint),
        "batches": list(args.batches),
        "rounds": args.rounds,
        "ms": {name: {str(b): v for b, v in row.items()} for name, row in rows.items()},
        "images_per_s": {
            name: {str(b): b / v * 1e3 for b, v in row.items()} for name, row in rows.items()
        },
        "label_set_agreement_vs_fp32_reference": agree,
        "validation_images": len(val),
        "notes": notes,
    }


def markdown(result: dict[str, Any]) -> str:
    batches = result["batches"]
    lines = [
        f"GPU: {', '.join(result['machine'].get('gpus', [])) or 'unknown'}",
        "",
        "| engine | " + " | ".join(f"b{b} ms (img/s)" for b in batches) + " | label sets = FP32 |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for name, row in result["ms"].items():
        cells = [f"{row[str(b)]:.2f} ({result['images_per_s'][name][str(b)]:.0f})" for b in batches]
        share = result["label_set_agreement_vs_fp32_reference"].get(name)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'' if share is None else f'{share:.1%}'} |"
        )
    lines += ["", *[f"- {note}" for note in result["notes"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="manifest with a val/test split")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_engines"))
    parser.add_argument("--work", type=Path, help="where bundles are built [OUT/bundles]")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--val-count", type=int, default=500)
    args = parser.parse_args()
    args.batches = tuple(int(b) for b in args.batches.split(","))
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
