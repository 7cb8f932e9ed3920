"""``m3trt bench --plot F.png``: latency distributions per batch size and throughput against
batch size, for the bundle and its reference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from m3trt.atomic import publish, temp_sibling
from m3trt.errors import InputError, M3Error

PLOT_FORMATS = ("png", "svg", "pdf")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise M3Error("--plot needs matplotlib: pip install 'm3trt[plot]'") from exc
    return plt


def check_plot_path(path: Path) -> None:
    """Before the run: matplotlib is there and takes the name's format. Its format comes from
    the name's ending, and a name without one was written as NAME.png, a file the run had not
    checked (an existing one was replaced without --overwrite)."""
    plt = _pyplot()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    ending = path.suffix.lower().lstrip(".")
    if ending not in PLOT_FORMATS or ending not in formats:  # .pgf needs LaTeX when it saves
        shown = f"'.{ending}'" if ending else "no ending"
        raise InputError(
            f"--plot {path}: {shown} is not a format --plot writes; end the name in .png, .svg "
            "or .pdf"
        )


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
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
    temp = temp_sibling(path)  # written whole, then renamed: a stopped run leaves no torn plot
    try:
        with open(temp, "xb") as out:
            fig.savefig(out, dpi=120, format=path.suffix.lower().lstrip("."))
            out.flush()
            os.fsync(out.fileno())
        publish(temp, path)
    finally:
        plt.close(fig)
        temp.unlink(missing_ok=True)
    return path
