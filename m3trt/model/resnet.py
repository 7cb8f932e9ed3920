"""ResNet-18/34/50/101 in plain torch, with torchvision's state_dict key names.

torchvision cannot be imported beside the CPU torch we pin, so the backbone is written here; keeping
its key names lets a torchvision ImageNet weight file load by key (``load_backbone_weights``).
The classifier (``fc``) is not part of the backbone: the M3 heads replace it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from m3trt.errors import InputError

STEM_CHANNELS = 64
STAGE_WIDTHS = (64, 128, 256, 512)
LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A feature extractor: ``forward`` returns the stem output and the four stage outputs.

    Like timm's ``features_only``, callers tap the scales they need; the fusion branch reads all of
    them. ``stage_channels`` and ``stage_strides`` (each relative to the previous tap) describe
    the taps.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in LAYOUTS:
            raise InputError(f"unknown backbone {name!r}: choose one of {', '.join(LAYOUTS)}")
        kind, depths = LAYOUTS[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.name = name
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = STEM_CHANNELS
        channels = []
        for index, (width, depth) in enumerate(zip(STAGE_WIDTHS, depths, strict=True)):
            stride = 1 if index == 0 else 2
            layer, cin = _make_stage(block, cin, width, depth, stride)
            self.add_module(f"layer{index + 1}", layer)
            channels.append(cin)
        self.stem_channels = STEM_CHANNELS
        self.stage_channels = tuple(channels)
        # Stage 1 keeps its input resolution but sits behind the max-pool, so every tap halves.
        self.stage_strides = (2, 2, 2, 2)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(stem)
        taps = [stem]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            taps.append(x)
        return taps


def _make_stage(
    block: type[BasicBlock] | type[Bottleneck], cin: int, width: int, depth: int, stride: int
) -> tuple[nn.Sequential, int]:
    cout = width * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    blocks = [block(cin, width, stride, downsample)]
    blocks += [block(cout, width, 1, None) for _ in range(depth - 1)]
    return nn.Sequential(*blocks), cout


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def load_backbone_weights(backbone: ResNet, path: str | Path) -> dict[str, int]:
    """Load a torchvision-format ResNet state_dict from a local file, without executing code.

    ``torch.load(weights_only=True)`` refuses pickled code. The classifier ``fc.*`` is ignored;
    any other missing, unexpected or mis-shaped key is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():  # a FIFO would hang torch.load
        from m3trt.data.manifest import not_a_file

        raise InputError(f"{path}: backbone weight file {not_a_file(path)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise InputError(
            f"{path}: not a loadable torch weight file ({_load_failure(exc)})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise InputError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's names
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(
            f"{path}: does not match {backbone.name} "
            f"({len(missing)} missing keys, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: {key} is a {type(tensor).__name__}, not a tensor")
        if tensor.shape != own[key].shape:
            shape = tensor.shape
            raise InputError(
                f"{path}: {key} has shape {tuple(shape)}, {backbone.name} needs "
                f"{tuple(own[key].shape)}"
            )
        want_float = own[key].is_floating_point()
        if tensor.is_floating_point() != want_float or tensor.dtype == torch.bool:
            raise InputError(f"{path}: {key} holds {tensor.dtype} values, not {own[key].dtype}")
        if want_float and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{path}: {key} holds NaN or infinite values")
    backbone.load_state_dict(state)
    return {"loaded": len(state)}


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words. Its refusal of
    pickled objects goes on for lines and advises ``weights_only=False``, which m3trt never
    does: that advice is not passed on."""
    text = str(exc).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds pickled Python objects, not only tensors; m3trt loads tensors only"
    return (text.splitlines() or [type(exc).__name__])[0][:200]
