"""The modality-balance recipe (issue 15): per-tag drop-out, training-only auxiliary heads kept out
of checkpoints and exports, and the quantity head's validation calibration."""

import numpy as np
import onnx
import torch
from safetensors.torch import load_file

from m3trt.config import ModelConfig
from m3trt.export.onnx_export import export_checkpoint
from m3trt.model import M3Net
from m3trt.train.balance import AuxHeads, drop_each_tag
from m3trt.train.checkpoint import AUX_FILE, LAST_DIR, WEIGHTS_FILE, load_config
from m3trt.train.loop import TrainOptions, train
from m3trt.train.quantity import apply_calibration, fit_calibration


def _model(num_tags: int = 6, use_tags: bool = True) -> M3Net:
    torch.manual_seed(0)
    config = ModelConfig(
        num_labels=4,
        num_tags=num_tags,
        backbone="resnet18",
        use_tags=use_tags,
        tag_hidden=8,
        visual_dim=16,
        quantity_hidden=8,
        k_max=4,
    )
    return M3Net(config)


def test_drop_each_tag_removes_tags_independently_and_never_adds_any():
    torch.manual_seed(0)
    tags = (torch.rand(400, 30) < 0.3).float()
    assert drop_each_tag(tags, 0.0) is tags
    dropped = drop_each_tag(tags, 0.4)
    assert torch.all(dropped <= tags)
    kept = dropped.sum() / tags.sum()
    assert 0.55 < kept < 0.65
    rows_emptied = ((dropped.sum(1) == 0) & (tags.sum(1) > 0)).float().mean()
    assert rows_emptied < 0.05  # per tag, not per sample
    torch.manual_seed(1)
    a = drop_each_tag(tags, 0.4)
    torch.manual_seed(1)
    assert torch.equal(a, drop_each_tag(tags, 0.4))


def test_aux_heads_read_their_own_slice_of_the_joint_feature():
    model = _model()
    aux = AuxHeads(model, visual=True, tags=True)
    joint = model.features(torch.randn(3, 3, 32, 32), torch.ones(3, 6))
    targets = torch.zeros(3, 4)
    losses = aux.losses(joint, targets)
    assert set(losses) == {"aux_visual", "aux_tags"}
    # the visual head's loss trains the visual branch and not the tag branch
    model.zero_grad()
    aux.losses(model.features(torch.randn(3, 3, 32, 32), torch.ones(3, 6)), targets)[
        "aux_visual"
    ].backward()
    assert model.visual[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.tags.parameters())
    # nothing to balance without a tag branch
    assert not AuxHeads(_model(use_tags=False), visual=True, tags=True)


def test_training_history_keeps_the_val_count_accuracy_of_every_epoch(tiny_checkpoint):
    # when the count is learnt varies with the seed (README, issue 15): the curve shows it
    config = load_config(tiny_checkpoint[0])
    history = config.training["history"]
    assert len(history) == config.training["options"]["epochs"]
    assert all(0 <= row["val_count_acc"] <= 1 for row in history)


def test_quantity_calibration_fixes_a_shared_bias_and_folds_into_the_head():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, 300)
    q = np.clip(counts - 0.6 + rng.normal(0, 0.1, 300), 1.0, 4.0)  # every count read 0.6 low
    cal = fit_calibration(q, counts, k_max=4)
    assert cal.val_acc_before < 0.5 < 0.9 < cal.val_acc_after
    exact = fit_calibration(counts.astype(float), counts, k_max=4)
    assert (exact.scale, exact.shift) == (1.0, 0.0)  # a good head is left alone

    model = _model().eval()
    images, tags = torch.randn(5, 3, 32, 32), torch.zeros(5, 6)
    with torch.no_grad():
        _, before = model(images, tags)
    apply_calibration(model, cal)
    with torch.no_grad():
        _, after = model(images, tags)
        z = torch.logit((before - 1) / 3, eps=1e-6)
    expected = 1 + 3 * torch.sigmoid(cal.scale * z + cal.shift)
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-4)


def test_training_only_parts_stay_out_of_the_checkpoint(tmp_path, tiny_data, tiny_options):
    options = TrainOptions(
        **{
            **tiny_options.__dict__,
            "epochs": 1,
            "aux_visual_weight": 1.0,
            "aux_tags_weight": 0.5,
            "tag_drop_each": 0.3,
            "visual_first_epochs": 1,
            "calibrate_quantity": True,
        }
    )
    result = train(tiny_data, tmp_path / "ckpt", options)
    assert "aux_visual" in result.history[0] and "aux_tags" in result.history[0]
    # the checkpoint holds exactly M3Net's weights: what export reads (DESIGN §3.3)
    weights = load_file(tmp_path / "ckpt" / WEIGHTS_FILE)
    config = load_config(tmp_path / "ckpt")
    assert set(weights) == set(M3Net(config.model).state_dict())
    assert set(load_file(tmp_path / "ckpt" / LAST_DIR / AUX_FILE)) == {
        "visual.weight",
        "visual.bias",
        "tags.weight",
        "tags.bias",
    }
    assert config.training["quantity_calibration"]["n_val"] > 0
    # and the exported graph has the contract's outputs and no image-only head ([C, D_v] weight)
    onnx_path = tmp_path / "model.onnx"
    export_checkpoint(tmp_path / "ckpt", onnx_path, parity_images=2)
    graph = onnx.load(onnx_path)
    assert [o.name for o in graph.graph.output] == ["scores", "quantity", "k", "topk"]
    aux_shape = sorted((config.model.num_labels, config.model.visual_width))
    assert all(sorted(init.dims) != aux_shape for init in graph.graph.initializer)
