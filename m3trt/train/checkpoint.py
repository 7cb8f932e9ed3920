"""Checkpoint folders (DESIGN §3.2): ``config.json`` + ``model.safetensors``, never a pickle, so
loading a checkpoint cannot execute code. The resumable training state lives in ``last/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from m3trt.atomic import atomic_path, write_json
from m3trt.config import CheckpointConfig
from m3trt.data.safe_open import read_json
from m3trt.errors import InputError, WriteFailure
from m3trt.model import M3Net

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAST_DIR = "last"
AUX_FILE = "aux.safetensors"


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict | None = None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata=meta)
        except SafetensorError as exc:  # its I/O errors (a full disk) are not OSErrors
            raise WriteFailure(path, exc) from None


def save_checkpoint(folder: str | Path, model: M3Net, config: CheckpointConfig) -> Path:
    """Write weights first, then the config: a folder with a config always has matching weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(model.state_dict(), folder / WEIGHTS_FILE, {"format": "m3trt"})
    config.save(folder / CONFIG_FILE)
    return folder


def load_config(folder: str | Path) -> CheckpointConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: checkpoint folder not found")
    return CheckpointConfig.load(folder / CONFIG_FILE)


def load_checkpoint(folder: str | Path) -> tuple[M3Net, CheckpointConfig]:
    """Rebuild the model from ``config.json`` and load its weights, checking every key."""
    folder = Path(folder)
    config = load_config(folder)
    model = M3Net(config.model)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(f"{weights}: weights file missing from the checkpoint")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights}: cannot read weights ({exc})") from None
    _check_weights(weights, state, model.state_dict())
    model.load_state_dict(state)
    model.eval()
    return model, config


def _check_weights(
    path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Every tensor the model has, of its shape and kind, and finite: torch's own refusal of a
    wrong shape was several lines, a tensor of booleans was cast to floats, and NaN weights made
    a bundle whose results were not JSON."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not match config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape:
            raise InputError(
                f"{path}: tensor {name} has shape {list(got.shape)}, config.json gives "
                f"{list(want.shape)}"
            )
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise InputError(f"{path}: tensor {name} is {got.dtype}, not {want.dtype}")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise InputError(f"{path}: tensor {name} holds NaN or infinite values")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and the rest (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    folder: str | Path,
    model: M3Net,
    optimizer: torch.optim.Optimizer,
    trainer: dict[str, Any],
    aux: torch.nn.Module | None = None,
) -> None:
    """The state ``--resume`` needs: weights, optimizer moments, RNG and progress (no pickle).

    Training-only heads (``aux``) are kept here, never in the checkpoint that gets exported."""
    last = Path(folder) / LAST_DIR
    last.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(model.state_dict(), last / WEIGHTS_FILE)
    if aux is not None and aux.state_dict():
        _atomic_save_tensors(aux.state_dict(), last / AUX_FILE)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    opt_tensors["__rng__"] = torch.get_rng_state()
    _atomic_save_tensors(opt_tensors, last / "optimizer.safetensors")
    write_json(last / "trainer.json", {**trainer, "optimizer": opt_meta}, indent=1)


def read_training_state(folder: str | Path) -> dict[str, Any]:
    """The JSON half of ``last/``: progress, options and config, read before the model is built."""
    trainer_file = Path(folder) / LAST_DIR / "trainer.json"
    try:
        state = read_json(trainer_file, "training state", 64 << 20)
    except FileNotFoundError:
        raise InputError(
            f"{folder}: nothing to resume (no {LAST_DIR}/trainer.json); drop --resume"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"{trainer_file}: training state must be a JSON object")
    return state


def restore_training_state(
    folder: str | Path,
    state: dict[str, Any],
    model: M3Net,
    optimizer: torch.optim.Optimizer,
    aux: torch.nn.Module | None = None,
) -> None:
    """Load weights, optimizer moments and the torch RNG saved by ``save_training_state``."""
    last = Path(folder) / LAST_DIR
    try:
        model.load_state_dict(load_file(last / WEIGHTS_FILE))
        if aux is not None and aux.state_dict():
            aux.load_state_dict(load_file(last / AUX_FILE))
        tensors = load_file(last / "optimizer.safetensors")
        torch.set_rng_state(tensors.pop("__rng__"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise InputError(f"{last}: cannot resume from this training state ({exc})") from None
