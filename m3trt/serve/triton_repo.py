"""``m3trt export-triton``: a bundle as a Triton Inference Server model repository entry.

```
REPO/NAME/config.pbtxt     platform, max batch size, inputs/outputs, dynamic batching, instances
REPO/NAME/labels.txt       one label per line (Triton's label_filename, on ``scores``)
REPO/NAME/1/model.onnx     the bundle's engine artifact (or 1/model.plan for a TensorRT bundle)
```
Preprocessing is inside the graph (uint8 NHWC image in), so no Python backend is needed. The
config is built as data in Triton's model-config field names, written as protobuf text, and, when
``tritonclient`` is installed, parsed back into Triton's own ``ModelConfig`` message before it is
published. The entry is assembled in a hidden sibling folder and renamed into place, under the
lock ``REPO/.NAME.lock`` (a file: Triton takes every folder in a repository, hidden ones too, for a
model, and passes over files), so two exports never write one entry at once.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m3trt.atomic import clear_leftovers, fsync_dir, temp_sibling
from m3trt.constants import MAX_BATCH
from m3trt.errors import InputError
from m3trt.runtime.bundle import (
    ENGINE,
    GRAPH,
    ONNX,
    REFERENCE,
    TENSORRT_PLAN,
    Bundle,
    load_bundle,
)
from m3trt.runtime.outputs import checked_locks, overlap

ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
DEFAULT_ONNX_MAX_BATCH = MAX_BATCH
LABELS_FILE = "labels.txt"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TYPES = {
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
}
_ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 11: np.float64}  # fmt: skip


class Enum(str):
    """A protobuf enum value: written unquoted in text format."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension


def tensor_config(tensor: Tensor, label_file: str | None = None) -> dict[str, Any]:
    """One ``ModelInput``/``ModelOutput``. A per-image scalar ([B] in the graph) is ``dims: [1]``
    reshaped to ``[]``, as Triton requires for batched models."""
    entry: dict[str, Any] = {"name": tensor.name, "data_type": Enum(triton_type(tensor.dtype))}
    if tensor.dims:
        entry["dims"] = list(tensor.dims)
    else:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    if label_file:
        entry["label_filename"] = label_file
    return entry


def triton_type(dtype: np.dtype) -> str:
    try:
        return _TYPES[np.dtype(dtype)]
    except KeyError:
        raise InputError(f"no Triton data type for {np.dtype(dtype)}") from None


