"""The text table ``m3trt bench`` prints (trtexec's names)."""

from __future__ import annotations

from typing import Any

COLUMNS = ("min", "median", "mean", "p90", "p95", "p99", "max")


def _rows(results: list[dict[str, Any]], name: str) -> list[str]:
    lines = []
    for r in results:
        lat = r["latency_ms"]
        cells = " ".join(f"{lat[c]:>8.2f}" for c in COLUMNS)
        lines.append(
            f"{name:<12} {r['batch_size']:>5} {r['throughput_qps']:>9.1f} "
            f"{r['images_per_s']:>9.1f} {cells} {r['iterations']:>6}"
        )
    return lines


def format_bench(report: dict[str, Any]) -> str:
    header = (
        f"{'engine':<12} {'batch':>5} {'qps':>9} {'img/s':>9} "
        + " ".join(f"{c + ' ms':>8}" for c in COLUMNS)
        + f" {'runs':>6}"
    )
    b = report["bundle"]
    lines = [f"{b['name']} ({b['target']} {b['precision']}, {report['mode']}): {b['engine']}"]
    lines += [header, "-" * len(header)]
    lines += _rows(report["results"], "bundle")
    if "reference" in report:
        lines += _rows(report["reference"]["results"], report["reference"]["name"][:12])
        ratios = ", ".join(f"b{k}: {v:.2f}x" for k, v in report["ratios"].items())
        lines.append(f"speed-up over {report['reference']['name']} (median time ratio): {ratios}")
    return "\n".join(lines)
