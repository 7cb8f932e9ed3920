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
from m3trt.errors import InputError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_VERSION = 1


MIN_IMAGE_SIZE = 32  # five stride-2 stages leave one pixel
MAX_IMAGE_SIZE = 8192  # as a bundle's graph contract allows
MAX_WIDTH = 1 << 16  # labels, tags, hidden widths: far above any M3 model, far below a typo


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        _check_int("preprocessing.image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(_finite_number(v) for v in values):
                raise InputError(f"preprocessing.{name} must be 3 finite numbers, not {values!r}")
        if min(self.std) <= 0:
            raise InputError(f"preprocessing.std must be positive, not {self.std!r}")
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
        if self.decision_threshold is not None and not 0.0 < self.decision_threshold < 1.0:
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
            version = int(data.get("version", CONFIG_VERSION))
            if version > CONFIG_VERSION:
                raise InputError(
                    f"{source}: config version {version} is newer than this m3trt supports "
                    f"({CONFIG_VERSION}); upgrade m3trt"
                )
            pre = dict(data["preprocessing"])
            pre["mean"] = tuple(pre["mean"])
            pre["std"] = tuple(pre["std"])
            config = cls(
                model=ModelConfig(**data["model"]),
                preprocessing=Preprocessing(**pre),
                label_names=list(data["label_names"]),
                tag_vocab=list(data["tag_vocab"]),
                training=dict(data.get("training", {})),
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
