"""Checkpoint folders (DESIGN §3.2): ``config.json`` + ``model.safetensors``, never a pickle, so
loading a checkpoint cannot execute code. The resumable training state lives in ``last/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from m3trt.atomic import atomic_path, fsync_dir, publish, temp_sibling, write_json
from m3trt.config import CheckpointConfig, ModelConfig
from m3trt.data.safe_open import read_json
from m3trt.errors import InputError, WriteFailure
from m3trt.model import M3Net

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAST_DIR = "last"
AUX_FILE = "aux.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
UNFITTED_DIR = "unfitted"  # in last/: the best checkpoint before the steps fitted on val


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
    """Rebuild the model from ``config.json`` and load its weights, checking every key.

    The weights file's header is compared with the model config.json describes (built on the
    meta device, no memory) before the real model is built: widths edited to 65536 asked for
    ~112 GiB before a weight was read. A config that matches the file is bounded by the file."""
    folder = Path(folder)
    config = load_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():  # a FIFO or a folder was "missing" too
        from m3trt.data.manifest import not_a_file

        why = not_a_file(weights)
        why = "missing from the checkpoint" if why == "not found" else why
        raise InputError(f"{weights}: weights file {why}")
    check_weights_header(weights, config.model)
    model = M3Net(config.model)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{weights}: cannot read weights ({exc})") from None
    _check_weights(weights, state, model.state_dict())
    model.load_state_dict(state)
    model.eval()
    return model, config


def check_weights_header(path: Path, model_config: ModelConfig) -> None:
    """The tensors of the safetensors file ``path`` are the names and shapes of the model
    ``model_config`` describes: checked from the file's header and a model on the meta device,
    so neither a huge config nor a huge file is allocated first."""
    header = _read_header(path)
    with torch.device("meta"):
        expected = M3Net(model_config).state_dict()
    _check_names_and_shapes(path, header, expected)


def _read_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor, from the safetensors header alone."""
    try:
        with safe_open(path, framework="pt") as f:
            header = {}
            for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                piece = f.get_slice(name)
                header[name] = (list(piece.get_shape()), str(piece.get_dtype()))
            return header
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read weights ({exc})") from None


