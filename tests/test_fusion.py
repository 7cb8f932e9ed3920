"""Branch fusion: folded BatchNorm and merged heads give the unfused model's outputs."""

import pytest
import torch
from torch import nn

from m3trt.config import ModelConfig
from m3trt.export.fuse import FusedM3, fold_bn
from m3trt.model import M3Net


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Fresh BN layers are identities; give them real statistics so folding is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.mark.parametrize(
    ("layer", "bn", "shape"),
    [
        (nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), (2, 3, 9, 9)),
        (nn.Conv2d(3, 8, 1, bias=True), nn.BatchNorm2d(8), (2, 3, 5, 5)),
        (nn.Linear(6, 4), nn.BatchNorm1d(4), (5, 6)),
    ],
)
def test_fold_bn_matches_layer_then_bn(layer, bn, shape):
    randomise_batchnorm(bn, seed=1)
    bn.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(fold_bn(layer, bn)(x), bn(layer(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"use_tags": False},
        {"multi_scale": False},
        {"quantity_head": False},
        {"backbone": "resnet50"},
        {"tag_skip": True},
    ],
)
def test_fused_model_equals_unfused(switches):
    torch.manual_seed(0)
    config = ModelConfig(
        num_labels=6,
        num_tags=9,
        tag_hidden=16,
        visual_dim=24,
        quantity_hidden=8,
        k_max=4,
        **{"backbone": "resnet18", **switches},
    )
    model = M3Net(config)
    randomise_batchnorm(model)
    if model.tag_skip is not None:  # zero-initialised: give the tag -> label path real weights
        torch.nn.init.normal_(model.tag_skip.weight)
    model.eval()
    fused = FusedM3(model)
    images, tags = torch.randn(3, 3, 64, 64), (torch.rand(3, 9) < 0.3).float()
    with torch.no_grad():
        a_logits, a_q = model(images, tags)
        b_logits, b_q = fused(images, tags)
    torch.testing.assert_close(b_logits, a_logits, atol=1e-4, rtol=1e-4)
    if config.quantity_head:
        torch.testing.assert_close(b_q, a_q, atol=1e-5, rtol=1e-5)
    else:
        assert b_q is None
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in fused.modules())
    gemm = fused.heads.gemm
    expected = 6 + (8 if config.quantity_head else 0)
    assert gemm.out_features == expected


def test_fusion_leaves_the_training_model_untouched():
    model = M3Net(ModelConfig(num_labels=3, num_tags=2, backbone="resnet18", tag_hidden=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FusedM3(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
