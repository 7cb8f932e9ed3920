"""Model and preprocessing configuration, shared by training, export and the runtime.

Plain dataclasses that round-trip through JSON (the checkpoint's ``config.json``), so a config never
needs torch to be read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3trt.atomic import write_json
from m3trt.errors import InputError, is_terminal_safe

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_VERSION = 1


MIN_IMAGE_SIZE = 32  # five stride-2 stages leave one pixel
MAX_IMAGE_SIZE = 8192  # as a bundle's graph contract allows
# A checkpoint's image size, as `m3trt train --image-size` allows: export's parity check and eval
# run the PyTorch model at S x S, and an edited 8192 took gigabytes per image there.
MAX_CHECKPOINT_IMAGE_SIZE = 1024
MAX_WIDTH = 1 << 16  # labels, tags, hidden widths: far above any M3 model, far below a typo
MAX_NAME_CHARS = 1000  # one label or tag name
# Pixels are scaled to [0, 1] before mean/std: values outside these bounds only blow the first
# convolution's input up to inf (a std of 1e-300 made every exported output NaN).
MEAN_BOUND = 10.0
STD_RANGE = (1e-3, 10.0)


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_names(field: str, values: Any) -> list[str]:
    """A list of distinct, non-empty, printable names: a string was split into its characters,
    a duplicate failed later as a bare ValueError, and integers or control characters reached
    the exported graph's metadata."""
    if not isinstance(values, list):
        raise InputError(f"{field} must be a list of names, not {type(values).__name__}")
    seen: set[str] = set()
    for i, name in enumerate(values):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{field}[{i}] must be a non-empty string, not {name!r}")
        if len(name) > MAX_NAME_CHARS or not is_terminal_safe(name):
            shown = name[:40].encode("unicode_escape").decode("ascii")
            raise InputError(
                f"{field}[{i}] ({shown!r}) has control characters or over {MAX_NAME_CHARS} chars"
            )
        if name in seen:
            raise InputError(f"{field} names {name!r} twice")
        seen.add(name)
    return list(values)


def _check_int(name: str, value: Any, low: int, high: int | None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InputError(f"{name} must be an integer {span}, not {value!r}")


@dataclass
class Preprocessing:
    """How an image becomes the network input: squash-resize to size x size, /255, mean/std."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"

    def __post_init__(self) -> None:
        # an edited image_size of 100000 asked export for 60 GB and eval for 894 GiB
        _check_int(
            "preprocessing.image_size", self.image_size, MIN_IMAGE_SIZE, MAX_CHECKPOINT_IMAGE_SIZE
        )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(_finite_number(v) for v in values):
                raise InputError(f"preprocessing.{name} must be 3 finite numbers, not {values!r}")
        if not all(abs(v) <= MEAN_BOUND for v in self.mean):
            raise InputError(
                f"preprocessing.mean must be from {-MEAN_BOUND:g} to {MEAN_BOUND:g} (pixels are "
                f"scaled to 0..1), not {self.mean!r}"
            )
        if min(self.std) <= 0:
            raise InputError(f"preprocessing.std must be positive, not {self.std!r}")
        low, high = STD_RANGE
        if not all(low <= v <= high for v in self.std):
            raise InputError(
                f"preprocessing.std must be from {low:g} to {high:g}, not {self.std!r}"
            )
        if self.resize != "squash":
            raise InputError(f"preprocessing.resize must be 'squash', not {self.resize!r}")


@dataclass
class ModelConfig:
    """The M3 architecture (DESIGN §2) with the paper's ablation switches."""

    num_labels: int
    num_tags: int
    backbone: str = "resnet50"
    multi_scale: bool = True
    use_tags: bool = True
    quantity_head: bool = True
    visual_dim: int | None = None  # default: 2048 for ResNet-50/101, 512 for ResNet-18/34
    tag_hidden: int = 2048
    tag_dropout: float = 0.5
    tag_drop_all: float = 0.3
    quantity_hidden: int = 256
    quantity_dropout: float = 0.1
    k_max: int = 5
    # A linear tag -> label path beside the tag MLP (issue 15): logits += W tags. Off here so that
    # a checkpoint saved before it existed (no such key in its config.json) loads as it was
    # trained; `m3trt train` turns it on (TrainOptions.tag_skip).
    tag_skip: bool = False
    # The decision (issue 15): with a threshold t, an image's labels are those scoring >= t (at most
    # K_max, possibly none) and k = their count; None keeps the paper's k = round(q). `m3trt train`
    # fits t on the validation split (TrainOptions.decision_threshold); older checkpoints have none.
    decision_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("multi_scale", "use_tags", "quantity_head", "tag_skip"):
            value = getattr(self, name)
            if not isinstance(value, bool):  # "false" is a true string
                raise InputError(f"model.{name} must be true or false, not {value!r}")
        if not isinstance(self.backbone, str) or self.backbone not in BACKBONES:
            raise InputError(
                f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}"
            )
        _check_int("model.num_labels", self.num_labels, 1, MAX_WIDTH)
        _check_int("model.num_tags", self.num_tags, 0, MAX_WIDTH)
        for name in ("tag_hidden", "quantity_hidden"):
            _check_int(f"model.{name}", getattr(self, name), 1, MAX_WIDTH)
        if self.visual_dim is not None:
            _check_int("model.visual_dim", self.visual_dim, 1, MAX_WIDTH)
        for name in ("tag_dropout", "tag_drop_all", "quantity_dropout"):
            value = getattr(self, name)
            if not _finite_number(value) or not 0 <= value <= 1:
                raise InputError(f"model.{name} must be from 0 to 1, not {value!r}")
        _check_int("model.k_max", self.k_max, 1, None)
        self.k_max = min(self.k_max, self.num_labels)
        threshold = self.decision_threshold
        if threshold is not None and not (_finite_number(threshold) and 0.0 < threshold < 1.0):
            raise InputError(
                f"decision_threshold must be between 0 and 1, not {self.decision_threshold}"
            )

    @property
    def feature_dim(self) -> int:
        """Width of the stage-4 output, which fixes the default visual feature width."""
        return 512 if self.backbone in ("resnet18", "resnet34") else 2048

    @property
    def visual_width(self) -> int:
        return self.visual_dim or self.feature_dim


