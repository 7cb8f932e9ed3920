"""Files m3trt reads besides images and manifests (COCO and NUS-WIDE annotations, baselines,
checkpoint configs, training state, PEM keys): a FIFO, a device or a huge file is one line of
error, never a hang or a read without end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.data.importers.nuswide import import_nuswide
from m3trt.data.safe_open import read_json
from m3trt.errors import InputError
from tests.test_importers import make_nuswide


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def hostile(path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind, says", [("fifo", "a FIFO"), ("zero", "a character device")])
def test_coco_annotations(tmp_path, kind, says):
    instances = hostile(tmp_path / "instances.json", kind)
    code, output = run("data", "import-coco", instances, "-o", tmp_path / "out")
    assert code == 2 and f"{instances}: instances JSON is {says}" in output, output


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_eval_baseline(tmp_path, kind, int8_bundle, tiny_data):
    baseline = hostile(tmp_path / "b.json", kind)
    code, output = run("eval", int8_bundle, tiny_data, "--baseline", baseline)
    assert code == 2 and f"{baseline}: baseline is a" in output, output


def test_checkpoint_config_and_training_state(tmp_path, tiny_checkpoint, tiny_data):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    (ckpt / "config.json").unlink()
    hostile(ckpt / "config.json", "fifo")
    code, output = run("export", ckpt, "-o", tmp_path / "m.onnx")
    assert code == 2 and "config.json: checkpoint config is a FIFO" in output, output

    resumable = tmp_path / "run"
    (resumable / "last").mkdir(parents=True)
    hostile(resumable / "last" / "trainer.json", "zero")
    code, output = run("train", tiny_data, "-o", resumable, "--resume", "--epochs", "1")
    assert code == 2 and "trainer.json: training state is a character device" in output, output


def test_json_nested_too_deeply_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(InputError, match="baseline is not valid JSON"):
        read_json(deep, "baseline", 1 << 20)


def test_nuswide_tag_matrix_line_without_end(tmp_path):
    nus = make_nuswide(tmp_path / "NUS-WIDE")
    matrix = nus / "NUS_WID_Tags" / "AllTags1k.txt"
    with open(matrix, "ab") as f:
        f.write(b"0 " * 100_000)  # one line far wider than the tag list
    with pytest.raises(InputError, match=r"AllTags1k\.txt:\d+: a line longer than"):
        import_nuswide(nus, tmp_path / "out")


def test_nuswide_layout_file_that_is_a_fifo(tmp_path):
    nus = make_nuswide(tmp_path / "NUS-WIDE")
    matrix = nus / "NUS_WID_Tags" / "AllTags1k.txt"
    matrix.unlink()
    os.mkfifo(matrix)
    with pytest.raises(InputError, match="AllTags1k.txt: AllTags1k.txt is not a regular file"):
        import_nuswide(nus, tmp_path / "out")


def test_a_huge_key_is_refused_before_it_is_read(tmp_path):
    pytest.importorskip("model_signing")
    from m3trt.runtime.signing import MAX_KEY_BYTES, verify_bundle

    key = tmp_path / "pub.pem"
    with open(key, "wb") as f:
        f.truncate(MAX_KEY_BYTES + 1)  # sparse: no disk, no memory
    bundle = tmp_path / "x.m3"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({}))
    (bundle / "bundle.sig").write_text("{}")
    with pytest.raises(InputError, match="verification key is .* bytes; the limit"):
        verify_bundle(bundle, key)


def test_a_baseline_figure_of_the_wrong_type_is_one_line_before_the_run(tmp_path):
    """Was an AttributeError (exit 1) after the whole eval had run; then it was skipped, which
    let a baseline of such figures gate nothing. A mode that is no object is passed over."""
    from m3trt.bench.regression import figures, load_baseline

    path = tmp_path / "b.json"
    baseline = {"n_images": 30, "mAP": 0.5, "modes": {"x": 1, "y": {"CF1": "high"}}}
    path.write_text(json.dumps(baseline))
    with pytest.raises(InputError, match="the baseline's y CF1 is 'high', not a figure from 0"):
        load_baseline(path)
    del baseline["modes"]["y"]
    path.write_text(json.dumps(baseline))
    assert dict(figures(load_baseline(path))) == {"mAP": 0.5}


@pytest.mark.parametrize("content", [{"modes": "predicted_k"}, [1, 2], {"mAP": True}])
def test_a_baseline_without_figures_is_one_line_before_the_run(tmp_path, content):
    from m3trt.bench.regression import load_baseline

    path = tmp_path / "b.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match="not a baseline written by m3trt eval --json"):
        load_baseline(path)


@pytest.mark.parametrize(
    "content, says",
    [
        ({"ratios": {"1": "x"}, "reference": {"name": "onnx-fp32"}}, "not a baseline"),
        ({"ratios": {"1": 2.0}, "reference": "onnx-fp32"}, "not a baseline"),  # AttributeError
        ({"ratios": {"one": 2.0}, "reference": {"name": "onnx-fp32"}}, "not a baseline"),
        ({"batches": []}, "the baseline has no ratios"),
    ],
)
def test_a_malformed_speed_baseline_is_one_line(tmp_path, content, says):
    from m3trt.bench.regression import load_baseline

    path = tmp_path / "b.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match=says):
        load_baseline(path, "speed")


def test_a_port_in_use_is_one_line():
    pytest.importorskip("starlette")
    from m3trt.errors import M3Error
    from m3trt.serve.app import bind

    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(M3Error, match="Address already in use; choose another --port"):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_export_triton_numbers_out_of_range_are_usage_errors(int8_bundle, tmp_path):
    code, output = run("export-triton", int8_bundle, tmp_path, "--max-batch-size", 10**20)
    assert code == 2 and "is not in the range" in output and not (tmp_path / "x").exists()


def test_a_json_integer_no_float_holds_is_a_protocol_error():
    """A 400-digit integer in 'data' was an OverflowError: a 500 and a traceback in the log."""
    import numpy as np

    from m3trt.serve.protocol import ProtocolError, _from_json_data

    with pytest.raises(ProtocolError, match="not a finite number"):
        _from_json_data([10**400], [1], np.dtype(np.float32), "tags")


def test_export_triton_repo_that_is_not_a_folder(int8_bundle, tmp_path):
    repo = tmp_path / "repo"
    repo.symlink_to("/dev/null")
    code, output = run("export-triton", int8_bundle, repo)
    assert code == 2 and "REPO_DIR exists and is not a folder" in output, output


def test_a_tags_manifest_line_without_end_is_refused_line_by_line(tmp_path):
    """The manifest may be gigabytes; one row may not (it was read whole, then split: a 1 GB
    line took 2.2 GB of memory before its error)."""
    from m3trt.errors import ManifestError
    from m3trt.runtime.tag_sources import MAX_TAGS_LINE_BYTES, ManifestTags

    manifest = tmp_path / "tags.jsonl"
    with open(manifest, "w") as f:
        f.write('{"path": "a.jpg", "tags": ["x"]}\n')
        f.write('{"path": "b.jpg", "tags": [' + '"t", ' * (MAX_TAGS_LINE_BYTES // 5) + '"t"]}\n')
    with pytest.raises(ManifestError, match=r"tags\.jsonl:2: a line longer than"):
        ManifestTags.load(manifest)
    manifest.write_bytes(b'\xef\xbb\xbf{"path": "a.jpg", "tags": ["x"]}\n{"path": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"tags\.jsonl:2: not UTF-8 text"):
        ManifestTags.load(manifest)


def test_a_bundle_json_that_is_a_fifo_is_named_as_one(tmp_path, int8_bundle):
    """It was reported as missing ("no bundle.json")."""
    bundle = tmp_path / "b.m3"
    shutil.copytree(int8_bundle, bundle)
    (bundle / "bundle.json").unlink()
    os.mkfifo(bundle / "bundle.json")
    code, output = run("inspect", bundle)
    assert code == 2 and "bundle.json: bundle manifest is a FIFO" in output, output


def test_backbone_weights_holding_pickled_objects_are_one_line(tmp_path):
    import fractions

    import torch

    from m3trt.model.resnet import ResNet, load_backbone_weights

    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": fractions.Fraction(1, 3)}, weights)
    with pytest.raises(InputError) as caught:
        load_backbone_weights(ResNet("resnet18"), weights)
    message = str(caught.value)
    assert (
        message.startswith(f"{weights}: not a loadable torch weight file") and "\n" not in message
    )


@pytest.mark.parametrize(
    "command",
    [
        ["data", "import-coco", "{path}", "-o", "{out}"],
        ["data", "import-nuswide", "{path}", "-o", "{out}"],
        ["build", "{path}", "-o", "{out}"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_looping_link_is_not_called_missing(tmp_path, command):
    """click says "does not exist" of any path it cannot stat; a loop gets its own reason."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = [a.format(path=loop, out=tmp_path / "out") for a in command]
    code, output = run(*args)
    assert code == 2 and "Too many levels of symbolic links" in output, output
    assert "does not exist" not in output
    code, output = run(*[a.format(path=tmp_path / "gone", out=tmp_path / "out") for a in command])
    assert code == 2 and "does not exist" in output, output


