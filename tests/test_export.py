"""Export: one self-describing graph with parity against PyTorch, for each block type and switch."""

import json
import os

import numpy as np
import onnx
import pytest
import torch

from m3trt.config import CheckpointConfig, ModelConfig, Preprocessing
from m3trt.errors import InputError
from m3trt.export.onnx_export import export_checkpoint
from m3trt.export.parity import compare
from m3trt.model import M3Net
from m3trt.runtime.model_io import ModelInfo
from m3trt.runtime.outputs import output_lock
from m3trt.train.checkpoint import load_checkpoint, save_checkpoint
from tests.test_fusion import randomise_batchnorm

LABELS = [f"label{i}" for i in range(7)]
TAGS = [f"tag{i}" for i in range(12)]


def make_checkpoint(folder, **switches):
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        num_labels=len(LABELS),
        num_tags=len(TAGS) if switches.get("use_tags", True) else 0,
        tag_hidden=16,
        visual_dim=16,
        quantity_hidden=8,
        k_max=4,
        **{"backbone": "resnet18", **switches},
    )
    model = M3Net(model_cfg)
    randomise_batchnorm(model)
    config = CheckpointConfig(
        model=model_cfg,
        preprocessing=Preprocessing(image_size=32),
        label_names=LABELS,
        tag_vocab=TAGS if model_cfg.num_tags else [],
    )
    save_checkpoint(folder, model.eval(), config)
    return folder


@pytest.mark.parametrize(
    "switches",
    [
        {"backbone": "resnet18"},
        {"backbone": "resnet34"},
        # ResNet-101 is ResNet-50 with more stage-3 blocks (same code path): left out, its
        # export took ~40 s of the CI budget (tests/test_model.py still builds it).
        {"backbone": "resnet50"},
        {"use_tags": False},
        {"multi_scale": False, "tag_skip": True, "decision_threshold": 0.5},
        {"use_tags": False, "multi_scale": False},
        {"quantity_head": False},
    ],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_export_parity(tmp_path, switches):
    ckpt = make_checkpoint(tmp_path / "ckpt", **switches)
    report = export_checkpoint(ckpt, tmp_path / "model.onnx", parity_images=4)
    assert report.parity.ok, report.parity.failure
    assert report.parity.max_score_delta <= 1e-4
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    uses_tags = switches.get("use_tags", True)
    assert list(inputs) == (["image", "tags"] if uses_tags else ["image"])
    image_type = inputs["image"].type.tensor_type
    assert image_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in image_type.shape.dim]
    assert dims[1:] == [32, 32, 3] and isinstance(dims[0], str)  # dynamic batch
    assert [o.name for o in model.graph.output] == ["scores", "quantity", "k", "topk"]
    info = ModelInfo.from_onnx_metadata({p.key: p.value for p in model.metadata_props})
    assert info.label_names == LABELS and info.k_max == 4
    # Fusion, counted on the graph written against the unfused PyTorch model: every BatchNorm
    # folded, one GEMM per Linear layer but the quantity head's first, merged into the classifier.
    model, _ = load_checkpoint(ckpt)
    batchnorms = sum(
        isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d) for m in model.modules()
    )
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert report.fused.batchnorms == 0 and report.bn_folded == batchnorms > 0
    assert report.gemms_merged == (1 if switches.get("quantity_head", True) else 0)
    assert report.fused.gemms == linears - report.gemms_merged
    assert report.fused.nodes < report.raw.nodes  # and onnxscript's optimizer simplified it
    assert f"{report.bn_folded} BatchNorms folded" in report.summary()


def test_export_refuses_bad_output_name(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(InputError, match=r"must be a \.onnx file"):
        export_checkpoint(ckpt, tmp_path / "model.bin")


def outputs(scores, q, k_max=3):
    scores = np.asarray(scores, np.float32)
    q = np.asarray(q, np.float32)
    k = np.clip(np.floor(q + 0.5), 1, k_max).astype(np.int32)
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k_max].astype(np.int32)
    return [scores, q, k, topk]


def test_parity_compare_passes_identical_and_names_the_failing_output():
    ref = outputs([[0.9, 0.1, 0.5, 0.3]], [2.0])
    assert compare(ref, ref).ok
    worse = outputs([[0.9, 0.1, 0.5, 0.3005]], [2.0])
    report = compare(ref, worse)
    assert not report.ok and "scores differ by up to" in report.failure


