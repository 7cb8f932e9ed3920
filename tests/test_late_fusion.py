"""The late fusion fitted on val (issue 15, m3trt/train/late_fusion.py): a learned tag lexicon,
unimodal regressions, weights fitted on held-out data, all folded into the graph's weights."""

import shutil

import onnx
import pytest
import torch

from m3trt.config import ModelConfig
from m3trt.errors import InputError
from m3trt.export.onnx_export import export_checkpoint
from m3trt.model import M3Net
from m3trt.train import late_fusion
from m3trt.train.checkpoint import load_checkpoint
from m3trt.train.loop import apply_late_fusion


def test_lexicon_links_a_word_to_the_one_label_it_names():
    gen = torch.Generator().manual_seed(0)
    n = 200
    labels = (torch.rand(n, 3, generator=gen) < 0.3).double()
    tags = torch.zeros(n, 3, dtype=torch.float64)
    tags[:, 0] = labels[:, 1] * (torch.rand(n, generator=gen) < 0.6)  # names label 1
    tags[:, 1] = (torch.rand(n, generator=gen) < 0.3).double()  # a camera word: names nothing
    tags[:3, 2] = 1.0  # a rare word on three images
    labels[:3, 2] = 1.0  # that always comes with label 2: a synonym seen three times
    lexicon = late_fusion.fit_lexicon(tags, labels)
    assert lexicon.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_the_fitted_fusion_is_exactly_what_the_folded_weights_compute():
    torch.manual_seed(0)
    config = ModelConfig(
        num_labels=4,
        num_tags=5,
        backbone="resnet18",
        tag_hidden=8,
        visual_dim=16,
        quantity_hidden=8,
        k_max=3,
        tag_skip=True,
    )
    model = M3Net(config).eval()
    torch.nn.init.normal_(model.tag_skip.weight)
    images = torch.randn(6, 3, 32, 32)
    tags = (torch.rand(6, 5) < 0.4).float()
    with torch.no_grad():
        joint, seen = model.encode(images, tags)
        z = model.logits(joint, seen).double()
        q = model.quantity(joint)
    visual, x = joint[:, :16].double(), tags.double()
    wt, bt = torch.randn(5, 4).double(), torch.randn(4).double()
    wv, bv = torch.randn(16, 4).double(), torch.randn(4).double()
    lexicon = torch.eye(5, 4).double()
    prior = torch.randn(4).double()
    s = torch.tensor([0.3, 0.7, 0.4, 2.5, -0.2]).double()
    expected = late_fusion._fuse(
        [x @ wt + bt - prior, visual @ wv + bv - prior, z, x @ lexicon], prior, s
    )
    late_fusion._fold(model, s, wt, bt, wv, bv, lexicon, prior)
    with torch.no_grad():
        logits, q_after = model(images, tags)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q_after, q)  # the quantity head is untouched


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_checkpoint, tiny_data):
    """A copy of the tiny checkpoint given the late fusion, as `m3trt train` ends by default."""
    out = tmp_path_factory.mktemp("fused") / "ckpt"
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(tiny_checkpoint[0] / name, out / name)
    apply_late_fusion(out, tiny_data)
    return out


def test_the_fusion_only_improves_val_and_exports_with_parity(fused, tiny_data, tmp_path):
    _, config = load_checkpoint(fused)
    fitted = config.training["late_fusion"]
    assert fitted["val_bce_after"] <= fitted["val_bce_before"] + 1e-9
    assert fitted["tags_l2"] in late_fusion.TAG_L2_GRID
    assert fitted["visual_l2"] in late_fusion.VISUAL_L2_GRID
    assert all(label in config.label_names for label in fitted["lexicon"].values())
    assert 0 < config.model.decision_threshold < 1
    with pytest.raises(InputError, match="already has the late fusion"):
        apply_late_fusion(fused, tiny_data)
    # the same graph contract, and export's parity check against PyTorch passes
    export_checkpoint(fused, tmp_path / "model.onnx", parity_images=2)
    graph = onnx.load(tmp_path / "model.onnx")
    assert [o.name for o in graph.graph.output] == ["scores", "quantity", "k", "topk"]


def test_without_the_tag_path_nothing_is_fitted():
    config = ModelConfig(num_labels=3, num_tags=4, backbone="resnet18", tag_skip=False)
    assert late_fusion.fit_late_fusion(M3Net(config), None, [], []) is None