def _tampered_checkpoint(tmp_path: Path, edit_config=None, edit_weights=None) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from tests.test_export import make_checkpoint

    folder = make_checkpoint(tmp_path / "ckpt")
    if edit_config is not None:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    if edit_weights is not None:
        state = load_file(folder / "model.safetensors")
        edit_weights(state, torch)
        save_file(state, folder / "model.safetensors")
    return folder


WEIGHTS = {
    "NaN": (lambda s, t: s["visual.2.weight"].fill_(float("nan")), "holds NaN or infinite"),
    "shape": (lambda s, t: s.__setitem__("visual.2.weight", t.zeros(3, 3)), "has shape [3, 3]"),
    "bool": (
        lambda s, t: s.__setitem__("visual.2.weight", s["visual.2.weight"] > 0),
        "is torch.bool",
    ),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_broken_weights_are_one_line_naming_the_tensor(tmp_path, case):
    """NaN weights exported with "parity ok" into a bundle whose rows were not JSON; a wrong shape
    was torch's several-line RuntimeError (exit 1); booleans were cast to floats unasked."""
    edit, says = WEIGHTS[case]
    folder = _tampered_checkpoint(tmp_path, edit_weights=edit)
    code, output = run("export", folder, "-o", tmp_path / "m.onnx")
    assert code == 2 and says in output and "visual.2.weight" in output, output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


CONFIGS = {
    "huge image": (lambda c: c["preprocessing"].update(image_size=100_000), "image_size"),
    "no image": (lambda c: c["preprocessing"].update(image_size=0), "image_size"),
    "zero std": (lambda c: c["preprocessing"].update(std=[0, 0, 0]), "std must be positive"),
    "two means": (lambda c: c["preprocessing"].update(mean=[0.5, 0.5]), "mean must be 3"),
    "text mean": (lambda c: c["preprocessing"].update(mean="abc"), "mean must be 3"),
    "huge hidden": (lambda c: c["model"].update(tag_hidden=10**9), "model.tag_hidden"),
    "negative hidden": (lambda c: c["model"].update(quantity_hidden=-1), "model.quantity_hidden"),
    "listed backbone": (lambda c: c["model"].update(backbone=["resnet18"]), "unknown backbone"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_config_out_of_range_is_one_line_naming_the_file(tmp_path, case):
    """Sizes in config.json were taken as they were: 60 GB asked of the allocator, exit 1."""
    edit, says = CONFIGS[case]
    folder = _tampered_checkpoint(tmp_path, edit_config=edit)
    code, output = run("export", folder, "-o", tmp_path / "m.onnx")
    assert code == 2 and says in output and "config.json" in output, output
    assert len(output.strip().splitlines()) == 1


# --- .onnx files given to build and calibrate --------------------------------------------------


def _external(tiny_onnx: Path, folder: Path, location: str = "model.onnx.data") -> Path:
    """The tiny graph with its weights in an external data file at ``location``."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(tiny_onnx))
    out = folder / "model.onnx"
    onnx.save_model(
        model, str(out), save_as_external_data=True, location=location, size_threshold=1024
    )
    return out


def test_an_onnx_source_with_external_data_builds_and_keys_its_calibration(
    tmp_path, tiny_onnx, tiny_data
):
    """build copied only the .onnx (exit 1: external data not found); calibrate's cache key
    missed weights changed in the external file (old ranges kept, even with --overwrite)."""
    import onnx

    source = _external(tiny_onnx, tmp_path / "ext")
    code, output = run("build", source, "-o", tmp_path / "b.m3", "--precision", "fp32",
                       "--target", "cpu", "--engine", "onnxruntime")  # fmt: skip
    assert code == 0, output
    reference = tmp_path / "b.m3" / "model.onnx"
    assert not [t for t in onnx.load(str(reference)).graph.initializer if t.data_location]
    ranges = tmp_path / "c.json"
    calibrate = ["calibrate", source, "--data", tiny_data, "-o", ranges, "--count", "40"]
    assert run(*calibrate)[0] == 0
    before = ranges.read_bytes()
    data = source.with_name("model.onnx.data")
    weights = bytearray(data.read_bytes())
    weights[:4096] = bytes(4096)  # other weights, the same .onnx file
    data.write_bytes(bytes(weights))
    code, output = run(*calibrate, "--overwrite")
    assert code == 0 and "ranges written" in output and ranges.read_bytes() != before, output


def _graph_variant(tiny_onnx: Path, out: Path, change) -> Path:
    import onnx

    model = onnx.load(str(tiny_onnx))
    change(model, onnx)
    onnx.save_model(model, str(out))
    return out


def _float_image(model, onnx):
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _custom_op(model, onnx):
    model.graph.node.append(onnx.helper.make_node("Evil", ["image"], ["evil"], domain="com.evil"))


def _subgraph(model, onnx):
    branch = onnx.helper.make_graph([], "branch", [], [])
    node = onnx.helper.make_node("If", ["cond"], [], then_branch=branch, else_branch=branch)
    model.graph.node.append(node)


def _both(source: Path, tmp_path: Path) -> list[list]:
    return [
        ["build", source, "-o", tmp_path / "b.m3", "--precision", "fp32"],
        ["calibrate", source, "--data", tmp_path, "-o", tmp_path / "c.json"],
    ]


SOURCES = {
    "float image": (_float_image, "input 'image' is FLOAT, its m3trt metadata implies UINT8"),
    "custom op": (_custom_op, "is a com.evil::Evil operator"),
    "subgraph": (_subgraph, "holds a subgraph"),
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_an_onnx_source_that_is_not_an_m3trt_export_is_one_line(tmp_path, tiny_onnx, case):
    """These reached ONNX Runtime and ended in its multi-line errors (exit 1), or, for nested
    If nodes, in gigabytes of memory."""
    change, says = SOURCES[case]
    source = _graph_variant(tiny_onnx, tmp_path / "m.onnx", change)
    for command in _both(source, tmp_path):
        code, output = run(*command)
        assert code == 2 and says in output and str(source) in output, output
        assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "b.m3").exists() and not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("where", ["outside", "fifo"])
def test_external_data_outside_the_folder_or_not_a_file_is_refused(tmp_path, tiny_onnx, where):
    if where == "outside":  # onnx will not write such a location: moved there by hand
        import onnx

        source = _external(tiny_onnx, tmp_path / "ext")
        source.with_name("model.onnx.data").rename(tmp_path / "outside.data")
        model = onnx.load(str(source), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../outside.data"
        source.write_bytes(model.SerializeToString())
        says = "lies outside the model's folder"
    else:
        source = _external(tiny_onnx, tmp_path / "ext")
        data = source.with_name("model.onnx.data")
        data.unlink()
        os.mkfifo(data)
        says = "is a FIFO (named pipe), not a regular file"
    for command in _both(source, tmp_path):
        code, output = run(*command)
        assert code == 2 and says in output, output


def test_a_fifo_onnx_source_is_named_as_one(tmp_path):
    source = hostile(tmp_path / "m.onnx", "fifo")
    for command in _both(source, tmp_path):
        code, output = run(*command)
        assert code == 2 and "is a FIFO (named pipe)" in output, output


def test_the_wire_scan_refuses_subgraphs_and_node_floods_without_parsing(tiny_onnx, monkeypatch):
    """20 nested If nodes in 190 MB took 3.5 GB just to parse; the scan reads none of it."""
    import onnx

    from m3trt.runtime.onnx_scan import NotProtobuf, flat_graph_problem

    data = tiny_onnx.read_bytes()
    nodes = len(onnx.load_model_from_string(data).graph.node)
    assert flat_graph_problem(data, nodes) is None
    assert "more than" in flat_graph_problem(data, nodes - 1)
    model = onnx.load_model_from_string(data)
    _subgraph(model, onnx)
    assert "holds a subgraph" in flat_graph_problem(model.SerializeToString(), 10**5)
    for broken in (data[: len(data) // 2], b"\xff" * 64, b"\x0b\x00"):  # cut, endless varint, group
        with pytest.raises(NotProtobuf):
            flat_graph_problem(broken, 10**5)


def test_a_bundles_engine_graph_as_a_source_points_to_the_plain_graph(tmp_path, int8_bundle):
    engine = int8_bundle / "model.int8.onnx"  # ONNX Runtime's fused graph (com.microsoft ops)
    code, output = run("build", engine, "-o", tmp_path / "b.m3", "--precision", "fp32")
    assert code == 2 and "build from the plain graph (a bundle's model.onnx)" in output, output


def test_a_config_error_names_the_file_once(tmp_path):
    from tests.test_export import make_checkpoint

    folder = make_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    code, output = run("export", folder, "-o", tmp_path / "m.onnx")
    assert code == 2 and output.count("config.json") == 1 and "newer than" in output, output


def test_a_fifo_among_calibration_images_fails_alone(tmp_path, tiny_data):
    """It hung `calibrate` for ever: Pillow's own open of a FIFO blocks."""
    from m3trt.calibration.data import load_image_set
    from m3trt.data.images import load_image
    from m3trt.errors import ImageDecodeError

    folder = tmp_path / "calib"
    folder.mkdir()
    images = sorted((tiny_data.parent / "images").iterdir())[:3]
    for image in images:
        shutil.copyfile(image, folder / image.name)
    fifo = hostile(folder / "b-fifo.jpg", "fifo")
    with pytest.raises(ImageDecodeError, match="is a FIFO"):
        load_image(fifo, 32)
    found = load_image_set(folder, image_size=32, label_names=["a"], tag_vocab=[])
    assert [p for p, _ in found.failed] == [str(fifo)] and len(found.images) == 3


def test_synth_overwrite_replaces_links_and_never_writes_through_them(tmp_path):
    """A dataset folder of links to originals: --overwrite wrote the new images and settings
    into the user's files (a symbolic link followed, a hard link's shared bytes truncated)."""
    out = tmp_path / "set"
    (out / "images").mkdir(parents=True)
    originals = {name: tmp_path / name for name in ("photo.jpg", "hard.jpg", "cfg.json")}
    for path in originals.values():
        path.write_text(f"the user's {path.name}")
    (out / "images" / "000000.jpg").symlink_to(originals["photo.jpg"])
    os.link(originals["hard.jpg"], out / "images" / "000001.jpg")
    (out / "synth.json").symlink_to(originals["cfg.json"])
    code, output = run("data", "synth", out, "--n", "20", "--size", "32", "--overwrite")
    assert code == 0, output
    for path in originals.values():
        assert path.read_text() == f"the user's {path.name}"
    assert not (out / "images" / "000000.jpg").is_symlink()
    assert (out / "images" / "000001.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def test_a_write_that_fails_names_its_file_in_one_line(tmp_path):
    """A file-size limit (or a full disk) ended export, train, eval --json and others in
    'error: OSError: [Errno 27] File too large (rerun with --verbose)', naming no file."""
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "from m3trt.cli import main; sys.exit(main())"
    )
    for args, names in (
        (["data", "synth", tmp_path / "s", "--n", "50", "--size", "256"], "000000.jpg: cannot"),
        (["data", "synth", tmp_path / "t", "--n", "400", "--size", "32"], "manifest.jsonl: cannot"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", script, "-q", *map(str, args)], capture_output=True, text=True
        )
        assert done.returncode == 1 and names in done.stderr, done.stderr
        assert "write (File too large)" in done.stderr and "Errno" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not [p for p in (tmp_path / args[2].name).rglob(".*tmp-*")]  # no temp left


def test_a_report_that_cannot_be_written_leaves_no_temp_files(tmp_path, int8_bundle, test_images):
    """On a full disk the report's hidden part files stayed (their close() flushed into the
    full disk and failed before they were removed), keeping the disk full for --resume."""
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 15, 1 << 15)); "
        "from m3trt.cli import main; sys.exit(main())"
    )
    out = tmp_path / "out"
    args = ["infer", int8_bundle, test_images, "-o", out / "r.jsonl", "--report", out / "r.html"]
    done = subprocess.run(
        [sys.executable, "-c", script, "-q", *map(str, args)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "r.html: cannot write" in done.stderr, done.stderr
    left = sorted(p.name for p in out.iterdir())
    ours = [".r.errors.jsonl.lock", ".r.html.lock", ".r.jsonl.lock", ".r.jsonl.run.json"]
    assert left == [*ours, "r.jsonl"], left


def test_a_torn_results_file_that_cannot_be_cut_is_one_line(
    tmp_path, int8_bundle, test_images, monkeypatch
):
    """A read-only results file with a torn tail ended --resume in a PermissionError (exit 1)."""
    import m3trt.runtime.results as results

    out = tmp_path / "r.jsonl"
    code, output = run("infer", int8_bundle, test_images, "-o", out)
    assert code == 0, output
    out.write_bytes(out.read_bytes() + b'{"path": "torn')

    def refuse(path, length):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results.os, "truncate", refuse)
    code, output = run("infer", int8_bundle, test_images, "-o", out, "--resume")
    assert code == 2 and "r.jsonl: cannot cut its torn last line (Permission denied)" in output


def test_a_resume_that_matches_nothing_is_refused(tmp_path, int8_bundle, test_images):
    """PATHS spelled otherwise than in the first run (a link, a relative path) skipped none of
    the rows already written and annotated every image again beside them, exit 0."""
    out = tmp_path / "r.jsonl"
    assert run("infer", int8_bundle, test_images, "-o", out)[0] == 0
    before = out.read_bytes()
    alias = tmp_path / "alias"
    alias.symlink_to(test_images)
    code, output = run("infer", int8_bundle, alias, "-o", out, "--resume")
    assert code == 2 and "none of the 24 files it holds is among these PATHS" in output
    assert out.read_bytes() == before
    assert run("infer", int8_bundle, test_images, "-o", out, "--resume")[0] == 0
    assert out.read_bytes() == before


def test_resume_with_another_bundle_is_refused(tmp_path, int8_bundle, test_images):
    """Rows carry no bundle: --resume with another one appended its rows to the first one's."""
    other = tmp_path / "other.m3"
    shutil.copytree(int8_bundle, other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["name"] = "other"
    (other / "bundle.json").write_text(json.dumps(manifest))
    out = tmp_path / "r.jsonl"
    assert run("infer", int8_bundle, test_images, "-o", out)[0] == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:5]))  # an interrupted run
    code, output = run("infer", other, test_images, "-o", out, "--resume")
    assert code == 2 and "its rows came from bundle " in output and "--overwrite" in output
    assert out.read_bytes() == b"".join(lines[:5])
    (tmp_path / "link.jsonl").symlink_to("r.jsonl")  # the record is the file's, not the name's
    code, output = run("infer", other, test_images, "-o", tmp_path / "link.jsonl", "--resume")
    assert code == 2 and "its rows came from bundle " in output
    code, output = run("infer", int8_bundle, test_images, "-o", out, "--resume")
    assert code == 0 and out.read_bytes().count(b"\n") == len(lines), output


