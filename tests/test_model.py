"""The M3 network: shapes for every depth, torchvision key names, ablations, weight loading."""

import pytest
import torch

from m3trt.config import ModelConfig, Preprocessing
from m3trt.errors import InputError
from m3trt.model import M3Net, Preprocess, ResNet, load_backbone_weights

# Parameter counts of torchvision's models minus their 1000-way classifier (fc).
TORCHVISION_PARAMS_WITHOUT_FC = {
    "resnet18": 11_689_512 - (512 * 1000 + 1000),
    "resnet34": 21_797_672 - (512 * 1000 + 1000),
    "resnet50": 25_557_032 - (2048 * 1000 + 1000),
    "resnet101": 44_549_160 - (2048 * 1000 + 1000),
}


def torchvision_resnet50_keys() -> set[str]:
    """torchvision's ResNet-50 state_dict names, spelled out from its naming scheme."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{s}" for s in bn)}
    for stage, depth in enumerate((3, 4, 6, 3), 1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                keys.add(f"{prefix}.conv{i}.weight")
                keys.update(f"{prefix}.bn{i}.{s}" for s in bn)
            if block == 0:
                keys.add(f"{prefix}.downsample.0.weight")
                keys.update(f"{prefix}.downsample.1.{s}" for s in bn)
    return keys


def test_resnet50_state_dict_keys_match_torchvision():
    own = ResNet("resnet50").state_dict()
    assert set(own) == torchvision_resnet50_keys()
    assert own["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert own["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS_WITHOUT_FC))
def test_backbone_parameter_counts_match_torchvision(name):
    backbone = ResNet(name)
    assert sum(p.numel() for p in backbone.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("multi_scale", [True, False])
def test_output_shapes_every_depth(name, multi_scale):
    config = ModelConfig(
        num_labels=7,
        num_tags=11,
        backbone=name,
        multi_scale=multi_scale,
        tag_hidden=32,
        visual_dim=48,
        k_max=4,
    )
    model = M3Net(config).eval()
    with torch.no_grad():
        logits, q = model(torch.randn(2, 3, 64, 64), torch.zeros(2, 11))
    assert logits.shape == (2, 7)
    assert q.shape == (2,)
    assert torch.all((q >= 1) & (q <= 4))
    assert (model.fusion is not None) == multi_scale


def test_odd_input_size_works_with_fusion():
    model = M3Net(ModelConfig(num_labels=3, num_tags=2, backbone="resnet18", tag_hidden=8)).eval()
    with torch.no_grad():
        logits, _ = model(torch.randn(1, 3, 75, 75), torch.zeros(1, 2))
    assert logits.shape == (1, 3)


def test_ablations_change_the_graph():
    base = dict(num_labels=5, num_tags=6, backbone="resnet18", tag_hidden=16)
    no_tags = M3Net(ModelConfig(**base, use_tags=False)).eval()
    assert no_tags.tags is None and no_tags.classifier.in_features == 512
    full = M3Net(ModelConfig(**base))
    assert full.classifier.in_features == 512 + 16
    no_q = M3Net(ModelConfig(**base, quantity_head=False)).eval()
    _, q = no_q(torch.randn(2, 3, 64, 64), torch.zeros(2, 6))
    assert q is None


def test_k_max_is_clamped_to_label_count():
    assert ModelConfig(num_labels=3, num_tags=0, k_max=9).k_max == 3


def test_tag_dropout_zeroes_whole_samples_in_training_only():
    config = ModelConfig(
        num_labels=2, num_tags=4, backbone="resnet18", tag_hidden=8, tag_drop_all=1.0
    )
    model = M3Net(config)
    tags = torch.ones(4, 4)
    model.tags.mlp = torch.nn.Identity()
    model.train()
    assert torch.all(model.tags(tags) == 0)
    model.eval()
    assert torch.all(model.tags(tags) == 1)


def test_tags_change_the_prediction():
    torch.manual_seed(0)
    model = M3Net(ModelConfig(num_labels=3, num_tags=5, backbone="resnet18", tag_hidden=8)).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, _ = model(image, torch.zeros(1, 5))
        b, _ = model(image, torch.ones(1, 5))
    assert not torch.allclose(a, b)


def test_preprocess_matches_reference_arithmetic():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    expected = (
        pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)
    ) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Preprocess(mean, std)(pixels), expected, atol=1e-5, rtol=1e-5)


def test_load_torchvision_format_weights(tmp_path):
    source = ResNet("resnet18")
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    target = ResNet("resnet18")
    load_backbone_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_weights_refuses_wrong_depth_and_code(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(ResNet("resnet34").state_dict(), path)
    with pytest.raises(InputError, match=r"r34\.pth: does not match resnet18"):
        load_backbone_weights(ResNet("resnet18"), path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(InputError, match=r"evil\.pth: not a loadable torch weight file"):
        load_backbone_weights(ResNet("resnet18"), evil)
    with pytest.raises(InputError, match="not found"):
        load_backbone_weights(ResNet("resnet18"), tmp_path / "nope.pth")


def test_unknown_backbone_is_a_user_error():
    with pytest.raises(InputError, match="unknown backbone"):
        ModelConfig(num_labels=2, num_tags=0, backbone="resnet7")


def test_tag_skip_adds_a_linear_tag_to_label_term_and_old_configs_load_without_it():
    from m3trt.config import CheckpointConfig

    base = dict(num_labels=3, num_tags=4, backbone="resnet18", tag_hidden=8)
    torch.manual_seed(0)
    model = M3Net(ModelConfig(**base, tag_skip=True)).eval()
    assert torch.all(model.tag_skip.weight == 0)  # starts as the plain M3 head
    with torch.no_grad():
        model.tag_skip.weight.copy_(torch.randn(3, 4))
        image, tags = torch.randn(2, 3, 32, 32), (torch.rand(2, 4) < 0.5).float()
        joint = model.features(image, tags)
        logits, _ = model(image, tags)
    torch.testing.assert_close(logits, model.classifier(joint) + tags @ model.tag_skip.weight.T)
    # A config.json written before the option existed has no "tag_skip": the model it describes.
    old = CheckpointConfig(
        ModelConfig(**base), Preprocessing(image_size=32), list("abc"), list("wxyz")
    )
    data = old.to_json()
    del data["model"]["tag_skip"]
    assert M3Net(CheckpointConfig.from_json(data).model).tag_skip is None


def test_load_weights_refuses_odd_keys_values_and_never_advises_unsafe_loading(tmp_path):
    import os

    def refused(state, match):
        path = tmp_path / "w.pth"
        torch.save(state, path)
        with pytest.raises(InputError, match=match) as caught:
            load_backbone_weights(ResNet("resnet18"), path)
        assert "\n" not in str(caught.value) and "weights_only=False" not in str(caught.value)

    state = dict(ResNet("resnet18").state_dict())
    refused({0: torch.zeros(1), **state}, "expected a state_dict")  # an AttributeError before
    nan = dict(state, **{"conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))})
    refused(nan, r"conv1\.weight holds NaN or infinite values")
    ints = dict(
        state, **{"conv1.weight": torch.zeros(state["conv1.weight"].shape, dtype=torch.int32)}
    )
    refused(ints, r"conv1\.weight holds torch\.int32 values, not torch\.float32")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    refused({"x": Evil()}, "holds pickled Python objects, not only tensors")
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="backbone weight file is a FIFO"):
        load_backbone_weights(ResNet("resnet18"), fifo)
