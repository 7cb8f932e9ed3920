"""Shared fixtures: a tiny deterministic synthetic dataset and a model trained on it once."""

from pathlib import Path

import pytest

from m3trt.data.synth import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, n=200, size=64, seed=3)
    return out / "manifest.jsonl"


@pytest.fixture(scope="session")
def tiny_options():
    from m3trt.train.loop import TrainOptions

    return TrainOptions(
        backbone="resnet18",
        image_size=64,
        epochs=8,
        batch_size=16,
        lr=1e-3,
        seed=0,
        tag_hidden=64,
        visual_dim=64,
        tag_min_count=1,
        threads=2,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_data, tiny_options):
    from m3trt.train.loop import train

    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    result = train(tiny_data, out, tiny_options)
    return out, result