def test_resume_with_other_row_options_is_refused(tmp_path, int8_bundle, test_images):
    """--top-k 1 resumed with --threshold 0 gave 1 label to some rows and all to the rest,
    silently: the run record notes the options that decide a row's labels."""
    out = tmp_path / "r.jsonl"
    assert run("infer", int8_bundle, test_images, "-o", out, "--top-k", "1")[0] == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:5]))  # an interrupted run
    for other in (["--threshold", "0"], ["--top-k", "2"], [], ["--top-k", "1", "--tags", "xmp"]):
        code, output = run("infer", int8_bundle, test_images, "-o", out, "--resume", *other)
        assert code == 2, output
        assert "its rows were written with --top-k 1, this run has " in output, output
        assert out.read_bytes() == b"".join(lines[:5])
    code, output = run("infer", int8_bundle, test_images, "-o", out, "--resume", "--top-k", "1")
    assert code == 0 and out.read_bytes().count(b"\n") == len(lines), output
    record = json.loads((tmp_path / ".r.jsonl.run.json").read_text())
    assert record["options"] == {"top_k": 1, "threshold": None, "tags": "none"}
    # a record written before options were noted: the resume goes on, and notes them
    del record["options"]
    (tmp_path / ".r.jsonl.run.json").write_text(json.dumps(record))
    out.write_bytes(b"".join(lines[:5]))
    code, output = run("infer", int8_bundle, test_images, "-o", out, "--resume", "--top-k", "1")
    assert code == 0, output
    assert json.loads((tmp_path / ".r.jsonl.run.json").read_text())["options"]["top_k"] == 1


