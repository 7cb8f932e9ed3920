"""`m3trt bench` and the regression gate: statistics, JSON shape, ratios, exit codes."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from m3trt.bench.latency import compare_speed
from m3trt.bench.regression import compare_accuracy
from m3trt.bench.stats import latency_stats, percentile
from m3trt.cli import main
from m3trt.errors import M3Error


def cli(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def test_percentiles_follow_trtexec():
    hundred = list(range(1, 101))
    assert [percentile(hundred, p) for p in (90, 95, 99, 100)] == [90, 95, 99, 100]
    ten = list(range(1, 11))
    assert percentile(ten, 90) == 9 and percentile(ten, 99) == 10 and percentile(ten, 0) == 1
    stats = latency_stats([5.0, 1.0, 3.0, 2.0])
    assert stats["min"] == 1 and stats["max"] == 5 and stats["mean"] == 2.75
    assert stats["median"] == 2.5 and stats["p99"] == 5
    with pytest.raises(ValueError):
        latency_stats([])


def _speed(ratios, reference="onnx-fp32"):
    return {"ratios": ratios, "reference": {"name": reference}}


def test_speed_gate_compares_ratios():
    baseline = _speed({"1": 2.0, "8": 3.0})
    assert compare_speed(_speed({"1": 1.95, "8": 3.1}), baseline, 1.10) == []
    lines = compare_speed(_speed({"1": 1.95, "8": 2.5}), baseline, 1.10)
    assert len(lines) == 1 and lines[0].startswith("batch 8: 2.50x") and "1.20x slower" in lines[0]
    with pytest.raises(M3Error, match="measured against"):
        compare_speed(_speed({"1": 2.0}, "torch"), baseline, 1.1)
    with pytest.raises(M3Error, match="--against"):
        compare_speed({"results": []}, baseline, 1.1)


def test_accuracy_gate_compares_points():
    base = {"n_images": 10, "mAP": 0.60, "modes": {"top3": {"OF1": 0.50, "CF1": 0.40}}}
    same = json.loads(json.dumps(base))
    assert compare_accuracy(same, base, 0.5) == []
    worse = {"n_images": 10, "mAP": 0.596, "modes": {"top3": {"OF1": 0.49, "CF1": 0.41}}}
    lines = compare_accuracy(worse, base, 0.5)
    assert lines == ["top3 OF1: 49.00 vs baseline 50.00 (-1.00 points, allowed -0.5)"]
    with pytest.raises(M3Error, match="same split"):
        compare_accuracy({**worse, "n_images": 11}, base, 0.5)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, int8_bundle):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", int8_bundle, "--batch-sizes", "1,4", "--warmup", "0.05", "--duration", "0.3"]
    args += ["--iterations", "5", "--against", "onnx-fp32", "--json", out / "b.json"]
    args += ["--plot", out / "b.png"]
    code, output = cli(*args)
    assert code == 0, output
    return out


def test_bench_json_has_every_field(bench_json):
    data = json.loads((bench_json / "b.json").read_text())
    assert {"cpu", "cpu_flags", "cores", "gpus", "versions"} <= set(data["machine"])
    assert [r["batch_size"] for r in data["results"]] == [1, 4]
    for r in data["results"] + data["reference"]["results"]:
        assert {"throughput_qps", "images_per_s", "latency_ms", "iterations"} <= set(r)
        assert set(r["latency_ms"]) == {"min", "max", "mean", "median", "p90", "p95", "p99"}
        assert r["iterations"] >= 5 and r["latency_ms"]["min"] <= r["latency_ms"]["p99"]
        assert np.isclose(r["images_per_s"], r["throughput_qps"] * r["batch_size"])
    assert data["reference"]["name"] == "onnx-fp32" and set(data["ratios"]) == {"1", "4"}


def test_bench_plot_is_a_png(bench_json):
    from PIL import Image

    with Image.open(bench_json / "b.png") as img:
        assert img.format == "PNG" and img.size[0] > 800


def test_bench_never_replaces_a_file_unasked(tmp_path, bench_json, int8_bundle):
    """An existing --json or --plot is refused before the run, and kept as it was."""
    plot = bench_json / "b.png"
    before = plot.read_bytes()
    args = ["bench", int8_bundle, "--batch-sizes", "1", "--warmup", "0", "--duration", "0.1"]
    code, output = cli(*args, "--json", tmp_path / "new.json", "--plot", plot)
    assert (
        code == 2
        and output.strip() == f"error: {plot} (--plot) exists: replace it with --overwrite"
    )
    assert plot.read_bytes() == before and not (tmp_path / "new.json").exists()
    code, output = cli(*args, "--json", tmp_path / "same.png", "--plot", tmp_path / "same.png")
    assert code == 2 and "named by both --json and --plot" in output
    copy = tmp_path / "copy.json"
    copy.write_text("an earlier report")
    assert cli(*args, "--json", copy, "--overwrite")[0] == 0
    assert json.loads(copy.read_text())["results"][0]["batch_size"] == 1


def test_a_plot_name_is_checked_for_the_file_written(tmp_path, int8_bundle):
    """matplotlib takes the format from the name: `--plot foo` wrote foo.png, replacing one
    that was there, unchecked; `--plot p.txt` failed after the whole run."""
    kept = tmp_path / "foo.png"
    kept.write_text("the user's own")
    args = ["bench", int8_bundle, "--batch-sizes", "1", "--warmup", "0", "--duration", "0.1"]
    for name, says in (("foo", "no ending"), ("p.txt", "'.txt'"), ("bar.", "no ending")):
        code, output = cli(*args, "--plot", tmp_path / name)
        assert code == 2 and says in output and "end the name in .png" in output, output
        assert "batch" not in output.lower().split("error")[0]  # refused before the run
    assert kept.read_text() == "the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foo.png"]
    code, output = cli(*args, "--plot", tmp_path / "b.svg")
    assert code == 0, output
    assert (tmp_path / "b.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))


def test_bench_baseline_exit_codes(tmp_path, bench_json, int8_bundle):
    base = json.loads((bench_json / "b.json").read_text())
    args = ["bench", int8_bundle, "--batch-sizes", "4", "--warmup", "0", "--duration", "0.2"]
    args += ["--against", "onnx-fp32"]
    fast = {**base, "ratios": {"4": 1e-3}}  # any real run beats this baseline
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    assert cli(*args, "--baseline", tmp_path / "fast.json")[0] == 0
    slow = {**base, "ratios": {"4": 1e3}}  # a baseline 1000x faster than any real run
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    code, output = cli(*args, "--baseline", tmp_path / "slow.json")
    assert code == 1 and "regression: batch 4:" in output
    # what the options alone reveal is refused before the run (it came after the timing)
    code, output = cli(*args[:-2], "--baseline", tmp_path / "slow.json")  # no --against
    assert code == 2 and "--against" in output and "batch" not in output.split("error")[0]
    code, output = cli(*args[:-1], "torch", "--baseline", tmp_path / "slow.json")
    assert code == 2 and "measured against 'onnx-fp32', not 'torch'" in output
    code, output = cli(*args, "--batch-sizes", "2", "--baseline", tmp_path / "slow.json")
    assert code == 2 and "no batch size in common with the baseline's (4)" in output
    (tmp_path / "bad.json").write_text("{not json")
    code, output = cli(*args, "--baseline", tmp_path / "bad.json")
    assert code == 2 and "bad.json" in output


def test_bench_folder_mode(tmp_path, int8_bundle, test_images):
    out = tmp_path / "f.json"
    code, output = cli(
        "bench",
        int8_bundle,
        "--folder",
        test_images,
        "--batch-sizes",
        "8",
        "--warmup",
        "0",
        "--duration",
        "0.1",
        "--iterations",
        "3",
        "--json",
        out,
    )
    assert code == 0, output
    data = json.loads(out.read_text())
    assert data["mode"] == "folder" and data["results"][0]["iterations"] >= 3


def test_bench_folder_smaller_than_the_batch_says_so(int8_bundle, test_images):
    """24 images timed as 'batch 64': every call held 24, and nothing said so."""
    from click.testing import CliRunner

    from m3trt.cli import main

    args = ["bench", str(int8_bundle), "--folder", str(test_images), "--batch-sizes", "64"]
    args += ["--warmup", "0", "--duration", "0.1", "--iterations", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "note: batch 64: calls held 24.0 images on average" in result.output


def test_bench_against_torch(tmp_path, int8_bundle, tiny_checkpoint):
    args = ["bench", int8_bundle, "--batch-sizes", "2", "--warmup", "0", "--duration", "0.1"]
    args += ["--iterations", "2", "--against", "torch"]
    code, output = cli(*args)
    # Built from an .onnx: the bundle does not know a checkpoint.
    assert code == 2 and "--checkpoint" in output
    out = tmp_path / "t.json"
    code, output = cli(*args, "--checkpoint", tiny_checkpoint[0], "--json", out)
    assert code == 0, output
    data = json.loads(out.read_text())
    assert data["reference"]["name"] == "torch" and data["ratios"]["2"] > 0


def test_bench_splits_transfers_and_compute(tmp_path, int8_bundle):
    """The I/O-binding path GPU engines use, exercised with CPU copies."""
    out = tmp_path / "x.json"
    code, output = cli(
        "bench",
        int8_bundle,
        "--batch-sizes",
        "4",
        "--warmup",
        "0",
        "--duration",
        "0.2",
        "--iterations",
        "3",
        "--transfers",
        "--json",
        out,
    )
    assert code == 0, output
    result = json.loads(out.read_text())["results"][0]
    for part in ("h2d_ms", "compute_ms", "d2h_ms"):
        assert set(result[part]) == {"min", "max", "mean", "median", "p90", "p95", "p99"}
        assert 0 <= result[part]["min"] <= result[part]["max"]
    assert result["compute_ms"]["median"] > result["h2d_ms"]["median"]


def test_an_accuracy_baseline_without_its_image_count_is_refused_before_the_run(tmp_path):
    from m3trt.bench.regression import load_baseline

    path = tmp_path / "b.json"
    path.write_text(json.dumps({"mAP": 0.6, "modes": {"top3": {"OF1": 0.5, "CF1": 0.4}}}))
    with pytest.raises(M3Error, match="does not say how many images it scored"):
        load_baseline(path, "accuracy")


@pytest.mark.parametrize(
    "change, says",
    [
        ('"mAP": 1e999', "mAP is inf"),
        ('"mAP": NaN', "mAP is nan"),
        ('"mAP": "x"', "mAP is 'x'"),
        ('"mAP": 1.5', "mAP is 1.5"),
        ('"OF1": -0.1', "top3 OF1 is -0.1"),
    ],
)
def test_an_accuracy_baseline_with_a_figure_that_is_no_figure_is_refused(tmp_path, change, says):
    """A figure that was no finite number was passed over: a baseline of mAP 1e999 (or NaN, or
    "x") gated nothing and said "no regression", exit 0."""
    from m3trt.bench.regression import load_baseline

    text = json.dumps({"n_images": 10, "mAP": 0.6, "modes": {"top3": {"OF1": 0.5, "CF1": 0.4}}})
    key = change.split(":")[0]
    old = {'"mAP"': '"mAP": 0.6', '"OF1"': '"OF1": 0.5'}[key]
    path = tmp_path / "b.json"
    path.write_text(text.replace(old, change))
    with pytest.raises(
        M3Error, match=f"the baseline's {re.escape(says)}, not a figure from 0 to 1"
    ):
        load_baseline(path, "accuracy")


def test_figures_a_baseline_lacks_are_named():
    from m3trt.bench.regression import missing_figures

    now = {"mAP": 0.6, "modes": {"top3": {"OF1": 0.5, "CF1": 0.4}}, "quantity": {"acc": 0.3}}
    then = {"mAP": 0.6, "modes": {"top3": {"OF1": 0.5}}}
    assert missing_figures(now, then) == ["top3 CF1", "quantity acc"]


def test_bench_folder_names_the_files_it_left_out(tmp_path, int8_bundle, test_images):
    """A truncated JPEG was dropped from the timing without a word."""
    import shutil

    from click.testing import CliRunner

    from m3trt.cli import main

    folder = tmp_path / "imgs"
    shutil.copytree(test_images, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    args = ["bench", str(int8_bundle), "--folder", str(folder), "--batch-sizes", "8,4"]
    args += ["--warmup", "0", "--duration", "0.1", "--iterations", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("note: 1 files in ") == 1, result.output  # once, not per size
    assert "broken.jpg: " in result.output


@pytest.mark.parametrize("sizes", ["1,,2", "1,", "0,4", "2000", "1e3"])
def test_bench_batch_sizes_typos_are_refused(int8_bundle, sizes):
    code, output = cli("bench", int8_bundle, "--batch-sizes", sizes)
    assert code == 2 and "give integers from 1 to" in output, output
