"""The M3 model in plain torch (training extra only)."""

from m3trt.model.m3net import M3Net, Preprocess
from m3trt.model.resnet import ResNet, load_backbone_weights

__all__ = ["M3Net", "Preprocess", "ResNet", "load_backbone_weights"]
