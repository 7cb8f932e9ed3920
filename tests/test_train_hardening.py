"""Training and checkpoint loading against broken images and edited files: one clear line each."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from m3trt.config import CheckpointConfig
from m3trt.data import batches
from m3trt.data.batches import RecordSet
from m3trt.data.manifest import read_manifest
from m3trt.data.vocab import Vocab
from m3trt.errors import InputError
from m3trt.train import checkpoint as checkpoint_module
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.loop import TrainOptions, train
from tests.manifests import junk_manifest


def _one_epoch(tiny_options, **extra):
    return TrainOptions(
        **{**tiny_options.__dict__, "epochs": 1, "decision_threshold": "none", **extra}
    )


def _is_train(row):
    return row.get("split") in (None, "train") and bool(row["labels"])


def test_no_decodable_training_image_is_refused(tmp_path, tiny_data, tiny_options):
    """It trained nothing and saved the untrained checkpoint with exit 0."""
    manifest = junk_manifest(tmp_path, tiny_data, lambda i, r: _is_train(r))
    with pytest.raises(InputError, match=r"m\.jsonl: only 0 training .* failed; first failure: "):
        train(manifest, tmp_path / "ck", _one_epoch(tiny_options))
    assert not (tmp_path / "ck" / "model.safetensors").exists()


def test_one_decodable_training_image_is_refused(tmp_path, tiny_data, tiny_options):
    """BatchNorm failed on the batch of one (exit 1)."""
    first = {}

    def all_but_one(i, row):
        return _is_train(row) and first.setdefault("i", i) != i

    manifest = junk_manifest(tmp_path, tiny_data, all_but_one)
    with pytest.raises(InputError, match=r"only 1 training and \d+ val images could be decoded"):
        train(manifest, tmp_path / "ck", _one_epoch(tiny_options))


def test_no_decodable_val_image_is_refused_before_training(tmp_path, tiny_data, tiny_options):
    manifest = junk_manifest(tmp_path, tiny_data, lambda i, r: r.get("split") == "val")
    with pytest.raises(InputError, match=r"and 0 val images could be decoded .*junk"):
        train(manifest, tmp_path / "ck", _one_epoch(tiny_options))


def test_uncached_sets_refuse_too_few_decoded_images(
    tmp_path, tiny_data, tiny_options, monkeypatch
):
    """Sets too big to cache decode batch by batch: none decoding saved an untrained model."""
    monkeypatch.setattr(batches, "CACHE_LIMIT_BYTES", 0)
    manifest = junk_manifest(tmp_path, tiny_data, lambda i, r: _is_train(r))
    with pytest.raises(InputError, match=r"only 0 training"):
        train(manifest, tmp_path / "ck", _one_epoch(tiny_options))


def test_failed_images_are_counted(tmp_path, tiny_data, tiny_options):
    bad = set()

    def three(i, row):
        if _is_train(row) and len(bad) < 3:
            bad.add(i)
            return True
        return False

    manifest = junk_manifest(tmp_path, tiny_data, three)
    result = train(manifest, tmp_path / "ck", _one_epoch(tiny_options))
    records = read_manifest(manifest).records
    labelled_train = sum(1 for r in records if r.split in (None, "train") and r.labels)
    assert result.counts["failed_images"] == 3
    assert result.counts["train"] == labelled_train - 3


def test_uncached_failures_never_leave_a_batch_of_one(tmp_path, tiny_data):
    """A batch shrunk to one image by failed decodes crashed BatchNorm: it joins the next."""
    manifest = junk_manifest(tmp_path, tiny_data, lambda i, r: i in (1, 2))
    records = read_manifest(manifest).records[:9]
    data = RecordSet(records, Vocab(read_manifest(manifest).label_names), Vocab([]), 32)
    data.cache = False
    got = list(data.batches(3, drop_singleton=True))
    assert [len(b.indices) for b in got] == [4, 3]
    assert sorted(np.concatenate([b.indices for b in got]).tolist()) == [0, 3, 4, 5, 6, 7, 8]
    list(data.batches(3, drop_singleton=True))  # a second epoch counts each failure once
    assert len(data.failed) == 2


# ------------------------------------------------------------------------- checkpoint loading
def _copy(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    return folder


def _edit_config(folder, edit):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_config_widths_are_checked_against_the_weights_before_building(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """tag_hidden 65536 built a ~112 GiB model before the weights were looked at."""
    folder = _copy(tiny_checkpoint, tmp_path)
    _edit_config(folder, lambda d: d["model"].update(tag_hidden=4096))
    built_on = []
    real = checkpoint_module.M3Net

    def recording(config):
        built_on.append(torch.empty(0).device.type)
        return real(config)

    monkeypatch.setattr(checkpoint_module, "M3Net", recording)
    with pytest.raises(InputError, match=r"model\.safetensors: tensor .* config\.json gives"):
        load_checkpoint(folder)
    assert built_on == ["meta"]


def test_checkpoint_image_size_is_bounded_as_train_bounds_it(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    _edit_config(folder, lambda d: d["preprocessing"].update(image_size=8192))
    with pytest.raises(InputError, match=r"config\.json: preprocessing\.image_size .* 1024"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    ("key", "value"),
    [("std", [1e-300] * 3), ("mean", [1e300, 0.4, 0.4]), ("std", [0.2, 0.2, 1e300])],
)
def test_hostile_preprocessing_is_refused(tiny_checkpoint, tmp_path, key, value):
    """A std of 1e-300 made every exported output NaN."""
    folder = _copy(tiny_checkpoint, tmp_path)
    _edit_config(folder, lambda d: d["preprocessing"].update({key: value}))
    with pytest.raises(InputError, match=rf"config\.json: preprocessing\.{key} must be from"):
        load_checkpoint(folder)


def test_weights_infinite_after_the_float32_cast_are_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path)
    state = load_file(folder / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    big = state[name].to(torch.float64)
    big.view(-1)[0] = 1e300  # finite in float64
    state[name] = big
    save_file(state, folder / "model.safetensors")
    with pytest.raises(InputError, match=rf"tensor {name} holds NaN or infinite"):
        load_checkpoint(folder)


# ------------------------------------------------------------------------- config.json fields
def _config(tiny_checkpoint):
    return json.loads((tiny_checkpoint[0] / "config.json").read_text())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["label_names"].__setitem__(1, d["label_names"][0]), "label_names"),
        (lambda d: d.update(label_names="x" * len(d["label_names"])), "label_names"),
        (lambda d: d["label_names"].__setitem__(0, 7), r"label_names\[0\]"),
        (lambda d: d["label_names"].__setitem__(0, ""), r"label_names\[0\]"),
        (lambda d: d["label_names"].__setitem__(0, "a\x1b[2Jb"), r"label_names\[0\]"),
        (lambda d: d["tag_vocab"].__setitem__(1, d["tag_vocab"][0]), "tag_vocab"),
        (lambda d: d["model"].update(use_tags="false"), r"model\.use_tags"),
        (lambda d: d.update(version=1e999), "version"),
    ],
)
def test_config_fields_are_validated(tiny_checkpoint, edit, field):
    data = _config(tiny_checkpoint)
    edit(data)
    with pytest.raises(InputError, match=rf"^config\.json: {field}"):
        CheckpointConfig.from_json(data)


# ------------------------------------------------------------------------------ --resume state
def _resumable(tiny_checkpoint, tmp_path, edit=None):
    folder = _copy(tiny_checkpoint, tmp_path)
    trainer = folder / "last" / "trainer.json"
    state = json.loads(trainer.read_text())
    state.pop("finished", None)
    state["epoch"], state["history"] = 0, []
    if edit is not None:
        edit(state)
    trainer.write_text(json.dumps(state))
    return folder


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["options"].update(batch_size=0), "option batch_size must be at least 2"),
        (lambda s: s["options"].update(extra=1), "unknown training options extra"),
        (lambda s: s["options"].update(epochs="2"), "option epochs must be an integer"),
        (lambda s: s.pop("history"), "history must be a list"),
        (lambda s: s["options"].update(threads=100000), "option threads must be at most 256"),
    ],
)
def test_an_edited_trainer_json_is_refused(
    tiny_checkpoint, tiny_data, tiny_options, tmp_path, edit, match
):
    folder = _resumable(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(InputError, match=rf"trainer\.json: {match}"):
        train(tiny_data, folder, tiny_options, resume=True)


def test_resume_refuses_options_that_differ_from_the_saved_ones(
    tiny_checkpoint, tiny_data, tiny_options, tmp_path
):
    """`--resume --epochs 5 --lr 0.5` ran silently with the saved epochs and rate."""
    folder = _resumable(tiny_checkpoint, tmp_path)
    given = TrainOptions(**{**tiny_options.__dict__, "epochs": 5, "lr": 0.5})
    with pytest.raises(InputError, match=r"these differ: epochs 5 \(saved 8\); lr 0\.5"):
        train(tiny_data, folder, given, resume=True, explicit={"epochs", "lr", "seed"})


def test_the_cli_refuses_resume_options_it_was_given_and_takes_the_rest(
    tiny_checkpoint, tiny_data, tmp_path
):
    """Only what is typed counts as given: defaults (which differ from the saved run's here) and
    --threads (no result depends on it) never stop a resume."""
    from click.testing import CliRunner

    from m3trt.cli import main

    folder = _resumable(tiny_checkpoint, tmp_path)
    args = ["train", str(tiny_data), "-o", str(folder), "--resume"]
    result = CliRunner().invoke(main, [*args, "--epochs", "5", "--lr", "0.5", "--threads", "1"])
    assert result.exit_code == 2, result.output
    assert "these differ: epochs 5 (saved 8); lr 0.5" in result.output
    assert "threads" not in result.output.split("these differ")[1]


@pytest.mark.parametrize(("option", "value"), [("--seed", "-1"), ("--opset", "17")])
def test_options_the_run_cannot_take_are_usage_errors(tmp_path, tiny_data, option, value):
    from click.testing import CliRunner

    from m3trt.cli import main

    command = ["train", str(tiny_data), "-o", str(tmp_path / "o")]
    if option == "--opset":
        command = ["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")]
    result = CliRunner().invoke(main, [*command, option, value])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


def test_weights_that_are_a_fifo_are_named_as_one(tiny_checkpoint, tmp_path):
    """A FIFO or a folder in place of model.safetensors was "missing from the checkpoint"."""
    import os

    from m3trt.train.checkpoint import WEIGHTS_FILE, load_checkpoint

    folder = _copy(tiny_checkpoint, tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    os.mkfifo(folder / WEIGHTS_FILE)
    with pytest.raises(InputError, match="weights file is a FIFO"):
        load_checkpoint(folder)


def test_checkpoint_weights_get_the_umask_mode_like_its_config(tiny_checkpoint, tmp_path):
    """safetensors creates its file 0600: the weights were private while config.json beside
    them was not (a shared model folder could not be read by the team)."""
    import os

    from m3trt.train.checkpoint import save_checkpoint

    model, config = load_checkpoint(tiny_checkpoint[0])
    old = os.umask(0o027)
    try:
        folder = save_checkpoint(tmp_path / "ckpt", model, config)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {"model.safetensors": 0o640, "config.json": 0o640}, modes


def test_a_new_run_clears_what_a_killed_first_save_left(tmp_path):
    """A first run killed while saving left only a hidden temp file: every new run into the
    folder was refused, and --resume had nothing to resume. A live writer's file is kept."""
    import os

    from m3trt.train.loop import _check_fresh_folder

    out = tmp_path / "run"
    out.mkdir()
    dead = out / ".model.safetensors.tmp-999999999-0123abcd"  # above any pid_max: gone
    dead.write_bytes(b"half")
    (out / ".last.tmp-999999998-0123abcd").mkdir()
    _check_fresh_folder(out)
    assert list(out.iterdir()) == []

    live = out / f".config.json.tmp-{os.getppid()}-0123abcd"
    live.write_text("{")
    with pytest.raises(InputError, match="already holds files this run did not write"):
        _check_fresh_folder(out)
    assert live.exists()
    live.unlink()
    (out / ".model.safetensors.tmp-999999999-0123abcd.keep").write_text("mine")
    with pytest.raises(InputError, match="already holds"):
        _check_fresh_folder(out)


def test_a_diverging_run_stops_at_the_step_with_one_line(tmp_path, tiny_data, tiny_options):
    """--lr 1e30 trained a whole epoch on NaN weights and failed only in validation; 1e300
    overflowed in Adam's step (a traceback, exit 1)."""
    for lr in (1e30, 1e300):
        out = tmp_path / f"ck{lr:g}"
        with pytest.raises(InputError, match=r"training diverged: .+ at epoch 1, step \d+ "):
            train(tiny_data, out, _one_epoch(tiny_options, lr=lr, batch_size=4))
        assert not (out / "model.safetensors").exists()


def test_resume_uses_the_threads_given_now(tiny_checkpoint, tiny_data, tiny_options, tmp_path):
    """--threads changes no result, so --resume takes it (the saved value was used silently)."""
    folder = _resumable(tiny_checkpoint, tmp_path, lambda s: s["options"].update(threads=2))
    asked = []

    class Stop(Exception):
        pass

    def record(n):
        asked.append(n)
        raise Stop

    given = TrainOptions(**{**tiny_options.__dict__, "threads": 1})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "set_num_threads", record)
        with pytest.raises(Stop):
            train(tiny_data, folder, given, resume=True, explicit=set())
    assert asked == [1]


def test_a_divergence_in_an_epochs_last_step_is_named_too(tmp_path, tiny_data, tiny_options):
    """The loss is checked before each step: the last step's NaN weights reached validation,
    a ValueError from the metrics ("q contains NaN")."""
    options = _one_epoch(tiny_options, lr=1e30, batch_size=4096)  # one step an epoch
    with pytest.raises(InputError, match="training diverged: the model's outputs on the val"):
        train(tiny_data, tmp_path / "ck", options)


def test_backbone_weights_saved_from_dataparallel_load(tmp_path):
    """`module.`-prefixed names had their classifier refused as unexpected keys."""
    from m3trt.model import ResNet, load_backbone_weights

    source = ResNet("resnet18")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "dp.pth")
    assert load_backbone_weights(ResNet("resnet18"), tmp_path / "dp.pth")["loaded"] > 0
    torch.save({**source.state_dict(), "conv1.weight": "int"}, tmp_path / "s.pth")
    with pytest.raises(InputError, match=r"conv1\.weight is a str, not a tensor"):
        load_backbone_weights(ResNet("resnet18"), tmp_path / "s.pth")
