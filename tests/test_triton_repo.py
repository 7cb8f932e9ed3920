"""`m3trt export-triton`: the written repository parses into Triton's own ModelConfig message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.runtime.bundle import load_bundle, sha256_file
from m3trt.runtime.bundle_writer import write_bundle

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def export(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["export-triton", *map(str, args)])
    return result.exit_code, result.output


def parse(folder: Path):
    text = (folder / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def dims(tensor) -> list[int]:
    return list(tensor.dims)


def check_signature(config, info) -> None:
    t = model_config_pb2
    inputs = {i.name: i for i in config.input}
    assert inputs["image"].data_type == t.TYPE_UINT8
    assert dims(inputs["image"]) == [info.image_size, info.image_size, 3]
    assert inputs["tags"].data_type == t.TYPE_FP32 and dims(inputs["tags"]) == [info.num_tags]
    outputs = {o.name: o for o in config.output}
    assert set(outputs) == {"scores", "quantity", "k", "topk"}
    assert outputs["scores"].data_type == t.TYPE_FP32
    assert dims(outputs["scores"]) == [info.num_labels]
    assert outputs["scores"].label_filename == "labels.txt"
    assert outputs["topk"].data_type == t.TYPE_INT32 and dims(outputs["topk"]) == [info.k_max]
    for name, dtype in (("quantity", t.TYPE_FP32), ("k", t.TYPE_INT32)):
        # a per-image scalar: [1] in Triton's batched view, reshaped to the graph's []
        assert outputs[name].data_type == dtype and dims(outputs[name]) == [1]
        assert outputs[name].HasField("reshape") and list(outputs[name].reshape.shape) == []


def test_cpu_bundle_repository(tmp_path, int8_bundle):
    bundle = load_bundle(int8_bundle)
    code, out = export(int8_bundle, tmp_path / "repo")
    assert code == 0, out
    assert "checked against Triton's ModelConfig" in out
    folder = tmp_path / "repo" / "tiny"
    config = parse(folder)
    t = model_config_pb2
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.default_model_filename == "model.onnx"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (t.ModelInstanceGroup.KIND_CPU, 1)
    ]
    check_signature(config, bundle.model)
    # The portable Q/DQ graph: the engine artifact is ONNX Runtime's offline-optimized graph,
    # tied to the ONNX Runtime release that wrote it.
    assert bundle.artifacts["engine"].format == "onnx-ort-cpu"
    assert sha256_file(folder / "1" / "model.onnx") == bundle.artifacts["graph"].sha256
    lines = (folder / "labels.txt").read_text().splitlines()
    assert lines == bundle.model.label_names
    # An existing entry is kept unless --overwrite; options reach the config.
    code, out = export(int8_bundle, tmp_path / "repo")
    assert code == 2 and "--overwrite" in out
    args = ["--overwrite", "--max-batch-size", "8", "--instances", "2", "--name", "tiny"]
    code, out = export(int8_bundle, tmp_path / "repo", *args, "--max-queue-delay-us", "500")
    assert code == 0, out
    config = parse(folder)
    assert config.max_batch_size == 8 and config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    # no leftovers; the lock (a file, which Triton passes over) stays, as every m3trt lock does
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [".tiny.lock", "tiny"]


def test_gpu_instances_of_a_cpu_int8_bundle_get_the_fp32_graph(tmp_path, int8_bundle):
    bundle = load_bundle(int8_bundle)
    code, out = export(int8_bundle, tmp_path / "repo", "--instance-kind", "gpu")
    assert code == 0, out
    folder = tmp_path / "repo" / "tiny"
    config = parse(folder)
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert sha256_file(folder / "1" / "model.onnx") == bundle.artifacts["reference"].sha256


@pytest.fixture
def tensorrt_bundle(tmp_path, int8_bundle):
    """A TensorRT-shaped bundle: a stand-in plan file (no TensorRT here) beside its ONNX graph."""
    source = load_bundle(int8_bundle)
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"not a real plan: export-triton only copies it")
    graph = tmp_path / "model.fp16.onnx"  # the graph a plan is built from has the same I/O
    shutil.copyfile(source.artifact_path("reference"), graph)
    profiles = [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 8, "max": 8},
                {"min": 9, "opt": 32, "max": 32}]  # fmt: skip
    return write_bundle(
        tmp_path / "trt.m3",
        model=source.model,
        target="tensorrt",
        precision="fp16",
        files={
            "reference": (source.artifact_path("reference"), "onnx", "fp32"),
            "graph": (graph, "onnx", "fp16"),
            "engine": (plan, "tensorrt-plan", "fp16"),
        },
        provenance={"tensorrt_plan": {"profiles": profiles}},
    )


def test_tensorrt_bundle_repository(tmp_path, tensorrt_bundle):
    code, out = export(tensorrt_bundle.path, tmp_path / "repo")
    assert code == 0, out
    folder = tmp_path / "repo" / "trt"
    config = parse(folder)
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.max_batch_size == 32  # the largest profile
    kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [g.kind for g in config.instance_group] == [kind]
    check_signature(config, tensorrt_bundle.model)
    assert (folder / "1" / "model.plan").read_bytes() == (tmp_path / "engine.plan").read_bytes()
    code, out = export(tensorrt_bundle.path, tmp_path / "r2", "--max-batch-size", "64")
    assert code == 2 and "above the plan's max batch 32" in out
    code, out = export(tensorrt_bundle.path, tmp_path / "r2", "--instance-kind", "cpu")
    assert code == 2 and "GPUs only" in out


def test_tampered_bundle_is_refused(tmp_path, int8_bundle):
    copy = tmp_path / "copy.m3"
    shutil.copytree(int8_bundle, copy)
    engine = copy / load_bundle(copy).artifacts["engine"].file
    data = bytearray(engine.read_bytes())
    data[-1] ^= 1
    engine.write_bytes(bytes(data))
    code, out = export(copy, tmp_path / "repo")
    assert code == 2 and engine.name in out and "sha256" in out, out
    assert not (tmp_path / "repo" / "copy").exists()


def test_an_entry_published_meanwhile_is_kept(monkeypatch, tmp_path, int8_bundle):
    """Another run published REPO/NAME after this one's check: it is not replaced."""
    folder = tmp_path / "repo" / "tiny"
    real_copy = shutil.copyfile

    def copy_while_another_run_publishes(src, dst):
        folder.mkdir(parents=True)
        (folder / "config.pbtxt").write_text("another run's entry")
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", copy_while_another_run_publishes)
    code, out = export(int8_bundle, tmp_path / "repo")
    assert code == 2 and f"{folder} exists; pass --overwrite" in out, out
    assert (folder / "config.pbtxt").read_text() == "another run's entry"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [".tiny.lock", "tiny"]


