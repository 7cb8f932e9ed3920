"""No output may be an input of the same run, or sit inside one, even with --overwrite: the
bundle, checkpoint or manifest a command reads stays whole."""

import shutil

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.outputs import overlap


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


@pytest.fixture
def bundle(tmp_path, int8_bundle):
    copy = tmp_path / "b.m3"
    shutil.copytree(int8_bundle, copy)
    return copy


def test_overlap_resolves_links(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    assert overlap(tmp_path / "alias", tmp_path / "in") == "is"
    assert overlap(tmp_path / "alias" / "x.json", tmp_path / "in") == "is inside"
    assert overlap(tmp_path, tmp_path / "alias") == "contains"
    assert overlap(tmp_path / "in2", tmp_path / "in") is None  # a prefix, not a parent


def test_export_triton_never_replaces_or_writes_into_its_bundle(tmp_path, bundle):
    before = sorted(p.name for p in bundle.iterdir())
    for repo, name in ((tmp_path, "b.m3"), (bundle, "m"), (tmp_path.parent, tmp_path.name)):
        code, output = run("export-triton", bundle, repo, "--name", name, "--overwrite")
        assert code == 2, output
        assert "the Triton model folder" in output and "choose another REPO_DIR or --name" in output
    assert sorted(p.name for p in bundle.iterdir()) == before
    load_bundle(bundle, verify=True)  # whole


def test_eval_json_onto_its_manifest_is_refused(tmp_path, bundle, tiny_data):
    manifest = tmp_path / "m.jsonl"
    shutil.copyfile(tiny_data, manifest)
    before = manifest.read_bytes()
    code, output = run("eval", bundle, manifest, "--json", manifest, "--overwrite")
    assert code == 2 and f"{manifest}: --json is an input of this run" in output, output
    assert manifest.read_bytes() == before
    # the labels.txt read beside it too: once replaced, the dataset could not be read
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\n")
    code, output = run("eval", bundle, manifest, "--json", labels, "--overwrite")
    assert code == 2 and f"{labels}: --json is an input of this run" in output, output
    assert labels.read_text() == "circle\n"


def test_bench_json_inside_its_bundle_is_refused(bundle):
    target = bundle / "bundle.json"
    before = target.read_bytes()
    code, output = run("bench", bundle, "--json", target, "--overwrite")
    assert code == 2 and "--json is inside an input of this run" in output, output
    assert target.read_bytes() == before


def test_export_into_its_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    config = ckpt / "config.json"
    before = config.read_bytes()
    code, output = run("export", ckpt, "-o", config, "--overwrite")
    assert code == 2 and "-o is an input of this run" in output, output
    assert config.read_bytes() == before


def test_export_beside_its_checkpoint_files_is_fine(tmp_path, tiny_checkpoint):
    """An output may sit in the checkpoint folder; only the checkpoint's own entries are kept."""
    from m3trt.cli import CHECKPOINT_ENTRIES
    from m3trt.train.checkpoint import CONFIG_FILE, LAST_DIR, WEIGHTS_FILE

    assert CHECKPOINT_ENTRIES == (CONFIG_FILE, WEIGHTS_FILE, LAST_DIR)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    code, output = run("export", ckpt, "-o", ckpt / "model.onnx")
    assert code == 0, output
    assert (ckpt / "model.onnx").is_file()


def test_infer_never_writes_into_its_bundle_or_over_its_tag_manifest(
    tmp_path, bundle, test_images, tiny_data
):
    """-o BUNDLE/model.onnx --overwrite turned the model into JSONL, --report BUNDLE/bundle.json
    into HTML, and -o onto --tags-manifest replaced the manifest with results; all exit 0."""
    tags = tmp_path / "tags.jsonl"
    shutil.copyfile(tiny_data, tags)
    model = bundle / load_bundle(bundle).engine_artifact.file
    before = {p: p.read_bytes() for p in (model, bundle / "bundle.json", tags)}
    infer = ["infer", bundle, test_images, "--overwrite"]
    for extra, says in (
        (["-o", model], "-o is inside an input of this run"),
        (["-o", bundle / "new.jsonl"], "-o is inside an input of this run"),
        (["-o", tmp_path / "r.jsonl", "--report", bundle / "bundle.json"], "--report is inside"),
        (["-o", tags, "--tags", "manifest", "--tags-manifest", tags], "-o is an input"),
    ):
        code, output = run(*infer, *extra)
        assert code == 2 and says in output, output
    assert {p: p.read_bytes() for p in before} == before
    assert not (bundle / "new.jsonl").exists()
    load_bundle(bundle, verify=True)