def _check_names_and_shapes(
    path: Path, header: dict[str, tuple[list[int], str]], expected: dict[str, torch.Tensor]
) -> None:
    missing = [k for k in expected if k not in header]
    unexpected = [k for k in header if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"{path}: weights do not match config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, want in expected.items():
        shape = header[name][0]
        if shape != list(want.shape):
            raise InputError(
                f"{path}: tensor {name} has shape {shape}, config.json gives {list(want.shape)}"
            )


def _check_weights(
    path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Every tensor the model has, of its shape and kind, and finite in the model's own dtype:
    torch's own refusal of a wrong shape was several lines, a tensor of booleans was cast to
    floats, NaN weights made a bundle whose results were not JSON, and float64 1e300 became
    inf in float32 (every exported output NaN)."""
    _check_names_and_shapes(path, {k: (list(v.shape), "") for k, v in state.items()}, expected)
    for name, want in expected.items():
        got = state[name]
        if got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise InputError(f"{path}: tensor {name} is {got.dtype}, not {want.dtype}")
        if got.dtype.is_floating_point and not bool(torch.isfinite(got.to(want.dtype)).all()):
            raise InputError(
                f"{path}: tensor {name} holds NaN or infinite values (as {want.dtype})"
            )


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

    Training-only heads (``aux``) are kept here, never in the checkpoint that gets exported.
    The files are written to a staging folder that then replaces ``last/`` whole: replaced one
    by one, a kill between them left one epoch's weights beside another's optimizer, and
    ``--resume`` took that silently."""
    folder = Path(folder)
    recover_training_state(folder)
    staging = temp_sibling(folder / LAST_DIR)
    staging.mkdir(parents=True)
    try:
        _atomic_save_tensors(model.state_dict(), staging / WEIGHTS_FILE)
        if aux is not None and aux.state_dict():
            _atomic_save_tensors(aux.state_dict(), staging / AUX_FILE)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        opt_tensors["__rng__"] = torch.get_rng_state()
        _atomic_save_tensors(opt_tensors, staging / OPTIMIZER_FILE)
        write_json(staging / TRAINER_FILE, {**trainer, "optimizer": opt_meta}, indent=1)
        _swap_in(staging, folder / LAST_DIR)
    except WriteFailure as exc:  # it named a file in the staging folder, removed just below
        raise WriteFailure(folder / LAST_DIR, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, last: Path) -> None:
    """``staging`` becomes ``last``; the old one is moved aside first and removed after, so a
    kill at any point leaves one whole state (``recover_training_state`` puts it back)."""
    aside = temp_sibling(last, "old") if last.exists() else None
    try:
        if aside is not None:
            os.rename(last, aside)
        os.rename(staging, last)
        fsync_dir(last.parent)
    except OSError as exc:
        if aside is not None and not last.exists():
            os.rename(aside, last)
        raise WriteFailure(last, exc) from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def recover_training_state(folder: Path) -> None:
    """Undo what a killed save left: a ``last/`` moved aside comes back, staging folders and
    temp files go. Run under the folder's lock (``train`` holds it)."""
    last = folder / LAST_DIR
    aside = sorted(folder.glob(f".{LAST_DIR}.old-*"))
    if aside and not last.exists():
        os.rename(aside.pop(), last)
    for leftover in (*aside, *folder.glob(f".{LAST_DIR}.tmp-*"), *last.glob(".*.tmp-*")):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


FITTED_ON_VAL = ("quantity_calibration", "late_fusion", "decision_threshold")


def is_finished(folder: Path, state: dict[str, Any]) -> bool:
    """The run ended, the steps fitted on val included: ``finished`` says so, and for a run
    from before that flag, all epochs done, no ``unfitted/`` kept and a fitted step recorded in
    the checkpoint (rerun, it would fit the fitted weights again)."""
    if state.get("finished"):
        return True
    options = state.get("options")
    epochs = options.get("epochs") if isinstance(options, dict) else None
    done = state.get("epoch")
    if not (isinstance(done, int) and isinstance(epochs, int) and done >= epochs):
        return False
    if (folder / LAST_DIR / UNFITTED_DIR).is_dir():
        return False  # stopped among the fitted steps: they start again from the kept copy
    try:
        config = read_json(folder / CONFIG_FILE, "checkpoint config", 16 << 20)
    except (FileNotFoundError, InputError):
        return False
    training = config.get("training") if isinstance(config, dict) else None
    return isinstance(training, dict) and any(key in training for key in FITTED_ON_VAL)


def mark_finished(folder: Path) -> None:
    """Say in ``last/trainer.json`` that the run ended, fitting on val included: a --resume of
    it would fit the already fitted weights again."""
    trainer_file = folder / LAST_DIR / TRAINER_FILE
    state = read_training_state(folder)
    write_json(trainer_file, {**state, "finished": True}, indent=1)


def keep_unfitted(folder: Path) -> None:
    """The best epoch's checkpoint as the epochs left it, before the steps fitted on val fold
    into its weights: kept once (hard links, no copy), put back when a run is resumed after a
    kill among those steps, so that they never apply twice."""
    kept = folder / LAST_DIR / UNFITTED_DIR
    names = (WEIGHTS_FILE, CONFIG_FILE)
    if kept.is_dir():
        for name in names:
            temp = temp_sibling(folder / name)
            _link_or_copy(kept / name, temp)
            publish(temp, folder / name)
        return
    staging = temp_sibling(kept)
    staging.mkdir()
    try:
        for name in names:
            _link_or_copy(folder / name, staging / name)
        os.rename(staging, kept)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system has them (a save replaces a file, never edits it, so
    the link keeps the old bytes), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def read_training_state(folder: str | Path) -> dict[str, Any]:
    """The JSON half of ``last/``: progress, options and config, read before the model is built."""
    folder = Path(folder)
    recover_training_state(folder)
    trainer_file = folder / LAST_DIR / TRAINER_FILE
    try:
        state = read_json(trainer_file, "training state", 64 << 20)
    except FileNotFoundError:
        raise InputError(
            f"{folder}: nothing to resume (no {LAST_DIR}/{TRAINER_FILE}: the run stopped before "
            "it saved its first training state); train into a new or empty folder"
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
        tensors = load_file(last / OPTIMIZER_FILE)
        torch.set_rng_state(tensors.pop("__rng__"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise InputError(f"{last}: cannot resume from this training state ({exc})") from None
