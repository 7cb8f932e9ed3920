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
