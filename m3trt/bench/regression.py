"""The accuracy side of the regression gate: ``m3trt eval ... --baseline F --max-drop X``.

Baselines are ordinary ``eval --json`` files. Every figure both files have is compared, in metric
points (1 point = 0.01), and each one that dropped by more than the budget gives one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from m3trt.data.safe_open import read_json
from m3trt.errors import InputError

MODE_FIGURES = ("CF1", "OF1")


def _slots(result: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(figure name, the object holding it, its key) of every gated figure a result names."""
    yield "mAP", result, "mAP"
    for mode, values in sorted(_object(result.get("modes")).items()):
        for name in MODE_FIGURES:
            yield f"{mode} {name}", _object(values), name
    yield "quantity acc", _object(result.get("quantity")), "acc"
    agreement = _object(result.get("agreement"))
    for key in ("label_set_agreement", "k_agreement"):
        yield f"agreement {key.removesuffix('_agreement').replace('_', ' ')}", agreement, key


def figures(result: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(name, value in [0, 1]) of every gated figure: higher is better for all of them."""
    for name, holder, key in _slots(result):
        if _number(holder.get(key)):
            yield name, float(holder[key])


def _bad_figure(result: dict[str, Any]) -> tuple[str, Any] | None:
    """The first gated figure a baseline holds that is not a number from 0 to 1: such a figure
    was passed over, and a baseline of NaN or 1e999 said "no regression" of anything."""
    for name, holder, key in _slots(result):
        if key in holder:
            value = holder[key]
            if not (_number(value) and 0.0 <= value <= 1.0):
                return name, value
    return None


def _object(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one for anything else (a baseline is hostile input too)."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_baseline(path: Path, kind: str = "accuracy") -> dict[str, Any]:
    """An earlier ``--json`` of ``eval`` (``kind`` "accuracy") or ``bench`` ("speed"), checked
    for the shape the comparison reads, so that a malformed one fails before the long run."""
    try:
        data = read_json(path, "baseline", 64 << 20)
    except FileNotFoundError:
        raise InputError(f"{path}: baseline not found") from None
    command = "eval" if kind == "accuracy" else "bench"
    if kind == "speed" and isinstance(data, dict) and "ratios" not in data:
        raise InputError(f"{path}: the baseline has no ratios: record it with --against and --json")
    if not isinstance(data, dict) or not (
        any(figures(data)) if kind == "accuracy" else _speed_shape(data)
    ):
        raise InputError(f"{path}: not a baseline written by m3trt {command} --json")
    if kind == "accuracy" and not _count(data.get("n_images")):  # compared after the run
        raise InputError(f"{path}: the baseline does not say how many images it scored")
    if kind == "accuracy" and (bad := _bad_figure(data)) is not None:
        raise InputError(
            f"{path}: the baseline's {bad[0]} is {bad[1]!r}, not a figure from 0 to 1; record "
            "it again with m3trt eval --json"
        )
    return data


def check_speed_baseline(
    path: Path, baseline: dict[str, Any], against: str | None, batch_sizes: Sequence[int]
) -> None:
    """What compare_speed refuses after the run, refused before it where the options tell."""
    if not against:
        raise InputError("--baseline compares speed ratios: run with --against REFERENCE")
    then = baseline["reference"]["name"]
    if against in ("torch", "onnx-fp32") and against != then:  # a bundle's name: after loading
        raise InputError(f"{path}: the baseline was measured against {then!r}, not {against!r}")
    if not {str(b) for b in batch_sizes} & set(baseline["ratios"]):
        shown = ",".join(sorted(baseline["ratios"], key=int))
        raise InputError(f"{path}: no batch size in common with the baseline's ({shown})")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _speed_shape(data: dict[str, Any]) -> bool:
    ratios, reference = data.get("ratios"), data.get("reference")
    return (
        isinstance(ratios, dict)
        and all(key.isdigit() and _number(v) and v > 0 for key, v in ratios.items())
        and isinstance(reference, dict)
        and isinstance(reference.get("name"), str)
    )


def missing_figures(current: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Figures this evaluation has and the baseline lacks: not gated, so they are named."""
    then = dict(figures(baseline))
    return [name for name, _ in figures(current) if name not in then]


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