def test_one_export_per_entry_at_once(tmp_path, int8_bundle):
    """A second export of the same REPO/NAME while one runs is refused before it writes; a run
    refused for an existing entry leaves no lock behind."""
    from m3trt.runtime.outputs import output_lock

    repo = tmp_path / "repo"
    code, out = export(int8_bundle, repo)
    assert code == 0, out
    (repo / ".tiny.lock").unlink()
    code, out = export(int8_bundle, repo)
    assert code == 2 and "exists; pass --overwrite" in out, out
    assert not (repo / ".tiny.lock").exists()
    before = (repo / "tiny" / "config.pbtxt").read_bytes()
    with output_lock(repo / "tiny"):
        code, out = export(int8_bundle, repo, "--overwrite", "--instances", "3")
    assert code == 2 and "another m3trt run is writing it" in out and "--name" in out, out
    assert (repo / "tiny" / "config.pbtxt").read_bytes() == before
    assert export(int8_bundle, repo, "--name", "other")[0] == 0  # other entries are free


def test_a_killed_exports_hidden_folders_are_cleared(tmp_path, int8_bundle):
    """Triton takes every folder in its repository for a model, hidden ones too, and by default
    stops at start when one fails to load: a killed export's staging folder must not stay."""
    repo = tmp_path / "repo"
    staging = repo / ".tiny.tmp-4242-0123abcd"
    (staging / "1").mkdir(parents=True)
    others = [repo / ".tiny2.tmp-4242-0123abcd", repo / ".tiny.tmp-x", repo / "keep"]
    for other in others:
        other.mkdir()
    (repo / ".tiny.old-4243-89abcdef").symlink_to(repo / "keep")  # a link is never followed
    code, out = export(int8_bundle, repo)
    assert code == 0, out
    assert not staging.exists()
    assert all(other.is_dir() for other in others)
    assert (repo / ".tiny.old-4243-89abcdef").is_symlink()


def test_an_entry_a_killed_export_moved_aside_is_put_back(tmp_path, int8_bundle):
    """Killed between moving the old entry aside and publishing the new one: the next export
    puts it back, and replaces it only with --overwrite."""
    repo = tmp_path / "repo"
    aside = repo / ".tiny.old-4242-0123abcd"
    aside.mkdir(parents=True)
    (aside / "config.pbtxt").write_text("the previous entry")
    code, out = export(int8_bundle, repo)
    assert code == 2 and "exists; pass --overwrite" in out, out
    assert (repo / "tiny" / "config.pbtxt").read_text() == "the previous entry"
    assert not aside.exists()
    code, out = export(int8_bundle, repo, "--overwrite")
    assert code == 0, out
    assert parse(repo / "tiny").name == "tiny"
    assert sorted(p.name for p in repo.iterdir()) == [".tiny.lock", "tiny"]


def test_a_name_of_the_cut_length_leaves_longer_names_leftovers_alone(tmp_path, int8_bundle):
    """temp_sibling keeps 100 characters: NAME of exactly 100 shares them with NAME + more."""
    name = "m" * 100
    repo = tmp_path / "repo"
    other = repo / f".{name}.tmp-4242-0123abcd"  # could be the staging of name + "x", running
    other.mkdir(parents=True)
    code, out = export(int8_bundle, repo, "--name", name)
    assert code == 0, out
    assert other.is_dir()


@pytest.mark.parametrize("name, says", [("", "--name is empty"), (".hidden", "starting with")])
def test_names_that_are_no_model_name_are_refused(tmp_path, int8_bundle, name, says):
    """--name "" took the bundle's name silently; '.hidden' was told only the allowed letters."""
    code, output = export(int8_bundle, tmp_path / "repo", "--name", name)
    assert code == 2 and says in output, output
    assert not (tmp_path / "repo" / "model").exists()