def test_parity_compare_fails_nan_outputs():
    """NaN passed every ``delta <= atol`` test: NaN weights exported 'parity ok'."""
    ref = outputs([[0.9, 0.1, 0.5, 0.3]], [2.0])
    for broken in (outputs([[0.9, 0.1, float("nan"), 0.3]], [2.0]), outputs([[0.9] * 4], [np.inf])):
        assert not compare(ref, broken).ok and "NaN or infinite" in compare(ref, broken).failure
        assert not compare(broken, broken).ok


def test_parity_compare_excuses_exact_ties_only():
    ref = outputs([[0.9, 0.5, 0.5, 0.1]], [2.0])
    swapped = [x.copy() for x in ref]
    swapped[3][0, :2] = [0, 2]  # the tie at the k-th label resolved the other way
    report = compare(ref, swapped)
    assert report.ok and report.excused_ties == 1
    wrong = [x.copy() for x in outputs([[0.9, 0.6, 0.5, 0.1]], [2.0])]
    moved = [x.copy() for x in wrong]
    moved[3][0, :2] = [0, 2]
    report = compare(wrong, moved)
    assert not report.ok and "label sets differ" in report.failure


def test_parity_compare_k_at_rounding_boundary():
    ref = outputs([[0.9, 0.6, 0.5, 0.1]], [1.49999])
    flipped = [x.copy() for x in ref]
    flipped[2][0] = 2
    assert compare(ref, flipped).ok  # q sits on the rounding boundary
    far = outputs([[0.9, 0.6, 0.5, 0.1]], [1.2])
    flipped = [x.copy() for x in far]
    flipped[2][0] = 2
    report = compare(far, flipped)
    assert not report.ok and "k differs" in report.failure


def test_parity_compare_k_from_a_decision_threshold():
    ref = outputs([[0.9, 0.6, 0.50003, 0.1]], [1.0])
    ref[2][0] = 3  # three scores >= 0.5
    flipped = [x.copy() for x in ref]
    flipped[2][0] = 2
    assert compare(ref, flipped, threshold=0.5).ok  # a score sits on the threshold
    assert not compare(ref, flipped, threshold=0.4).ok


def export_cli(*args):
    from click.testing import CliRunner

    from m3trt.cli import main

    result = CliRunner().invoke(main, ["-q", "export", *map(str, args)])
    return result.exit_code, result.output


def test_export_cli_never_replaces_a_file_it_was_not_told_to(tmp_path):
    """Checked before the export's seconds: an existing -o or --json, a FIFO, one path named
    twice; with --overwrite both files are replaced and the report says what fusion did."""
    ckpt = make_checkpoint(tmp_path / "ckpt", quantity_head=False)
    onnx_path, report = tmp_path / "model.onnx", tmp_path / "export.json"
    onnx_path.write_bytes(b"a user's file")
    report.write_text("a user's notes")
    code, output = export_cli(ckpt, "-o", onnx_path)
    assert code == 2 and output.strip() == (
        f"error: {onnx_path} (-o) exists: replace it with --overwrite"
    )
    code, output = export_cli(ckpt, "-o", tmp_path / "new.onnx", "--json", report)
    assert code == 2 and f"{report} (--json) exists: replace it with --overwrite" in output
    assert not (tmp_path / "new.onnx").exists()
    code, output = export_cli(ckpt, "-o", tmp_path / "new.onnx", "--json", tmp_path / "new.onnx")
    assert code == 2 and "named by both -o and --json" in output
    os.mkfifo(tmp_path / "fifo.json")
    code, output = export_cli(ckpt, "-o", tmp_path / "new.onnx", "--json", tmp_path / "fifo.json")
    assert code == 2 and "(--json) exists and is not a regular file" in output
    assert onnx_path.read_bytes() == b"a user's file" and report.read_text() == "a user's notes"
    with output_lock(tmp_path / "new.onnx"):  # another run is writing it
        code, output = export_cli(ckpt, "-o", tmp_path / "new.onnx")
    assert code == 2 and "another m3trt run is writing it" in output

    code, output = export_cli(ckpt, "-o", onnx_path, "--json", report, "--overwrite")
    assert code == 0, output
    assert "(0 merged into the head GEMM)" in output  # no quantity head: nothing to merge
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    data = json.loads(report.read_text())
    assert data["fused"]["batchnorms"] == 0 and data["bn_folded"] > 0
    assert data["gemms_merged"] == 0 and data["raw"]["nodes"] > data["fused"]["nodes"]