@dataclass
class CheckpointConfig:
    """Everything ``config.json`` holds beside the weights: enough to rebuild and use the model."""

    model: ModelConfig
    preprocessing: Preprocessing
    label_names: list[str]
    tag_vocab: list[str]
    training: dict[str, Any] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config.json") -> CheckpointConfig:
        try:
            version = data.get("version", CONFIG_VERSION)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise InputError(f"version must be a positive integer, not {version!r}")
            if version > CONFIG_VERSION:
                raise InputError(
                    f"{source}: config version {version} is newer than this m3trt supports "
                    f"({CONFIG_VERSION}); upgrade m3trt"
                )
            for key in ("model", "preprocessing"):
                if not isinstance(data[key], dict):
                    raise InputError(f"{key} must be a JSON object")
            pre = dict(data["preprocessing"])
            for key in ("mean", "std"):
                if not isinstance(pre.get(key), list | tuple):
                    shown = repr(pre.get(key))[:80]
                    raise InputError(f"preprocessing.{key} must be 3 finite numbers, not {shown}")
                pre[key] = tuple(pre[key])
            training = data.get("training", {})
            if not isinstance(training, dict):
                raise InputError("training must be a JSON object")
            config = cls(
                model=ModelConfig(**data["model"]),
                preprocessing=Preprocessing(**pre),
                label_names=_check_names("label_names", data["label_names"]),
                tag_vocab=_check_names("tag_vocab", data["tag_vocab"]),
                training=dict(training),
                version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: not a valid m3trt checkpoint config ({exc})") from None
        except InputError as exc:  # a field out of range: name the file too (once)
            message = str(exc)
            named = message.startswith(f"{source}: ")
            raise InputError(message if named else f"{source}: {message}") from None
        if len(config.label_names) != config.model.num_labels:
            raise InputError(f"{source}: label_names and model.num_labels disagree")
        if len(config.tag_vocab) != config.model.num_tags:
            raise InputError(f"{source}: tag_vocab and model.num_tags disagree")
        return config

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> CheckpointConfig:
        from m3trt.data.safe_open import read_json

        try:
            data = read_json(path, "checkpoint config", 16 << 20)
        except FileNotFoundError:
            raise InputError(f"{path}: not found (is this an m3trt checkpoint folder?)") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: checkpoint config must be a JSON object")
        return cls.from_json(data, str(path))