def model_config(
    name: str,
    platform: str,
    max_batch: int,
    inputs: list[Tensor],
    outputs: list[Tensor],
    *,
    max_queue_delay_us: int,
    instance_kind: str,
    instances: int,
    labels_output: str | None = "scores",
    model_filename: str | None = None,
) -> dict[str, Any]:
    """The model config as data, in Triton's ``model_config.proto`` field names."""
    config: dict[str, Any] = {"name": name, "platform": platform, "max_batch_size": max_batch}
    if model_filename:
        config["default_model_filename"] = model_filename
    config["input"] = [tensor_config(t) for t in inputs]
    config["output"] = [
        tensor_config(t, LABELS_FILE if t.name == labels_output else None) for t in outputs
    ]
    config["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
    config["instance_group"] = [{"kind": Enum(instance_kind), "count": instances}]
    return config


def served_config(model: Any) -> dict[str, Any]:
    """``GET /v2/models/NAME/config`` of ``m3trt serve``: the same fields, for the served model."""
    tensors = [
        [Tensor(s.name, s.dtype, s.dims) for s in side] for side in (model.inputs, model.outputs)
    ]
    batcher = model.batcher
    delay = int(batcher.max_delay_s * 1e6) if batcher is not None else 0
    config = model_config(
        model.name,
        "m3trt",
        model.max_batch,
        *tensors,
        max_queue_delay_us=delay,
        instance_kind="KIND_GPU" if model.annotator.engine.device == "cuda" else "KIND_CPU",
        instances=1,
        labels_output=None,
    )
    return {k: _plain(v) for k, v in config.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Enum) else value


# ---------------------------------------------------------------------------- protobuf text
def to_pbtxt(config: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a config made of dicts, lists, strings, ints, bools and Enums."""
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            blocks = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value]
            lines.append(f"{pad}{key} [\n" + ",\n".join(blocks) + f"\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.isascii() or any(c in value for c in '"\\\n\r'):
            raise InputError(f"cannot write {value!r} in config.pbtxt: use plain ASCII names")
        return f'"{value}"'
    raise TypeError(f"cannot write {type(value).__name__} to protobuf text")


def parse_config(text: str) -> Any:
    """``config.pbtxt`` text -> Triton's ``ModelConfig`` (needs ``tritonclient[grpc]``)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except Exception as exc:  # ImportError, or tritonclient's own "no grpc support" error
        raise ImportError(
            "checking config.pbtxt needs Triton's model-config protobuf: "
            "pip install 'm3trt[serve]' (tritonclient[grpc])"
        ) from exc
    return text_format.Parse(text, model_config_pb2.ModelConfig())


# ------------------------------------------------------------------------------------ export
@dataclass(frozen=True)
class TritonExport:
    folder: Path
    platform: str
    max_batch: int
    artifact: str  # the bundle artifact role copied under 1/
    checked: bool  # parsed back into Triton's ModelConfig


def export_triton(
    bundle: str | Path | Bundle,
    repo: str | Path,
    *,
    name: str | None = None,
    max_batch: int | None = None,
    max_queue_delay_us: int = 2000,
    instance_kind: str = "auto",
    instances: int = 1,
    overwrite: bool = False,
) -> TritonExport:
    """Write ``repo/NAME/`` for ``bundle`` (hashes verified first)."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, verify=True)
    if name is not None and not name:  # "" took the bundle's name silently
        raise InputError("--name is empty; give a model name, or leave --name out")
    name = bundle.name if name is None else name
    if not _NAME.match(name):
        raise InputError(
            f"model name {name!r}: use letters, digits, '_', '.', '-', starting with a letter, "
            "a digit or '_' (Triton takes a hidden folder for a model too)"
        )
    if instances < 1:
        raise InputError(f"--instances must be at least 1, not {instances}")
    if max_queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us must be >= 0, not {max_queue_delay_us}")
    kind = _instance_kind(bundle, instance_kind)
    role, platform, filename = _artifact(bundle, kind)
    limit = _max_batch(bundle, max_batch)
    inputs, outputs = _signature(bundle, role)
    config = model_config(
        name,
        platform,
        limit,
        inputs,
        outputs,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=kind,
        instances=instances,
        model_filename=filename,
    )
    text = to_pbtxt(config)
    checked = _check(text)
    if os.path.lexists(repo) and not Path(repo).is_dir():
        raise InputError(f"{repo}: REPO_DIR exists and is not a folder; choose another REPO_DIR")
    folder = Path(repo) / name
    if (how := overlap(folder, bundle.path)) is not None:
        raise InputError(
            f"{folder}: the Triton model folder {how} the bundle {bundle.path}; choose another "
            "REPO_DIR or --name"
        )
    with checked_locks({"--name": folder}, lambda: _check_target(folder, overwrite)):
        clear_leftovers(folder)  # Triton would load each as a model and, failing, not start
        _publish(folder, text, bundle, role, filename, overwrite)
    return TritonExport(folder, platform, limit, role, checked)


def _instance_kind(bundle: Bundle, kind: str) -> str:
    choices = {"auto": None, "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
    if kind not in choices:
        raise InputError(f"--instance-kind {kind!r}: use auto, cpu or gpu")
    if kind == "auto":
        return "KIND_GPU" if bundle.target != "cpu" else "KIND_CPU"
    if bundle.target == "tensorrt" and kind == "cpu":
        raise InputError(f"{bundle.path}: a TensorRT plan runs on GPUs only; drop --instance-kind")
    return choices[kind]  # type: ignore[return-value]


def _artifact(bundle: Bundle, kind: str) -> tuple[str, str, str]:
    """The plan of a TensorRT bundle; otherwise a portable ONNX graph. A CPU bundle's engine
    artifact is ONNX Runtime's offline-optimized graph, tied to the ONNX Runtime release that
    wrote it, so Triton gets the portable graph of the same precision (``graph``) instead."""
    if bundle.target == "tensorrt":
        art = bundle.artifacts.get(ENGINE)
        if art is None or art.format != TENSORRT_PLAN:
            raise InputError(f"{bundle.path}: this TensorRT bundle has no plan; rebuild it")
        return ENGINE, PLAN_PLATFORM, "model.plan"
    portable = [r for r in (ENGINE, GRAPH) if r in bundle.artifacts]
    portable = [r for r in portable if bundle.artifacts[r].format == ONNX]
    role = portable[0] if portable else REFERENCE
    if kind == "KIND_GPU" and bundle.target == "cpu" and bundle.precision == "int8":
        role = REFERENCE  # CPU Q/DQ (uint8 activations) is a CPU format; GPUs run the FP32 graph
    return role, ONNX_PLATFORM, "model.onnx"


def _max_batch(bundle: Bundle, wanted: int | None) -> int:
    if wanted is not None and wanted < 1:
        raise InputError(f"--max-batch-size must be at least 1, not {wanted}")
    if bundle.target != "tensorrt":
        return wanted or DEFAULT_ONNX_MAX_BATCH
    profiles = (bundle.provenance.get("tensorrt_plan") or {}).get("profiles") or []
    try:
        plan_max = max(int(p["max"]) for p in profiles)
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"{bundle.manifest_path}: the plan's optimisation profiles are not recorded, so its "
            "max batch is unknown; rebuild the bundle"
        ) from None
    if wanted is not None and wanted > plan_max:
        raise InputError(f"--max-batch-size {wanted} is above the plan's max batch {plan_max}")
    return wanted or plan_max


def _signature(bundle: Bundle, role: str) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs and outputs (batch dimension dropped), read from its ONNX file; a plan
    has the I/O of the ONNX graph it was built from (``graph``)."""
    import onnx

    source = GRAPH if bundle.artifacts[role].format == TENSORRT_PLAN else role
    if source not in bundle.artifacts:
        source = REFERENCE
    path = bundle.artifact_path(source)
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise InputError(f"{path}: cannot read the ONNX graph: {exc}") from None
    return _tensors(graph.input, path), _tensors(graph.output, path)


def _tensors(values: Any, path: Path) -> list[Tensor]:
    result = []
    for value in values:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in _ONNX_TYPES:
            raise InputError(f"{path}: tensor {value.name!r} has an unsupported element type")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if not dims:
            raise InputError(f"{path}: tensor {value.name!r} has no batch dimension")
        result.append(
            Tensor(value.name, np.dtype(_ONNX_TYPES[tensor_type.elem_type]), tuple(dims[1:]))
        )
    return result


def _check(text: str) -> bool:
    try:
        parse_config(text)
    except ImportError:
        return False
    return True


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{folder} exists and is not a folder; choose another --name or REPO_DIR")
    if folder.exists() and not overwrite:
        raise InputError(f"{folder} exists; pass --overwrite to replace it")


def _publish(
    folder: Path, text: str, bundle: Bundle, role: str, filename: str, overwrite: bool
) -> None:
    _check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(folder)
    try:
        (staging / "1").mkdir(parents=True)
        shutil.copyfile(bundle.artifact_path(role), staging / "1" / filename)
        (staging / LABELS_FILE).write_text(
            "".join(f"{label}\n" for label in bundle.model.label_names), encoding="utf-8"
        )
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        old = None
        if folder.exists():
            if not overwrite:  # another run published it while this one staged
                raise InputError(f"{folder} exists; pass --overwrite to replace it")
            old = temp_sibling(folder, "old")
            folder.rename(old)
        try:
            staging.rename(folder)
        except OSError as exc:  # another run published it between the check and the rename
            if old is not None and not folder.exists():
                old.rename(folder)  # the entry this run moved aside goes back
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise InputError(f"{folder} exists; pass --overwrite to replace it") from None
        fsync_dir(folder.parent)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