def test_outputs_that_name_a_stream_are_refused(tmp_path, int8_bundle, test_images):
    """`-o LINK --overwrite`, LINK -> /proc/self/fd/1, replaced the link with a file and printed
    nothing (as root, `-o /dev/stdout --overwrite` replaced /dev/stdout itself)."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    folder_link = tmp_path / "fds"
    folder_link.symlink_to("/proc/self/fd")
    for output in (link, folder_link / "1", "/dev/stdout", "/dev/fd/2"):
        extra = ["--overwrite"] if str(output).startswith(str(tmp_path)) else []
        code, text = run("infer", int8_bundle, test_images, "-o", output, *extra)
        assert code == 2 and "names a stream (standard output" in text, (output, text)
    assert link.is_symlink()
    code, text = run(
        "infer", int8_bundle, test_images, "-o", tmp_path / "r.jsonl", "--report", link
    )
    assert code == 2 and f"{link}: the report file names a stream" in text, text


@pytest.mark.parametrize("where", ["PATH", "-o", "--report"])
def test_an_empty_path_is_refused(tmp_path, int8_bundle, test_images, monkeypatch, where):
    """Path("") is ".": `infer model.m3 "$UNSET"` annotated the working folder, `-o ""` ended in
    a ValueError (exit 1)."""
    monkeypatch.chdir(tmp_path)
    args = {"PATH": ["", "-o", "r.jsonl"], "-o": [test_images, "-o", ""]}.get(
        where, [test_images, "-o", "r.jsonl", "--report", ""]
    )
    code, text = run("infer", int8_bundle, *args)
    assert code == 2 and "empty path (an unset shell variable?)" in text, text
    assert list(tmp_path.iterdir()) == []


def test_an_overwrite_stopped_before_its_first_row_leaves_the_record_alone(
    tmp_path, int8_bundle, test_images, monkeypatch
):
    """The run record took the new options before the results were emptied: an --overwrite
    stopped in between left top-k 1 rows under a top-k 3 record, and a --resume with top-k 3
    then mixed them."""
    from m3trt.runtime import pipeline

    out = tmp_path / "r.jsonl"
    assert run("infer", int8_bundle, test_images, "-o", out, "--top-k", "1")[0] == 0
    record = tmp_path / ".r.jsonl.run.json"
    before = record.read_bytes()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_count", interrupted)
    code, _ = run("infer", int8_bundle, test_images, "-o", out, "--top-k", "3", "--overwrite")
    assert code != 0 and record.read_bytes() == before
    monkeypatch.undo()
    code, output = run("infer", int8_bundle, test_images, "-o", out, "--top-k", "3", "--resume")
    assert code == 2 and "written with --top-k 1" in output, output
