"""Training: the loss falls, scores beat chance, checkpoints round-trip, resume continues."""

import itertools
import json

import numpy as np
import pytest
import torch

from m3trt.data.manifest import read_manifest
from m3trt.errors import InputError
from m3trt.train import loop
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.evaluate import evaluate_checkpoint
from m3trt.train.loop import TrainOptions, lr_at, train


def test_loss_falls_and_scores_beat_chance(tiny_checkpoint, tiny_data):
    folder, result = tiny_checkpoint
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    scores = evaluate_checkpoint(folder, tiny_data, split="test")
    manifest = read_manifest(tiny_data)
    test = [r for r in manifest.records if r.split == "test"]
    # A random ranking's expected AP for a class is its positive rate.
    freq = np.mean([[name in r.labels for name in manifest.label_names] for r in test], axis=0)
    chance = freq[freq > 0].mean()
    assert scores["mAP"] > chance + 0.1
    assert set(scores["modes"]) == {"predicted_k", "top3", "threshold", "oracle_k"}


def test_checkpoint_round_trip_gives_identical_outputs(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "last", "model.safetensors"]
    model, config = load_checkpoint(folder)
    again, config2 = load_checkpoint(folder)
    assert config.to_json() == config2.to_json()
    images = torch.randn(3, 3, 64, 64)
    tags = torch.zeros(3, config.model.num_tags)
    tags[0, :3] = 1
    with torch.no_grad():
        a, qa = model(images, tags)
        b, qb = again(images, tags)
    assert torch.equal(a, b) and torch.equal(qa, qb)
    summary = json.loads((folder / "config.json").read_text())["training"]
    assert summary["best_epoch"] >= 1 and len(summary["history"]) == 8
    assert config.model.k_max == 5
    assert config.tag_vocab and config.label_names[0] == "circle"


def test_refuses_to_overwrite_a_checkpoint(tiny_checkpoint, tiny_data, tiny_options):
    folder, _ = tiny_checkpoint
    with pytest.raises(InputError, match="already holds a checkpoint .*; that run has finished;"):
        train(tiny_data, folder, tiny_options)


def test_refuses_a_folder_holding_files_it_did_not_write(tmp_path, tiny_data, tiny_options):
    """Only config.json was looked for: a user's model.safetensors was replaced, silently."""
    (tmp_path / "model.safetensors").write_text("precious")
    with pytest.raises(InputError, match=r"files this run did not write \('model.safetensors'\)"):
        train(tiny_data, tmp_path, tiny_options)
    assert (tmp_path / "model.safetensors").read_text() == "precious"


def test_resume_continues_where_it_stopped(tmp_path, tiny_data, tiny_options, monkeypatch):
    options = TrainOptions(**{**tiny_options.__dict__, "epochs": 2})
    straight = train(tiny_data, tmp_path / "straight", options)

    real_validate = loop.validate
    calls = {"n": 0}

    def interrupt_after_first_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tmp_path / "resumed", options)
    monkeypatch.setattr(loop, "validate", real_validate)
    resumed = train(tiny_data, tmp_path / "resumed", tiny_options, resume=True)

    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"], rel=1e-4)
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "resumed")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=name)


def test_resume_without_state_is_a_clear_error(tmp_path, tiny_data, tiny_options):
    with pytest.raises(InputError, match="nothing to resume"):
        train(tiny_data, tmp_path / "fresh", tiny_options, resume=True)


