"""``m3trt bench --plot F.png``: latency distributions per batch size and throughput against
batch size, for the bundle and its reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3trt.errors import M3Error


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise M3Error("--plot needs matplotlib: pip install 'm3trt[plot]'") from exc
    series = [("bundle", report["results"])]
    if "reference" in report:
        series.append((report["reference"]["name"], report["reference"]["results"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    batches = [r["batch_size"] for r in report["results"]]
    width = 0.8 / len(series)
    for i, (name, results) in enumerate(series):
        positions = [j + 1 + (i - (len(series) - 1) / 2) * width for j in range(len(results))]
        parts = left.boxplot(
            [r["samples_ms"] for r in results],
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            showfliers=True,
            flierprops={"markersize": 2, "markeredgecolor": f"C{i}"},
            medianprops={"color": "black"},
        )
        colour = f"C{i}"
        for box in parts["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.8)
        left.plot([], [], color=colour, linewidth=6, alpha=0.8, label=name)
        right.plot(
            [r["batch_size"] for r in results],
            [r["images_per_s"] for r in results],
            marker="o",
            color=colour,
            label=name,
        )
    left.set_xticks(range(1, len(batches) + 1), [str(b) for b in batches])
    left.set_xlabel("batch size")
    left.set_ylabel("latency per batch (ms)")
    left.set_yscale("log")
    left.set_title("latency distribution (box: p25-p75, whiskers: 1.5 IQR)")
    left.legend()
    right.set_xscale("log", base=2)
    right.set_xticks(batches, [str(b) for b in batches])
    right.set_xlabel("batch size")
    right.set_ylabel("images / s")
    right.set_ylim(bottom=0)
    right.set_title("throughput")
    right.grid(alpha=0.3)
    right.legend()
    b = report["bundle"]
    fig.suptitle(f"{b['name']}: {b['target']} {b['precision']} ({report['mode']})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
