"""Training (DESIGN §2): AdamW with warm-up and a cosine schedule, BCE + lambda * SmoothL1 on the
label count, a validation pass per epoch, the best checkpoint kept, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from m3trt import metrics
from m3trt.config import (
    BACKBONES,
    MAX_CHECKPOINT_IMAGE_SIZE,
    MAX_WIDTH,
    MIN_IMAGE_SIZE,
    CheckpointConfig,
    ModelConfig,
    Preprocessing,
)
from m3trt.constants import MAX_TRAIN_BATCH
from m3trt.data.batches import RecordSet
from m3trt.data.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    Record,
    read_manifest,
    repeated_images,
)
from m3trt.data.safe_open import open_regular, read_json
from m3trt.data.vocab import Vocab, build_tag_vocab
from m3trt.errors import InputError
from m3trt.model import M3Net, load_backbone_weights
from m3trt.progress import SILENT, Reporter
from m3trt.train.balance import AuxHeads, drop_each_tag
from m3trt.train.checkpoint import (
    CONFIG_FILE,
    LAST_DIR,
    TRAINER_FILE,
    WEIGHTS_FILE,
    check_weights_header,
    is_finished,
    keep_unfitted,
    load_checkpoint,
    mark_finished,
    read_training_state,
    restore_training_state,
    save_checkpoint,
    save_training_state,
)
from m3trt.train.late_fusion import describe as describe_fusion
from m3trt.train.late_fusion import fit_late_fusion
from m3trt.train.predict import predict, preprocess_for
from m3trt.train.quantity import QuantityCalibration, apply_calibration, fit_calibration


@dataclass
class TrainOptions:
    backbone: str = "resnet18"
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    use_tags: bool = True
    multi_scale: bool = True
    quantity_head: bool = True
    quantity_weight: float = 1.0
    tag_min_count: int = 2
    tag_max_size: int = 1000
    tag_hidden: int = 2048
    visual_dim: int | None = None
    val_fraction: float = 0.1
    warmup_epochs: float = 1.0
    backbone_weights: str | None = None
    threads: int | None = None
    # Modality balance (issue 15, m3trt/train/balance.py; measured in the README's ablation, where
    # aux_visual_weight=1 wins, so it is the default).
    tag_drop_all: float = 0.3
    tag_drop_each: float = 0.0
    aux_visual_weight: float = 1.0
    aux_tags_weight: float = 0.0
    visual_first_epochs: int = 0
    calibrate_quantity: bool = False
    # The direct tag -> label path (ModelConfig.tag_skip) and its learning rate, as a multiple of
    # ``lr``: a sparse linear map trained with Adam moves each weight by about lr per step, too
    # slowly for a few hundred steps to reach the logits a word that names a label deserves.
    tag_skip: bool = True
    tag_skip_lr_mult: float = 50.0
    # The decision (ModelConfig.decision_threshold): "val" fits it on the validation split after
    # training (the O-F1-maximising threshold), "none" keeps k = round(q), a number fixes it.
    decision_threshold: str = "val"
    # Random translation (issue 15): each training image is shifted by up to this fraction of
    # its side in x and y (edge pixels repeated), on top of the horizontal flips; 0 = flips only.
    augment_shift: float = 0.0
    # Late fusion fitted on val (m3trt/train/late_fusion.py): after training, the trust in the
    # tags, the image and the joint model is refitted on the validation split and folded into
    # the classifier and the tag -> label path (same graph). Needs tag_skip. Measured in the
    # README's ablation (issue 15, third round), where it wins in every regime: the default.
    late_fusion: bool = True


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_val: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def split_records(
    manifest: Manifest, val_fraction: float, seed: int
) -> tuple[list[Record], list[Record], dict[str, int]]:
    """Labelled train and val records. Records without a split train; without a val split, a
    seeded ``val_fraction`` of train is held out. Unlabelled images are skipped and counted."""
    train = [r for r in manifest.records if r.split in (None, "train")]
    val = manifest.split("val")
    counts = {
        "unlabelled_skipped": sum(1 for r in train + val if not r.labels),
        "missing_images": len(manifest.missing_images),
    }
    train = [r for r in train if r.labels]
    val = [r for r in val if r.labels]
    if not train:
        raise InputError(
            f"{manifest.path}: the training split is empty (no labelled record with split "
            '"train" or without a split)'
        )
    if len(train) < 2:  # a batch of one cannot train BatchNorm (a ValueError deep in torch)
        raise InputError(
            f"{manifest.path}: only 1 labelled training image; training needs at least 2 "
            "(BatchNorm learns from batches of two or more)"
        )
    if not val:
        if len(train) < 10:
            raise InputError(
                f"{manifest.path}: only {len(train)} labelled training images and no val split; "
                'add records with "split": "val" or more training images'
            )
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, round(len(train) * val_fraction))
        held = set(order[:n_val].tolist())
        val = [r for i, r in enumerate(train) if i in held]
        train = [r for i, r in enumerate(train) if i not in held]
        counts["val_held_out_from_train"] = len(val)
    counts |= {"train": len(train), "val": len(val)}
    return train, val, counts


def build_config(
    manifest: Manifest, train: list[Record], options: TrainOptions
) -> CheckpointConfig:
    tag_vocab = (
        build_tag_vocab(
            (r.tags for r in train), min_count=options.tag_min_count, max_size=options.tag_max_size
        )
        if options.use_tags
        else []
    )
    k_max = max(len(r.labels) for r in train)
    model = ModelConfig(
        num_labels=len(manifest.label_names),
        num_tags=len(tag_vocab),
        backbone=options.backbone,
        multi_scale=options.multi_scale,
        use_tags=options.use_tags and bool(tag_vocab),
        quantity_head=options.quantity_head,
        visual_dim=options.visual_dim,
        tag_hidden=options.tag_hidden,
        tag_drop_all=options.tag_drop_all,
        k_max=k_max,
        tag_skip=options.tag_skip and options.use_tags and bool(tag_vocab),
    )
    return CheckpointConfig(
        model=model,
        preprocessing=Preprocessing(image_size=options.image_size),
        label_names=list(manifest.label_names),
        tag_vocab=tag_vocab,
    )


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, options: TrainOptions) -> torch.optim.AdamW:
    """No weight decay on biases and BatchNorm parameters (1-D tensors); the direct tag ->
    label path (``tag_skip``) in its own group at ``tag_skip_lr_mult`` times the rate."""
    skip = {id(p) for name, p in model.named_parameters() if name.endswith("tag_skip.weight")}
    rest = [p for p in model.parameters() if id(p) not in skip]
    decay = [p for p in rest if p.ndim > 1]
    no_decay = [p for p in rest if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": options.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
    ]
    if skip:
        params = [p for p in model.parameters() if id(p) in skip]
        groups.append(
            {
                "params": params,
                "weight_decay": options.weight_decay,
                "lr_mult": options.tag_skip_lr_mult,
            }
        )
    return torch.optim.AdamW(groups, lr=options.lr)


def _flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flip = rng.random(len(images)) < 0.5
    if not flip.any():
        return images
    out = images.copy()
    out[flip] = out[flip, :, ::-1]
    return out


def _shift(images: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Translate each image of a uint8 NHWC batch by a random offset of up to ``fraction`` of
    its side, repeating the edge pixels (no random numbers drawn when ``fraction`` is 0)."""
    pad = round(fraction * images.shape[1])
    if pad <= 0:
        return images
    offsets = rng.integers(0, 2 * pad + 1, size=(len(images), 2))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return np.stack(
        [padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def run_epoch(
    model: M3Net,
    aux: AuxHeads,
    optimizer: torch.optim.Optimizer,
    preprocess: torch.nn.Module,
    data: RecordSet,
    epoch: int,
    schedule: Schedule,
    options: TrainOptions,
    advance: Callable[..., None],
) -> tuple[dict[str, float], int, float]:
    """One pass over the training set in a seeded order; returns loss sums, images, images/s."""
    model.train()
    rng = np.random.default_rng([options.seed, epoch])
    order = rng.permutation(len(data))
    counts = torch.from_numpy(data.counts.astype(np.float32))
    sums = {"loss": 0.0, "bce": 0.0, "qty": 0.0}
    seen, start = 0, time.perf_counter()
    tags_off = epoch < options.visual_first_epochs
    drop_each = options.tag_drop_each if model.tags is not None else 0.0
    for step, batch in enumerate(
        data.batches(options.batch_size, order=order, drop_singleton=True)
    ):
        lr = lr_at(
            epoch * schedule.steps_per_epoch + step,
            schedule.total_steps,
            schedule.warmup_steps,
            options.lr,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        images = _shift(_flip(batch.images, rng), options.augment_shift, rng)
        images = preprocess(torch.from_numpy(images))
        tags = torch.from_numpy(batch.tags)
        tags = tags * 0 if tags_off else drop_each_tag(tags, drop_each)
        targets = torch.from_numpy(batch.labels)
        joint, tags_seen = model.encode(images, tags)
        logits = model.logits(joint, tags_seen)
        q = model.quantity(joint) if model.quantity is not None else None
        bce = F.binary_cross_entropy_with_logits(logits, targets)
        qty = F.smooth_l1_loss(q, counts[batch.indices]) if q is not None else torch.zeros(())
        loss = bce + options.quantity_weight * qty
        extra = aux.losses(joint, targets) if aux else {}
        weights = {"aux_visual": options.aux_visual_weight, "aux_tags": options.aux_tags_weight}
        for key, value in extra.items():
            loss = loss + weights[key] * value
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise InputError(_diverged(epoch, step, f"the loss is {loss_value:g}", lr, options))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        try:
            optimizer.step()
        except RuntimeError as exc:  # Adam's step at a rate float32 cannot hold (--lr 1e300)
            if "overflow" not in str(exc):
                raise
            what = f"the step overflows float32 (loss {loss_value:g})"
            raise InputError(_diverged(epoch, step, what, lr, options)) from None
        n = len(batch.indices)
        seen += n
        for key, value in (("loss", loss), ("bce", bce), ("qty", qty), *extra.items()):
            sums[key] = sums.get(key, 0.0) + value.item() * n
        advance(n, loss=sums["loss"] / seen)
    return sums, seen, seen / max(1e-9, time.perf_counter() - start)


def _diverged(epoch: int, step: int, what: str, lr: float, options: TrainOptions) -> str:
    """Training cannot recover from a non-finite loss or step: say so at the step (a learning
    rate of 1e30 ran its whole epoch on NaN weights and failed only in validation; 1e300
    overflowed inside Adam, a traceback)."""
    return (
        f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} "
        f"(learning rate {lr:g} of --lr {options.lr:g}); train again into a new folder with "
        "a lower --lr (or --quantity-weight)"
    )


def validate(
    model: M3Net, config: CheckpointConfig, data: RecordSet, source: object = "val split"
) -> dict[str, Any]:
    scores, q, rows = predict(model, preprocess_for(config), data)
    if not len(rows):  # metrics would fail with a bare ValueError after a whole epoch
        failed = f" (first failure: {data.failed[0][1]})" if data.failed else ""
        raise InputError(f"{source}: none of its {len(data)} val images could be decoded{failed}")
    if not np.isfinite(scores).all() or (q is not None and not np.isfinite(q).all()):
        # an epoch's last step can diverge after its loss was checked: the metrics then failed
        # on NaN ("q contains NaN", a traceback)
        raise InputError(
            "training diverged: the model's outputs on the val images are NaN or infinite; "
            "train again into a new folder with a lower --lr (or --quantity-weight)"
        )
    y_true = data.labels[rows] > 0
    m = config.model
    k = metrics.decide_k(scores, q, m.k_max, m.decision_threshold) if q is not None else None
    head_k = metrics.decode_quantity(q, m.k_max) if q is not None else None
    return metrics.evaluate(y_true, scores, k=k, q=q, quantity_k=head_k)


def _manifest_hash(manifest: Manifest) -> str:
    """Streamed: the manifest may be gigabytes (it was read whole, a second time, uncapped)."""
    with open_regular(manifest.path, "manifest", MAX_MANIFEST_BYTES) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _check_fresh_folder(out_dir: Path) -> None:
    """A new run writes into a new or empty folder: it replaces ``model.safetensors`` and
    ``last/`` wholesale, so a folder holding anything may hold a file the user wants kept."""
    try:
        present = sorted(os.fsdecode(e.name) for e in os.scandir(out_dir))
    except (FileNotFoundError, NotADirectoryError):
        return
    present = [n for n in present if not _remove_dead_save(out_dir, n)]
    if not present:
        return
    what = "a checkpoint" if "config.json" in present else "files this run did not write"
    shown = ", ".join(repr(n) for n in present[:3]) + (", ..." if len(present) > 3 else "")
    raise InputError(
        f"{out_dir}: already holds {what} ({shown}); {_fresh_hint(out_dir, present)} train "
        "into a new or empty folder"
    )


# What a save killed before its first rename leaves: ``temp_sibling``'s name for one of the
# files a run writes (the weights, the config, the ``last/`` staging folder).
_DEAD_SAVE = re.compile(
    rf"\.({re.escape(WEIGHTS_FILE)}|{re.escape(CONFIG_FILE)}|{LAST_DIR})\.tmp-(\d+)-[0-9a-f]{{8}}"
)


def _remove_dead_save(out_dir: Path, name: str) -> bool:
    """Remove ``name`` if it is the temp file of a save whose process is gone: a first run
    killed while saving left only that, and the folder then refused every new run (and held
    nothing to resume). A live writer's temp file is kept, and the folder refused."""
    found = _DEAD_SAVE.fullmatch(name)
    if found is None or _process_alive(int(found.group(2))):
        return False
    path = out_dir / name
    if path.is_symlink():
        return False
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # left in place: the folder is then refused
            path.unlink(missing_ok=True)
    return not os.path.lexists(path)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing here before this check
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a pid we cannot ask about: keep its files
    return True


def _fresh_hint(out_dir: Path, present: list[str]) -> str:
    """What to do with a folder a new run may not write into: resume it only if it can be."""
    if any(n.startswith(f".{LAST_DIR}.old-") for n in present):  # a save killed mid-swap
        return "continue the interrupted run with --resume, or"
    try:
        state = read_json(out_dir / LAST_DIR / TRAINER_FILE, "training state", 64 << 20)
    except (FileNotFoundError, InputError):
        return "it holds no training state to resume;"
    if isinstance(state, dict) and is_finished(out_dir, state):
        return "that run has finished;"
    return "continue the interrupted run with --resume, or"


def _too_few(n_train: int, n_val: int, sets: Sequence[RecordSet]) -> str:
    failed = [error for data in sets for _, error in data.failed]
    first = f"; first failure: {failed[0]}" if failed else ""
    return (
        f"only {n_train} training and {n_val} val images could be decoded ({len(failed)} "
        f"failed{first}); training needs at least 2 training images and 1 val image"
    )


def _require_decoded(manifest_path: Path, n_train: int, n_val: int, *sets: RecordSet) -> None:
    """Refuse a run left with too few images once the bad ones are dropped: with none it
    saved an untrained checkpoint (exit 0), with one BatchNorm failed, with no val image the
    metrics failed after a whole epoch."""
    if n_train < 2 or n_val < 1:
        raise InputError(f"{manifest_path}: {_too_few(n_train, n_val, sets)}")


# What ``last/trainer.json`` may hold for each option, as the CLI allows it: the file is read
# back by --resume, and an edited batch_size 0 divided by zero, threads 100000 failed in the
# allocator. Bounds are inclusive except those OPEN_LOW and OPEN_HIGH name.
_INT, _FLOAT, _BOOL, _STR = "int", "float", "bool", "str"
OPTION_RULES: dict[str, tuple[str, float | None, float | None, bool]] = {
    # name: (kind, low, high, may be null)
    "backbone": (_STR, None, None, False),
    "image_size": (_INT, MIN_IMAGE_SIZE, MAX_CHECKPOINT_IMAGE_SIZE, False),
    "epochs": (_INT, 1, None, False),
    "batch_size": (_INT, 2, MAX_TRAIN_BATCH, False),
    "lr": (_FLOAT, 0, None, False),
    "weight_decay": (_FLOAT, 0, None, False),
    "seed": (_INT, 0, 2**63 - 1, False),
    "use_tags": (_BOOL, None, None, False),
    "multi_scale": (_BOOL, None, None, False),
    "quantity_head": (_BOOL, None, None, False),
    "quantity_weight": (_FLOAT, 0, None, False),
    "tag_min_count": (_INT, 1, None, False),
    "tag_max_size": (_INT, 1, None, False),
    "tag_hidden": (_INT, 1, MAX_WIDTH, False),
    "visual_dim": (_INT, 1, MAX_WIDTH, True),
    "val_fraction": (_FLOAT, 0, 1, False),
    "warmup_epochs": (_FLOAT, 0, None, False),
    "backbone_weights": (_STR, None, None, True),
    "threads": (_INT, 1, 256, True),
    "tag_drop_all": (_FLOAT, 0, 1, False),
    "tag_drop_each": (_FLOAT, 0, 1, False),
    "aux_visual_weight": (_FLOAT, 0, None, False),
    "aux_tags_weight": (_FLOAT, 0, None, False),
    "visual_first_epochs": (_INT, 0, None, False),
    "calibrate_quantity": (_BOOL, None, None, False),
    "tag_skip": (_BOOL, None, None, False),
    "tag_skip_lr_mult": (_FLOAT, 0, None, False),
    "decision_threshold": (_STR, None, None, False),
    "augment_shift": (_FLOAT, 0, 0.5, False),
    "late_fusion": (_BOOL, None, None, False),
}
OPEN_LOW = {"lr", "tag_skip_lr_mult"}  # must be above the low bound
OPEN_HIGH = {"tag_drop_each", "val_fraction"}  # must be below the high bound


def _option_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` option, or None."""
    kind, low, high, nullable = OPTION_RULES[name]
    if value is None:
        return None if nullable else "must not be null"
    if kind == _BOOL:
        return None if isinstance(value, bool) else "must be true or false"
    if kind == _STR:
        if not isinstance(value, str):
            return "must be a string"
        if name == "backbone" and value not in BACKBONES:
            return f"must be one of {', '.join(BACKBONES)}"
        if name == "decision_threshold":
            try:
                parse_decision_threshold(value)
            except InputError:
                return "must be val, none or a number in (0, 1)"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a{'n integer' if kind == _INT else ' number'}"
    if kind == _INT and not isinstance(value, int):
        return "must be an integer"
    if kind == _FLOAT and isinstance(value, int) and abs(value) > 1e300:
        return "must be finite"  # float() of a huge JSON integer overflows
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    if low is not None and (value <= low if name in OPEN_LOW else value < low):
        return f"must be {'above' if name in OPEN_LOW else 'at least'} {low}"
    if high is not None and (value >= high if name in OPEN_HIGH else value > high):
        return f"must be {'below' if name in OPEN_HIGH else 'at most'} {high}"
    return None


def options_from_json(data: Any, source: object) -> TrainOptions:
    """Saved training options, checked as the CLI checks its own (missing keys: defaults)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: options must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in OPTION_RULES)
    if unknown:
        raise InputError(f"{source}: unknown training options {', '.join(unknown[:5])}")
    for name, value in data.items():
        if (problem := _option_problem(name, value)) is not None:
            raise InputError(f"{source}: option {name} {problem}, not {repr(value)[:80]}")
    floats = {n for n, rule in OPTION_RULES.items() if rule[0] == _FLOAT}
    values = {k: float(v) if k in floats and v is not None else v for k, v in data.items()}
    return TrainOptions(**values)


def check_trainer_state(state: dict[str, Any], source: Path) -> TrainOptions:
    """``last/trainer.json`` as ``--resume`` needs it, every field checked before use (an
    edited file failed deep inside with KeyError, TypeError or ZeroDivisionError)."""
    options = options_from_json(state.get("options"), source)
    epoch = state.get("epoch")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool)) or not (
        0 <= epoch <= options.epochs
    ):
        raise InputError(f"{source}: epoch must be an integer from 0 to {options.epochs}")
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise InputError(f"{source}: history must be a list of JSON objects")
    best = state.get("best")
    if not (
        isinstance(best, dict)
        and isinstance(best.get("epoch"), int)
        and isinstance(best.get("mAP"), int | float)
        and isinstance(best.get("val"), dict)
    ):
        raise InputError(f"{source}: best must be an object with epoch, mAP and val")
    for key in ("config", "optimizer"):
        if not isinstance(state.get(key), dict):
            raise InputError(f"{source}: {key} must be a JSON object")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(
        optimizer.get("scalars"), dict
    ):
        raise InputError(f"{source}: optimizer must hold param_groups and scalars")
    return options


def _refuse_changed_options(
    source: Path, given: TrainOptions, saved: TrainOptions, explicit: Collection[str]
) -> None:
    """A resumed run keeps its saved options: options given now that differ are refused."""
    changed = [
        f"{name} {getattr(given, name)!r} (saved {getattr(saved, name)!r})"
        for name in OPTION_RULES
        if name in explicit and getattr(given, name) != getattr(saved, name)
    ]
    if changed:
        raise InputError(
            f"{source}: --resume continues with the saved options, but these differ: "
            f"{'; '.join(changed)}; drop them, or train into a new folder"
        )


def train(
    manifest_path: str | Path,
    out_dir: str | Path,
    options: TrainOptions,
    *,
    resume: bool = False,
    explicit: Collection[str] | None = None,
    reporter: Reporter = SILENT,
) -> TrainResult:
    """Train an M3 model on a manifest and keep the best checkpoint (by val mAP) in ``out_dir``.

    A resumed run continues with its saved options; ``explicit`` names the options the user
    gave (the CLI's non-default ones), and any of them that differs from the saved value is
    refused: taken silently, ``--resume --epochs 5 --lr 0.5`` ran with the old epochs and rate."""
    out_dir = Path(out_dir)
    manifest = read_manifest(manifest_path)
    if (note := repeated_images(manifest)) is not None:
        reporter.log(note)
    manifest_hash = _manifest_hash(manifest)
    start_epoch, history, best = 0, [], {"epoch": 0, "mAP": -1.0, "val": {}}
    state: dict[str, Any] | None = None
    if resume:
        state = read_training_state(out_dir)
        if is_finished(out_dir, state):
            raise InputError(
                f"{out_dir}: this run has finished (all {state.get('epoch')} epochs and the "
                "steps fitted on val); nothing to resume. Train into a new folder to train again"
            )
        if state.get("manifest_hash") != manifest_hash:
            raise InputError(f"{out_dir}: was trained on a different manifest; cannot resume")
        trainer_file = out_dir / LAST_DIR / TRAINER_FILE
        saved = check_trainer_state(state, trainer_file)
        if explicit:
            _refuse_changed_options(trainer_file, options, saved, explicit)
        # --threads changes no result: the one given now (or the saved one) is used
        options = dataclasses.replace(saved, threads=options.threads or saved.threads)
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
    else:
        _check_fresh_folder(out_dir)
    train_records, val_records, counts = split_records(manifest, options.val_fraction, options.seed)
    if state is not None:
        config = CheckpointConfig.from_json(state["config"], str(out_dir / "last/trainer.json"))
        # before the model is built: a config edited to huge widths allocated first
        check_weights_header(out_dir / LAST_DIR / WEIGHTS_FILE, config.model)
    else:
        config = build_config(manifest, train_records, options)

    torch.set_num_threads(options.threads or os.cpu_count() or 1)
    torch.manual_seed(options.seed)
    model = M3Net(config.model)
    aux = AuxHeads(model, options.aux_visual_weight > 0, options.aux_tags_weight > 0)
    optimizer = make_optimizer(torch.nn.ModuleList([model, aux]), options)
    if state is not None:
        restore_training_state(out_dir, state, model, optimizer, aux)
        reporter.log(f"resuming after epoch {start_epoch} of {options.epochs}")
    elif options.backbone_weights:
        load_backbone_weights(model.backbone, options.backbone_weights)

    labels = Vocab(config.label_names)
    tags = Vocab(config.tag_vocab)
    size = config.preprocessing.image_size
    train_set = RecordSet(train_records, labels, tags, size)
    val_set = RecordSet(val_records, labels, tags, size)
    for name, data in (("decode train", train_set), ("decode val", val_set)):
        if data.cache:
            with reporter.task(name, len(data)) as bar:
                data.warm(bar.advance)
    if train_set.cache and val_set.cache:  # else known only once an epoch has decoded them
        _require_decoded(manifest.path, len(train_set), len(val_set), train_set, val_set)
    if train_set.cache:
        counts["train"] = len(train_set)  # what trains, failed images not included
    if val_set.cache:
        counts["val"] = len(val_set)
    counts["failed_images"] = len(train_set.failed) + len(val_set.failed)
    for _record, error in (train_set.failed + val_set.failed)[:5]:
        reporter.log(f"skipped {error}")
    if counts["failed_images"]:
        reporter.log(f"{counts['failed_images']} images could not be decoded and are skipped")

    preprocess = preprocess_for(config)
    steps_per_epoch = max(1, len(train_set) // options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    schedule = Schedule(
        steps_per_epoch,
        total_steps,
        min(total_steps // 2, round(options.warmup_epochs * steps_per_epoch)),
    )
    started = time.time()

    for epoch in range(start_epoch, options.epochs):
        with reporter.task(f"epoch {epoch + 1}/{options.epochs}", len(train_set)) as bar:
            sums, seen, rate = run_epoch(
                model, aux, optimizer, preprocess, train_set, epoch, schedule, options, bar.advance
            )
        if not train_set.cache:
            decoded = len(train_set) - len(train_set.failed)
            _require_decoded(manifest.path, decoded, 1, train_set, val_set)
        val = validate(model, config, val_set, manifest.path)
        counts["failed_images"] = len(train_set.failed) + len(val_set.failed)
        row = {
            "epoch": epoch + 1,
            **{k: v / max(1, seen) for k, v in sums.items()},
            "images_per_s": rate,
            "val_mAP": val["mAP"],
            "val_OF1": val["modes"].get("predicted_k", val["modes"]["top3"])["OF1"],
        }
        if "quantity" in val:  # when the count is learnt varies with the seed: keep the curve
            row["val_count_acc"] = val["quantity"]["acc"]
        history.append(row)
        reporter.log(
            f"epoch {epoch + 1}: loss {row['loss']:.4f}  val mAP {100 * val['mAP']:.1f}  "
            f"val OF1 {100 * row['val_OF1']:.1f}  {rate:.0f} img/s"
        )
        if val["mAP"] > best["mAP"]:
            best = {"epoch": epoch + 1, "mAP": val["mAP"], "val": val}
            config.training = _summary(
                options, counts, manifest, manifest_hash, best, history, started
            )
            save_checkpoint(out_dir, model, config)
        save_training_state(
            out_dir,
            model,
            optimizer,
            aux=aux,
            trainer={
                "epoch": epoch + 1,
                "history": history,
                "best": best,
                "options": dataclasses.asdict(options),
                "config": config.to_json(),
                "manifest_hash": manifest_hash,
            },
        )
    # The steps below fold what they fit into the best checkpoint: they start from it as the
    # epochs left it, also when a kill stopped them and the run is resumed.
    keep_unfitted(out_dir)
    # Keep the history of every epoch in the best checkpoint's summary.
    final = CheckpointConfig.load(out_dir / "config.json")
    final.training = _summary(options, counts, manifest, manifest_hash, best, history, started)
    best_model = None  # the best epoch's weights, loaded once for the steps fitted on val
    if options.calibrate_quantity and final.model.quantity_head:
        best_model, _ = load_checkpoint(out_dir)
        calibration = _calibrate_quantity(best_model, final, val_set)
        final.training["quantity_calibration"] = calibration.to_json()
        best["val"] = validate(best_model, final, val_set)
        save_checkpoint(out_dir, best_model, final)
        reporter.log(
            f"quantity head calibrated on val: count accuracy "
            f"{100 * calibration.val_acc_before:.1f} -> {100 * calibration.val_acc_after:.1f}"
        )
    else:
        final.save(out_dir / "config.json")
    if options.late_fusion and final.model.tag_skip:
        if best_model is None:
            best_model, _ = load_checkpoint(out_dir)
        fused = fit_late_fusion(best_model, final, train_set, val_set)
        if fused is not None:
            final.training["late_fusion"] = fused
            if options.decision_threshold == "none":  # else validated after the threshold
                best["val"] = validate(best_model, final, val_set)
            save_checkpoint(out_dir, best_model, final)
            reporter.log(describe_fusion(fused))
    if options.decision_threshold != "none":
        if best_model is None:
            best_model, _ = load_checkpoint(out_dir)
        fitted = _set_decision_threshold(best_model, final, val_set, options.decision_threshold)
        final.training["decision_threshold"] = fitted
        best["val"] = validate(best_model, final, val_set)
        final.save(out_dir / "config.json")
        reporter.log(
            f"decision threshold {fitted['threshold']:g} ({fitted['source']}): val O-F1 "
            f"{100 * fitted['val_OF1_round_q']:.1f} with k = round(q) -> "
            f"{100 * best['val']['modes']['predicted_k']['OF1']:.1f}"
            if "predicted_k" in best["val"]["modes"]
            else f"decision threshold {fitted['threshold']:g} ({fitted['source']})"
        )
    mark_finished(out_dir)
    return TrainResult(out_dir, best["epoch"], best["val"], history, counts)


def parse_decision_threshold(value: str) -> str:
    """``val``, ``none`` or a number in (0, 1), as ``--decision-threshold`` takes it."""
    value = str(value).strip().lower()
    if value in ("val", "none"):
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 < number < 1.0:
        raise InputError(
            f"--decision-threshold must be val, none or a number in (0, 1), not {value}"
        )
    return repr(number)


def fit_decision(
    checkpoint: str | Path, manifest_path: str | Path, how: str = "val"
) -> dict[str, Any]:
    """Give an existing checkpoint (one trained before the decision threshold existed, or with
    ``--decision-threshold none``) the decision ``m3trt train`` fits now: on the validation split
    it was trained with (the manifest's ``val`` records, else the seeded hold-out of train).
    Rewrites its ``config.json``; returns what was fitted."""
    model, config = load_checkpoint(checkpoint)
    options = options_from_json(
        config.training.get("options", {}), Path(checkpoint) / "config.json"
    )
    _, val_records, _ = split_records(
        read_manifest(manifest_path), options.val_fraction, options.seed
    )
    val_set = RecordSet(
        val_records,
        Vocab(config.label_names),
        Vocab(config.tag_vocab),
        config.preprocessing.image_size,
    )
    fitted = _set_decision_threshold(model, config, val_set, parse_decision_threshold(how))
    config.training["decision_threshold"] = fitted
    config.save(Path(checkpoint) / "config.json")
    return fitted


def apply_late_fusion(
    checkpoint: str | Path, manifest_path: str | Path, how: str = "val"
) -> dict[str, Any] | None:
    """Give an existing checkpoint the late fusion ``m3trt train --late-fusion`` ends with, then
    refit its decision threshold (``how``, as ``fit_decision``) on the new scores: the same
    train and val splits it was trained with. Rewrites the checkpoint; returns the fusion (None
    when the model has no tag -> label path, in which case nothing is written)."""
    model, config = load_checkpoint(checkpoint)
    if "late_fusion" in config.training:
        raise InputError(f"{checkpoint}: already has the late fusion; it would apply twice")
    options = options_from_json(
        config.training.get("options", {}), Path(checkpoint) / "config.json"
    )
    train_records, val_records, _ = split_records(
        read_manifest(manifest_path), options.val_fraction, options.seed
    )
    labels, tags = Vocab(config.label_names), Vocab(config.tag_vocab)
    size = config.preprocessing.image_size
    fused = fit_late_fusion(
        model,
        config,
        RecordSet(train_records, labels, tags, size),
        RecordSet(val_records, labels, tags, size),
    )
    if fused is None:
        return None
    config.training["late_fusion"] = fused
    if how != "none":
        val_set = RecordSet(val_records, labels, tags, size)
        config.training["decision_threshold"] = _set_decision_threshold(
            model, config, val_set, parse_decision_threshold(how)
        )
    save_checkpoint(checkpoint, model, config)
    return fused


def _set_decision_threshold(
    model: M3Net, config: CheckpointConfig, val_set: RecordSet, how: str
) -> dict[str, Any]:
    """Sets ``config.model.decision_threshold`` (fitted on val, or the fixed value ``how``)."""
    scores, q, rows = predict(model, preprocess_for(config), val_set)
    y_true = val_set.labels[rows] > 0
    k_max = config.model.k_max
    before = None
    if q is not None:
        k = metrics.decode_quantity(q, k_max)
        before = metrics.label_metrics(y_true, metrics.topk_mask(scores, k))["OF1"]
    if how == "val":
        threshold, _ = metrics.fit_decision_threshold(y_true, scores, k_max)
    else:
        threshold = float(how)
    config.model.decision_threshold = threshold
    return {
        "threshold": threshold,
        "source": "fitted on val" if how == "val" else "fixed",
        "val_OF1_round_q": before,
    }


def _calibrate_quantity(
    model: M3Net, config: CheckpointConfig, val_set: RecordSet
) -> QuantityCalibration:
    _, q, rows = predict(model, preprocess_for(config), val_set)
    assert q is not None
    calibration = fit_calibration(q, val_set.counts[rows], config.model.k_max)
    apply_calibration(model, calibration)
    return calibration


def _summary(
    options: TrainOptions,
    counts: dict[str, int],
    manifest: Manifest,
    manifest_hash: str,  # hashed once per run (the file may be gigabytes), not per best epoch
    best: dict[str, Any],
    history: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    return {
        "options": dataclasses.asdict(options),
        "counts": counts,
        "manifest": str(manifest.path),
        "manifest_sha256_16": manifest_hash,
        "best_epoch": best["epoch"],
        "best_val_mAP": best["mAP"],
        "history": history,
        "seconds": round(time.time() - started, 1),
    }
