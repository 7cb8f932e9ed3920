"""Which engine runs which artifact where: a registry keyed on the artifact's format.

``open_engine(bundle, device, engine)`` walks the devices to try (``auto``: the GPU when one is
usable, else the CPU), the engine kinds (the one the build measured fastest first), and the
bundle's artifacts whose format each kind reads, and opens the first that works. Every choice and
every fallback is written down in ``DeviceChoice`` (``m3trt infer`` prints it). Engine modules
are imported only when their kind is used: a CPU host never imports GPU libraries.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3trt.constants import DEVICES
from m3trt.errors import M3Error
from m3trt.runtime.bundle import (
    ENGINE,
    GRAPH,
    ONNX,
    ONNX_ORT_CPU,
    REFERENCE,
    TENSORRT_PLAN,
    Bundle,
)
from m3trt.runtime.engines.base import Engine, EngineUnavailable

AUTO = "auto"
_ENGINES = "m3trt.runtime.engines"


@dataclass(frozen=True)
class EngineKind:
    """One engine implementation: the formats and devices it takes, and how to load it lazily."""

    name: str
    formats: tuple[str, ...]
    devices: tuple[str, ...]
    target: str  # "module:Class" of the Engine subclass
    probe: str  # "module:function" (device) -> (ok, reason)
    parallel_on: tuple[str, ...] = ()  # devices where run() may be called from threads at once

    def availability(self, device: str) -> tuple[bool, str]:
        if device not in self.devices:
            return False, f"{self.name} does not run on {device}"
        return _load(self.probe)(device)

    def open(self, path: Path, device: str, threads: int | None, runs: int = 1) -> Engine:
        """The engine; with ``runs`` > 1 where the kind allows it, ready to run that many
        batches at once (never more than the cores), each on ``threads`` (default: the cores
        shared out) threads. On 2 cores two single-threaded runs beat one run on both
        (benchmarks/results/infer_parallel_runs.md): a convolution net's small layers do not
        split well over threads."""
        cores = os.cpu_count() or 1
        runs = min(runs, cores)
        if runs <= 1 or device not in self.parallel_on:
            return _load(self.target)(path, device, threads)
        per_run = threads or max(1, cores // runs)
        engine = _load(self.target)(path, device, per_run)
        engine.allow_parallel(runs)
        each = f"{per_run} thread{'s' if per_run > 1 else ''} each"
        engine.description = f"{engine.description}, {runs} batches at once ({each})"
        return engine


REGISTRY: dict[str, EngineKind] = {}


def register(kind: EngineKind) -> None:
    """Add (or replace) an engine kind; GPU engines plug in here."""
    REGISTRY[kind.name] = kind


def _load(spec: str) -> Callable[..., Any]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


register(
    EngineKind(
        "onnxruntime",
        (ONNX, ONNX_ORT_CPU),
        ("cpu", "cuda"),
        f"{_ENGINES}.ort_engine:OnnxRuntimeEngine",
        f"{_ENGINES}.ort_engine:availability",
        parallel_on=("cpu",),  # InferenceSession.run is thread-safe; CPU runs bind no buffers
    )
)
register(
    EngineKind(
        "openvino",
        (ONNX,),
        ("cpu",),
        f"{_ENGINES}.openvino_engine:OpenVinoEngine",
        f"{_ENGINES}.openvino_engine:availability",
    )
)
register(
    EngineKind(
        "tensorrt",
        (TENSORRT_PLAN,),
        ("cuda",),
        f"{_ENGINES}.tensorrt_engine:TensorRTEngine",
        f"{_ENGINES}.tensorrt_engine:availability",
    )
)


@dataclass
class DeviceChoice:
    """What will run, on what, and why (printed by ``m3trt infer``)."""

    device: str  # "cpu" | "cuda"
    engine: str  # registry name
    artifact: str  # bundle artifact role
    reason: str
    skipped: list[str] = field(default_factory=list)  # what was tried first and why not

    def summary(self) -> str:
        text = (
            f"device {self.device}, engine {self.engine}, artifact {self.artifact} ({self.reason})"
        )
        if self.skipped:
            text += "; not used: " + "; ".join(self.skipped)
        return text


def artifact_roles(bundle: Bundle, device: str) -> list[tuple[str, str]]:
    """(role, why) candidates for ``device``, best first.

    On a GPU, a CPU bundle's artifacts other than the FP32 reference are CPU formats (ONNX
    Runtime's offline CPU graph, uint8 Q/DQ kernels): the reference runs instead; the
    ``onnx-ort-cpu`` format never runs on a GPU (measured 2x slower than the plain graph on an
    H200). On the CPU, a GPU bundle (plan, FP16 or symmetric INT8 graph) runs its reference.
    """
    roles = []
    for role in (ENGINE, GRAPH, REFERENCE):
        artifact = bundle.artifacts.get(role)
        if artifact is None:
            continue
        cpu_format = artifact.format == ONNX_ORT_CPU or bundle.target == "cpu"
        if device == "cuda" and cpu_format and role != REFERENCE:
            continue
        if device == "cpu" and bundle.target != "cpu" and role != REFERENCE:
            continue  # plans, FP16 and symmetric INT8 graphs are GPU formats
        if artifact.format == TENSORRT_PLAN and device != "cuda":
            continue
        why = {ENGINE: "the bundle's engine", GRAPH: "the bundle's portable graph"}.get(
            role, "the FP32 reference"
        )
        roles.append((role, why))
    return roles


def preferred_kinds(bundle: Bundle, device: str) -> list[str]:
    """Engine kinds in the order to try: the one the build measured fastest for this device
    first (``bundle.runtime``), then the registry's order."""
    order = list(REGISTRY)
    best = _recorded(bundle, device).get("engine")
    if best in order:
        order.remove(best)
        order.insert(0, best)
    return order


