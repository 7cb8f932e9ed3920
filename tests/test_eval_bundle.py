"""`m3trt eval BUNDLE MANIFEST`: the metric table plus agreement with the FP32 reference."""

import json

import numpy as np
from click.testing import CliRunner

from m3trt.bench.evaluate import tolerance_check
from m3trt.cli import main


def test_tolerance_check_is_polygraphys_rule():
    reference = np.array([1.0, 0.5, 0.0, -2.0])
    candidate = np.array([1.015, 0.5, 0.02, -2.0])
    result = tolerance_check(reference, candidate, atol=0.01, rtol=0.01)
    # 1.015: |d| 0.015 <= 0.01 + 0.01 * 1 = 0.02 passes; 0.02 at reference 0 fails.
    assert result["mismatched"] == 1 and result["elements"] == 4 and not result["pass"]
    assert np.isclose(result["max_abs"], 0.02)
    assert tolerance_check(reference, reference, atol=0, rtol=0)["pass"]


def test_eval_of_a_bundle(tmp_path, int8_bundle, tiny_data):
    out = tmp_path / "eval.json"
    args = ["eval", str(int8_bundle), str(tiny_data), "--split", "val", "--json", str(out)]
    result = CliRunner().invoke(main, ["--quiet", *args])
    assert result.exit_code == 0, result.output
    assert "agreement with the FP32 reference" in result.output
    data = json.loads(out.read_text())
    assert set(data["modes"]) == {"predicted_k", "top3", "threshold", "oracle_k"}
    agreement = data["agreement"]
    assert agreement["engine"] == "model.int8.onnx" and agreement["reference"] == "model.onnx"
    assert 0.5 <= agreement["label_set_agreement"] <= 1.0
    for name in ("scores", "quantity"):
        assert set(agreement["tolerances"][name]) >= {"max_abs", "mismatched", "pass"}
    # The same images the build checked: the same agreement the bundle recorded.
    from m3trt.runtime.bundle import load_bundle

    recorded = load_bundle(int8_bundle).accuracy
    assert agreement["label_set_agreement"] == recorded["label_set_agreement"]
    assert np.isclose(agreement["max_abs_score_delta"], recorded["max_abs_score_delta"])


def _build(source, out):
    args = ["--quiet", "build", str(source), "-o", str(out), "--precision", "fp32"]
    result = CliRunner().invoke(main, [*args, "--target", "cpu"])
    assert result.exit_code == 0, result.output
    return out


def test_accuracy_gate_fails_a_broken_preprocessing_and_passes_the_good_one(
    tmp_path, tiny_onnx, tiny_data
):
    """A deliberately broken change: the graph subtracts a wrong mean from the pixels."""
    import onnx
    from onnx import numpy_helper

    from m3trt.calibration.uint8_stem import find_stem

    model = onnx.load(str(tiny_onnx))
    stem = find_stem(model)
    sub = next(n for n in model.graph.node if n.name == stem.sub)
    shift = next(t for t in model.graph.initializer if t.name == sub.input[1])
    wrong = numpy_helper.to_array(shift) + 80.0  # mean 0.31 too high on every channel
    shift.CopyFrom(numpy_helper.from_array(wrong.astype(np.float32), shift.name))
    broken_onnx = tmp_path / "broken.onnx"
    onnx.save(model, str(broken_onnx))
    good = _build(tiny_onnx, tmp_path / "good.m3")
    broken = _build(broken_onnx, tmp_path / "broken.m3")
    base = tmp_path / "baseline.json"

    def gate(bundle, *extra):
        args = ["eval", str(bundle), str(tiny_data), "--split", "val", *extra]
        return CliRunner().invoke(main, ["--quiet", *args])

    assert gate(good, "--json", str(base)).exit_code == 0
    passed = gate(good, "--baseline", str(base))
    assert passed.exit_code == 0 and "no regression" in passed.output
    failed = gate(broken, "--baseline", str(base))
    assert failed.exit_code == 1
    lines = [x for x in failed.output.splitlines() if x.startswith("regression: ")]
    # Which figures fall depends on the model: with the tag -> label path (issue 15) the tiny
    # model leans on its tags and the broken pixels may cost only the count accuracy.
    assert lines, failed.output
    assert all("points, allowed -0.5" in x for x in lines)

    # --json never replaces a file unasked, and says so before the run. With --overwrite it may
    # replace the very baseline it is compared with: that one is read first, not the new file.
    refused = gate(good, "--json", str(base))
    assert refused.exit_code == 2
    assert refused.output.strip() == f"error: {base} (--json) exists: replace it with --overwrite"
    higher = json.loads(base.read_text())
    higher["mAP"] = min(1.0, higher["mAP"] + 0.2)
    base.write_text(json.dumps(higher))
    updated = gate(good, "--json", str(base), "--baseline", str(base), "--overwrite")
    assert updated.exit_code == 1 and "regression: mAP:" in updated.output
    assert json.loads(base.read_text())["mAP"] < higher["mAP"]  # now this run's figures


def test_eval_notes_an_image_in_two_splits_and_names_an_unreadable_one(
    tmp_path, int8_bundle, tiny_data
):
    """A record repeating a train image in the test split was scored silently, and an image
    that could not be read was only counted."""
    rows = [json.loads(line) for line in tiny_data.read_text().splitlines()]
    rows = [dict(r, image=str(tiny_data.parent / r["image"])) for r in rows]
    train = next(r for r in rows if r["split"] == "train" and r["labels"])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows += [
        dict(train, split="test"),
        dict(train, image=str(tmp_path / "broken.jpg"), split="test"),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.txt").write_text((tiny_data.parent / "labels.txt").read_text())
    result = CliRunner().invoke(main, ["eval", str(int8_bundle), str(manifest)])
    assert result.exit_code == 0, result.output
    assert "1 record names an image an earlier one names" in result.output
    assert "in another split (line 201: train and test)" in result.output
    assert "1 undecodable images (first: " in result.output and "broken.jpg" in result.output