def test_a_finished_run_is_not_resumed(tmp_path, tiny_checkpoint, tiny_data, tiny_options):
    """--resume of a finished run fitted late fusion again on fused weights, replacing the
    checkpoint (val mAP 70.2 -> 69.5 in the review) with exit 0."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match="this run has finished"):
        train(tiny_data, folder, tiny_options, resume=True)
    assert (folder / "model.safetensors").read_bytes() == before
    # one finished before the flag existed: no "finished", no last/unfitted, fitted steps in
    # its config (the decision threshold here)
    trainer = folder / "last" / "trainer.json"
    state = json.loads(trainer.read_text())
    del state["finished"]
    trainer.write_text(json.dumps(state))
    shutil.rmtree(folder / "last" / "unfitted")
    with pytest.raises(InputError, match="this run has finished"):
        train(tiny_data, folder, tiny_options, resume=True)
    assert (folder / "model.safetensors").read_bytes() == before


def test_a_kill_in_the_steps_fitted_on_val_resumes_to_the_same_checkpoint(
    tmp_path, tiny_data, tiny_options, monkeypatch
):
    """Late fusion folds into the best checkpoint's weights; after a kill between it and the
    end, --resume fitted it again on the fused weights."""
    options = TrainOptions(**{**tiny_options.__dict__, "epochs": 2, "late_fusion": True})
    straight = tmp_path / "straight"
    train(tiny_data, straight, options)
    real = loop._set_decision_threshold

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_set_decision_threshold", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tmp_path / "resumed", options)
    monkeypatch.setattr(loop, "_set_decision_threshold", real)
    train(tiny_data, tmp_path / "resumed", options, resume=True)
    a, config_a = load_checkpoint(straight)
    b, config_b = load_checkpoint(tmp_path / "resumed")
    fused_a, fused_b = config_a.training["late_fusion"], config_b.training["late_fusion"]
    for key in ("model_weight", "tags_weight", "visual_weight", "offset", "val_bce_before"):
        assert fused_a[key] == pytest.approx(fused_b[key], rel=1e-3, abs=1e-4), key
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=name)


def test_a_save_killed_mid_swap_resumes_from_one_whole_state(tmp_path, tiny_data, tiny_options):
    """last/'s files were replaced one by one: a kill between them left epoch 2's weights beside
    epoch 1's optimizer and progress, and --resume took it silently. Now last/ is replaced
    whole; a kill between its two renames leaves it moved aside, and it comes back."""
    options = TrainOptions(**{**tiny_options.__dict__, "epochs": 1})
    folder = tmp_path / "ckpt"
    train(tiny_data, folder, options)
    (folder / "last").rename(folder / ".last.old-1-abcd")  # the kill: old moved aside...
    staging = folder / ".last.tmp-1-abcd"  # ...the new one written only in part
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    with pytest.raises(InputError, match="this run has finished"):  # it is read, whole
        train(tiny_data, folder, options, resume=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "last", "model.safetensors"]


def test_unlabelled_images_are_skipped_and_counted(tmp_path, tiny_data, tiny_options):
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    for row in rows[:7]:
        row["labels"] = []
        row["split"] = "train"
    for row in rows:
        row["image"] = str(tiny_data.parent / row["image"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.txt").write_text((tiny_data.parent / "labels.txt").read_text())
    options = TrainOptions(**{**tiny_options.__dict__, "epochs": 1})
    result = train(manifest, tmp_path / "ckpt", options)
    assert result.counts["unlabelled_skipped"] == 7


def test_empty_training_split_is_an_input_error(tmp_path, tiny_data, tiny_options):
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    rows = [dict(r, split="test", image=str(tiny_data.parent / r["image"])) for r in rows]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="training split is empty"):
        train(manifest, tmp_path / "ckpt", tiny_options)


def test_one_training_image_is_an_input_error(tmp_path, tiny_data, tiny_options):
    """One training image and a val split got past the checks and failed in BatchNorm."""
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    rows = [dict(r, image=str(tiny_data.parent / r["image"])) for r in rows if r["labels"]]
    rows = [dict(rows[0], split="train"), dict(rows[1], split="val")]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="only 1 labelled training image; training needs"):
        train(manifest, tmp_path / "ckpt", tiny_options)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


def test_tag_skip_trains_in_its_own_group_at_a_multiple_of_the_rate():
    from m3trt.config import ModelConfig
    from m3trt.model import M3Net

    options = TrainOptions(lr=1e-3, tag_skip_lr_mult=50.0)
    model = M3Net(ModelConfig(num_labels=3, num_tags=4, backbone="resnet18", tag_skip=True))
    groups = loop.make_optimizer(model, options).param_groups
    skip = [g for g in groups if any(p is model.tag_skip.weight for p in g["params"])]
    assert len(skip) == 1 and len(skip[0]["params"]) == 1 and skip[0]["lr_mult"] == 50.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    plain = M3Net(ModelConfig(num_labels=3, num_tags=4, backbone="resnet18"))
    assert len(loop.make_optimizer(plain, options).param_groups) == 2


def test_training_fits_the_decision_threshold_on_val(tiny_checkpoint):
    _, config = load_checkpoint(tiny_checkpoint[0])
    assert 0 < config.model.decision_threshold < 1
    fitted = config.training["decision_threshold"]
    assert fitted["threshold"] == config.model.decision_threshold
    assert fitted["source"] == "fitted on val"
    assert loop.parse_decision_threshold("0.4") == "0.4"
    with pytest.raises(InputError, match="decision-threshold"):
        loop.parse_decision_threshold("1.5")


def test_shift_augmentation_translates_and_draws_nothing_when_off():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[:, 3:5, 3:5] = 255
    rng = np.random.default_rng(0)
    assert loop._shift(images, 0.0, rng) is images
    assert rng.random() == np.random.default_rng(0).random()  # no random number was drawn
    shifted = loop._shift(images, 0.25, np.random.default_rng(1))
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    assert all((s == 255).sum() == 12 for s in shifted)  # the square moved, whole
    assert any(not np.array_equal(s, i) for s, i in zip(shifted, images, strict=True))
