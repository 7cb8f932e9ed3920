"""The command line: one-line errors with exit code 2 for bad input, the eval JSON shape."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from m3trt.cli import main


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


def test_missing_manifest(tmp_path):
    code, out = run("train", tmp_path / "nope.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "nope.jsonl: manifest not found" in one_line_error(out)


def test_bad_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"image": "a.jpg", "labels": ["x"]}\n{oops\n')
    code, out = run("train", tmp_path / "m.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "m.jsonl: line 2: not valid JSON" in one_line_error(out)


def test_missing_image(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"image": "gone.jpg", "labels": ["x"]}\n')
    code, out = run("train", tmp_path / "m.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "line 1: image not found: gone.jpg" in one_line_error(out)


def test_unknown_label_in_labels_txt(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "labels.txt").write_text("cat\n")
    (tmp_path / "m.jsonl").write_text('{"image": "a.jpg", "labels": ["dog"]}\n')
    code, out = run("train", tmp_path / "m.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "label 'dog' is not in labels.txt" in one_line_error(out)


def test_empty_training_split(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "m.jsonl").write_text('{"image": "a.jpg", "labels": ["dog"], "split": "test"}\n')
    code, out = run("train", tmp_path / "m.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "training split is empty" in one_line_error(out)


def test_eval_on_a_folder_that_is_not_a_checkpoint(tmp_path, tiny_data):
    code, out = run("eval", tmp_path, tiny_data)
    assert code == 2
    assert "config.json: not found" in one_line_error(out)


def test_eval_unknown_split(tiny_checkpoint, tiny_data):
    code, _ = run("eval", tiny_checkpoint[0], tiny_data, "--split", "dev")
    assert code == 2


def test_synth_refuses_too_few_images_and_names_the_option(tmp_path):
    code, out = run("data", "synth", tmp_path / "s", "--n", "5")
    assert code == 2 and "Invalid value for '--n'" in out and "20<=x<=1000000" in out
    code, out = run("data", "synth", tmp_path / "s", "--misleading-tags", "-1")
    assert code == 2 and "Invalid value for '--misleading-tags'" in out  # was "misleading must"
    code, out = run(
        "data", "synth", tmp_path / "s", "--min-object-size", ".5", "--max-object-size", ".2"
    )
    assert one_line_error(out).startswith("error: data synth: object sizes need")
    assert not (tmp_path / "s").exists()


def test_eval_json_shape(tmp_path, tiny_checkpoint, tiny_data):
    target = tmp_path / "eval.json"
    code, out = run("eval", tiny_checkpoint[0], tiny_data, "--split", "test", "--json", target)
    assert code == 0, out
    assert "OF1" in out and "mAP" in out
    data = json.loads(target.read_text())
    assert {"n_images", "mAP", "n_classes_without_positives", "quantity", "modes"} <= set(data)
    assert set(data["quantity"]) >= {"acc", "mae"}
    for mode in ("predicted_k", "top3", "threshold", "oracle_k"):
        assert set(data["modes"][mode]) == {"CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1"}
        assert all(0 <= v <= 1 for v in data["modes"][mode].values())


def test_synth_then_train_end_to_end(tmp_path):
    data = tmp_path / "data"
    code, out = run("data", "synth", data, "--n", "40", "--size", "40", "--seed", "1")
    assert code == 0, out
    code, out = run(
        "train",
        data / "manifest.jsonl",
        "-o",
        tmp_path / "ckpt",
        "--image-size",
        "40",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--tag-hidden",
        "16",
        "--visual-dim",
        "16",
        "--tag-min-count",
        "1",
    )
    assert code == 0, out
    assert "best epoch 1" in out
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["--version"]])
def test_entry_point_runs(args):
    result = subprocess.run(
        [sys.executable, "-m", "m3trt.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_train_refuses_an_output_that_is_not_a_folder(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"image": "a.jpg", "labels": ["x"]}\n')
    os.mkfifo(tmp_path / "ckpt")
    code, out = run("train", tmp_path / "m.jsonl", "-o", tmp_path / "ckpt")
    assert code == 2
    assert "ckpt: exists and is not a folder; choose another -o" in one_line_error(out)
    assert not (tmp_path / ".ckpt.lock").exists()  # refused before the lock


def test_quiet_and_verbose_work_after_every_subcommand(int8_bundle):
    """`m3trt doctor -q`, `inspect B -q` were "No such option"; an error's advice to rerun with
    --verbose failed where it was typed, after the subcommand."""
    import click

    def leaves(group, prefix=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from leaves(command, (*prefix, name))
            else:
                yield (*prefix, name), command

    for name, command in leaves(main):
        opts = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, name
    result = CliRunner().invoke(main, ["inspect", str(int8_bundle), "-q", "-v"])
    assert result.exit_code == 0, result.output


def _all_params():
    import click

    def walk(command, path):
        for param in command.params:
            yield path, param
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    return list(walk(main, []))


def test_every_float_option_refuses_nan_and_infinity():
    """``nan`` passes every range comparison: an unchecked float option trained on a NaN loss."""
    import click

    from m3trt.cli import FiniteFloatRange

    floats = [
        (" ".join(path), param)
        for path, param in _all_params()
        if isinstance(param.type, click.types.FloatParamType)
    ]
    assert len(floats) > 10, "the walk missed the float options"
    unchecked = [
        (cmd, param.name) for cmd, param in floats if not isinstance(param.type, FiniteFloatRange)
    ]
    assert unchecked == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_train_refuses_a_quantity_weight_that_is_not_a_finite_weight(tmp_path, value):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    result = CliRunner().invoke(
        main, ["train", str(manifest), "-o", str(tmp_path / "ckpt"), "--quantity-weight", value]
    )
    assert result.exit_code == 2
    assert "--quantity-weight" in result.output
    assert not (tmp_path / "ckpt").exists()


def test_synth_splits_that_are_not_numbers_name_the_option(tmp_path):
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "d"), "--splits", "a,b,c"])
    assert result.exit_code == 2 and "Invalid value for '--splits'" in result.output


def test_success_lines_escape_what_a_terminal_would_act_on(tmp_path):
    """`-o $'g\\e[31mRED'` sent a raw escape sequence to the user's terminal."""
    out = tmp_path / "g\x1b[31mRED"
    result = CliRunner().invoke(main, ["data", "synth", str(out), "--n", "20", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "\x1b" not in result.output
