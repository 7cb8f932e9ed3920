"""Tabulate `m3trt bench` next to benchmarks/cpu_engines.py's results (see bench_check.sh)."""

import json
from pathlib import Path

RESULTS = Path("benchmarks/results")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def median(report: dict, batch: int, reference: bool = False) -> float:
    rows = report["reference"]["results"] if reference else report["results"]
    return next(r["latency_ms"]["median"] for r in rows if r["batch_size"] == batch)


def main() -> None:
    scripts = {r["backbone"]: r for r in load(RESULTS / "cpu_engines.json")["results"]}
    print("| model | figure | cpu_engines.py | m3trt bench |")
    print("|---|---|---|---|")
    for model in ("resnet18", "resnet50"):
        s = scripts[model]["batches"]
        vs_fp32 = load(Path(f"benchmarks/baselines/speed_{model}_int8.json"))
        fp32 = load(RESULTS / f"bench/{model}_fp32.json")
        vs_torch = load(RESULTS / f"bench/{model}_int8_vs_torch.json")
        for batch in (1, 16):
            ms = s[str(batch)]["median_ms"]
            print(
                f"| {model} | INT8 b{batch} ms | {ms['bundle_int8']:.1f} | "
                f"{median(vs_fp32, batch):.1f} |"
            )
            print(
                f"| {model} | FP32 bundle b{batch} ms | {ms['bundle_fp32']:.1f} | "
                f"{median(fp32, batch):.1f} |"
            )
            print(
                f"| {model} | INT8 / FP32 b{batch} | {s[str(batch)]['int8_vs_fp32_bundle']:.2f}x |"
                f" {vs_fp32['ratios'][str(batch)]:.2f}x (vs the unoptimised FP32 graph) |"
            )
        print(
            f"| {model} | INT8 / PyTorch eager b16 | {s['16']['int8_vs_torch_eager']:.2f}x | "
            f"{vs_torch['ratios']['16']:.2f}x |"
        )


if __name__ == "__main__":
    main()
