"""Export and calibration against edited checkpoints and broken data: one clear line each."""

import json

import numpy as np
import pytest
import torch

from m3trt.calibration.data import load_calibration_images, load_image_set
from m3trt.config import CheckpointConfig, ModelConfig, Preprocessing
from m3trt.errors import InputError
from m3trt.export import parity
from m3trt.export.onnx_export import export_checkpoint
from tests.manifests import junk_manifest


def test_opsets_the_exporter_cannot_write_are_refused(tiny_checkpoint, tmp_path):
    """--opset 17 printed a version converter's traceback, wrote 18 and reported 17."""
    with pytest.raises(InputError, match="opset 17 cannot be exported: .* 18 to 23"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()


class _Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, images, tags=None):
        self.sizes.append(len(images))
        n = len(images)
        return (images.float().mean((1, 2, 3))[:, None], torch.zeros(n), torch.ones(n))


def test_parity_runs_in_bounded_batches(monkeypatch):
    """At a large image size the 14 parity images ran as one torch batch (7 GB, MemoryError)."""
    config = CheckpointConfig(
        ModelConfig(num_labels=3, num_tags=0, backbone="resnet18"),
        Preprocessing(image_size=32),
        ["a", "b", "c"],
        [],
    )
    monkeypatch.setattr(parity, "PARITY_BATCH_PIXELS", 3 * 32 * 32)
    images = np.arange(14 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8)
    images = images.reshape(14, 32, 32, 3)
    graph = _Recorder()
    out = parity.run_torch(graph, config, images, np.zeros((14, 0), np.float32))
    assert max(graph.sizes) == 3 and sum(graph.sizes) == 14
    whole = _Recorder()(torch.from_numpy(images))
    np.testing.assert_allclose(out[0], whole[0].numpy())


# --------------------------------------------------------------------------------- calibration
def _manifest(tmp_path, tiny_data, split_of_junk=None, drop_splits=False):
    def breaks(_i, row):
        return split_of_junk is not None and row.get("split") == split_of_junk

    return junk_manifest(tmp_path, tiny_data, breaks, drop_splits)


def _kw(tiny_checkpoint):
    config = json.loads((tiny_checkpoint[0] / "config.json").read_text())
    return dict(image_size=32, label_names=config["label_names"], tag_vocab=config["tag_vocab"])


def test_calibration_refuses_a_train_split_that_does_not_decode(
    tmp_path, tiny_data, tiny_checkpoint
):
    """It fell back silently to all records (val and test: the images meant to check it)."""
    manifest = _manifest(tmp_path, tiny_data, split_of_junk="train")
    with pytest.raises(InputError, match=r"none of the \d+ train-split images .* not an image"):
        load_calibration_images(manifest, count=64, **_kw(tiny_checkpoint))


def test_calibration_says_which_splits_it_used(tmp_path, tiny_data, tiny_checkpoint):
    kw = _kw(tiny_checkpoint)
    assert load_calibration_images(tiny_data, count=8, **kw).splits == ("train",)
    no_splits = _manifest(tmp_path, tiny_data, drop_splits=True)
    assert load_calibration_images(no_splits, count=8, **kw).splits is None


def test_every_failure_is_a_path_and_its_reason(tmp_path, tiny_data, tiny_checkpoint):
    """Decode failures were bare paths: the CLI's failed[0][1] printed 'first: j'."""
    manifest = _manifest(tmp_path, tiny_data, split_of_junk="val")
    data = load_image_set(manifest, splits=["val"], **_kw(tiny_checkpoint))
    assert data.failed and len(data) == 0
    for path, reason in data.failed:
        assert reason.startswith(path) and "not an image" in reason