def _recorded(bundle: Bundle, device: str) -> dict[str, Any]:
    """The build's measured choice for ``device`` ({} if none). ``load_bundle`` refuses an entry
    that is not an object; a Bundle made in code may still hold one, and is then ignored."""
    entry = (bundle.runtime or {}).get(device)
    return entry if isinstance(entry, dict) else {}


def cuda_usable() -> tuple[bool, str]:
    """Whether any registered engine can run on the GPU here, and why (not)."""
    reasons = []
    for kind in REGISTRY.values():
        if "cuda" in kind.devices:
            ok, why = kind.availability("cuda")
            if ok:
                return True, why
            reasons.append(why)
    return False, "; ".join(reasons) or "no GPU engine is registered"


def open_engine(
    bundle: Bundle,
    device: str = AUTO,
    *,
    engine: str = AUTO,
    threads: int | None = None,
    runs: int = 1,
) -> tuple[Engine, DeviceChoice]:
    """The engine for ``bundle`` on ``device`` (``auto|cpu|cuda``) with ``engine`` (``auto`` or a
    registry name), with the choice actually made and the reasons; ``runs``: batches the caller
    will run at once where the engine allows it (``EngineKind.open``)."""
    if device not in DEVICES:
        raise M3Error(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if engine != AUTO and engine not in REGISTRY:
        raise M3Error(f"unknown engine {engine!r}: use auto or one of {', '.join(REGISTRY)}")
    skipped: list[str] = []
    if device == AUTO:
        ok, _ = cuda_usable()
        devices = ["cuda", "cpu"] if ok else ["cpu"]
        if not ok:  # said on every CPU run: short; the install advice is doctor's
            skipped.append("cuda: not usable here (`m3trt doctor` says why)")
    else:
        devices = [device]
    for dev in devices:
        opened = _open_on(bundle, dev, engine, threads, runs, skipped)
        if opened is not None:
            return opened
    what = f"--device {device}" + (f" --engine {engine}" if engine != AUTO else "")
    raise M3Error(f"{bundle.path}: nothing can run this bundle with {what}: {'; '.join(skipped)}")


def _open_on(
    bundle: Bundle,
    device: str,
    engine: str,
    threads: int | None,
    runs: int,
    skipped: list[str],
) -> tuple[Engine, DeviceChoice] | None:
    roles = artifact_roles(bundle, device)
    kinds = [engine] if engine != AUTO else preferred_kinds(bundle, device)
    pairs = [(name, role, why) for name in kinds for role, why in roles]
    recorded = _recorded(bundle, device)
    for i, (name, role, _) in enumerate(pairs):  # the build's measured choice goes first
        if name == recorded.get("engine") and role == recorded.get("artifact"):
            pairs.insert(0, pairs.pop(i))
            break
    readable = False
    for name, role, why_role in pairs:
        kind = REGISTRY[name]
        if bundle.artifacts[role].format not in kind.formats:
            continue
        readable = True
        ok, why = kind.availability(device)
        if not ok:
            skipped.append(f"{name} on {device}: {why}")
            continue
        try:
            opened = kind.open(bundle.artifact_path(role), device, threads, runs)
        except EngineUnavailable as exc:
            skipped.append(f"{name} on {device}: {exc}")
            continue
        reason = _reason(engine, name, recorded, why_role)
        return opened, DeviceChoice(device, name, role, reason, list(dict.fromkeys(skipped)))
    if engine != AUTO and not readable:
        skipped.append(f"{engine} on {device}: no artifact of this bundle is in a format it reads")
    return None


def _reason(engine: str, name: str, recorded: dict[str, Any], why_role: str) -> str:
    if engine != AUTO:
        return f"asked for {engine}, {why_role}"
    if recorded.get("engine") == name:
        return f"fastest when the bundle was built, {why_role}"
    return why_role


def describe(engine: Engine, choice: DeviceChoice) -> str:
    return f"{choice.summary()}: {engine.description}"


def open_path(
    path: str | Path,
    *,
    engine: str = "onnxruntime",
    device: str = "cpu",
    threads: int | None = None,
) -> Engine:
    """An engine over one graph file (build candidates, the accuracy guard, benchmarks)."""
    if engine not in REGISTRY:
        raise M3Error(f"unknown engine {engine!r}: use one of {', '.join(REGISTRY)}")
    kind = REGISTRY[engine]
    ok, why = kind.availability(device)
    if not ok:
        raise EngineUnavailable(why)
    return kind.open(Path(path), device, threads)
