"""The accuracy side of the regression gate: ``m3trt eval ... --baseline F --max-drop X``.

Baselines are ordinary ``eval --json`` files. Every figure both files have is compared, in metric
points (1 point = 0.01), and each one that dropped by more than the budget gives one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from m3trt.data.safe_open import read_json
from m3trt.errors import InputError

MODE_FIGURES = ("CF1", "OF1")


def figures(result: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(name, value in [0, 1]) of every gated figure: higher is better for all of them."""
    if isinstance(result.get("mAP"), int | float):
        yield "mAP", float(result["mAP"])
    for mode, values in sorted((result.get("modes") or {}).items()):
        for name in MODE_FIGURES:
            if isinstance(values.get(name), int | float):
                yield f"{mode} {name}", float(values[name])
    quantity = result.get("quantity") or {}
    if isinstance(quantity.get("acc"), int | float):
        yield "quantity acc", float(quantity["acc"])
    agreement = result.get("agreement") or {}
    for key in ("label_set_agreement", "k_agreement"):
        if isinstance(agreement.get(key), int | float):
            yield (
                f"agreement {key.removesuffix('_agreement').replace('_', ' ')}",
                float(agreement[key]),
            )


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "baseline", 64 << 20)
    except FileNotFoundError:
        raise InputError(f"{path}: baseline not found") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a baseline written by --json")
    return data


def compare_accuracy(
    current: dict[str, Any], baseline: dict[str, Any], max_drop_points: float
) -> list[str]:
    """One line per figure that fell more than ``max_drop_points`` below the baseline."""
    now = dict(figures(current))
    then = dict(figures(baseline))
    shared = [name for name in then if name in now]
    if not shared:
        raise InputError("the baseline shares no figure with this evaluation")
    if current.get("n_images") != baseline.get("n_images"):
        raise InputError(
            f"the baseline scored {baseline.get('n_images')} images, this run "
            f"{current.get('n_images')}: evaluate the same split of the same manifest"
        )
    lines = []
    for name in shared:
        drop = 100 * (then[name] - now[name])
        if drop > max_drop_points + 1e-9:
            lines.append(
                f"{name}: {100 * now[name]:.2f} vs baseline {100 * then[name]:.2f} "
                f"(-{drop:.2f} points, allowed -{max_drop_points:g})"
            )
    return lines
