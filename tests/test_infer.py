"""`m3trt infer` and the Annotator API: outputs, formats, bad files, resume, sidecars, tags."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m3trt.cli import main
from m3trt.runtime.annotator import Annotator
from m3trt.runtime.bundle import load_bundle
from m3trt.runtime.engines.ort_engine import OnnxRuntimeEngine
from m3trt.runtime.results import errors_path, read_results


def infer(*args):
    result = CliRunner().invoke(main, ["--quiet", "infer", *map(str, args)])
    return result.exit_code, result.output


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def image_paths(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if f.endswith((".jpg", ".png"))]
    return found


@pytest.fixture(scope="module")
def annotator(int8_bundle):
    return Annotator.load(int8_bundle, device="cpu")


def test_annotate_accepts_paths_pil_images_and_arrays(annotator, test_images):
    path = image_paths(test_images)[0]
    with Image.open(path) as img:
        pil = img.convert("RGB")
    array = np.asarray(pil)
    by_path, by_pil, by_array = annotator.annotate([path, pil, array])
    assert by_path == by_pil == by_array
    assert by_path == annotator.annotate(path)[0]
    assert 0 <= by_path.k <= annotator.info.k_max  # 0: no label reaches the decision threshold
    assert len(by_path.labels) == by_path.k == len(by_path.scores)
    assert by_path.scores == sorted(by_path.scores, reverse=True)


def test_threshold_and_top_k(int8_bundle, test_images):
    paths = image_paths(test_images)[:6]
    low = Annotator.load(int8_bundle, device="cpu", threshold=0.0)
    high = Annotator.load(int8_bundle, device="cpu", threshold=0.5)
    two = Annotator.load(int8_bundle, device="cpu", top_k=2)
    n_labels = low.info.num_labels
    for a, b, c in zip(low.annotate(paths), high.annotate(paths), two.annotate(paths), strict=True):
        assert len(a.labels) == n_labels
        assert all(s >= 0.5 for s in b.scores) and b.labels == a.labels[: len(b.labels)]
        assert c.labels == a.labels[:2]


def test_infer_jsonl_matches_the_api_in_walk_order(tmp_path, int8_bundle, test_images, annotator):
    out = tmp_path / "results.jsonl"
    code, output = infer(int8_bundle, test_images, "-o", out, "--batch-size", "5")
    assert code == 0, output
    rows = jsonl(out)
    paths = image_paths(test_images)
    assert sorted(r["path"] for r in rows) == sorted(paths)
    again = out.with_name("again.jsonl")
    assert infer(int8_bundle, test_images, "-o", again, "--batch-size", "3")[0] == 0
    assert [r["path"] for r in jsonl(again)] == [r["path"] for r in rows]  # deterministic
    expected = annotator.annotate([r["path"] for r in rows])
    for row, annotation in zip(rows, expected, strict=True):
        assert row == annotation.to_json(row["path"])
    assert not errors_path(out).exists()


def test_infer_agrees_with_the_fp32_reference(tmp_path, int8_bundle, test_images):
    """Within the agreement the bundle recorded at build time (plus sampling noise)."""
    out = tmp_path / "r.jsonl"
    assert infer(int8_bundle, test_images, "-o", out)[0] == 0
    rows = jsonl(out)
    bundle = load_bundle(int8_bundle)
    reference = Annotator(
        bundle,
        OnnxRuntimeEngine(bundle.artifact_path("reference"), "cpu"),
        Annotator.load(bundle, device="cpu").choice,
        Annotator.load(bundle, device="cpu").decoding,
    )
    fp32 = reference.annotate([r["path"] for r in rows])
    same = np.mean([set(r["labels"]) == set(a.labels) for r, a in zip(rows, fp32, strict=True)])
    # The build saw n images; all agreeing says little more than "p >= 1 - 3/n" (rule of three).
    recorded = min(bundle.accuracy["label_set_agreement"], 1 - 3 / bundle.accuracy["n_images"])
    noise = 3 * np.sqrt(recorded * (1 - recorded) / len(rows)) + 1 / len(rows)
    assert same >= recorded - noise


def test_csv_output(tmp_path, int8_bundle, test_images):
    out = tmp_path / "results.csv"
    assert infer(int8_bundle, test_images, "-o", out)[0] == 0
    jl = tmp_path / "results.jsonl"
    assert infer(int8_bundle, test_images, "-o", jl)[0] == 0
    assert out.read_text().splitlines()[0] == "path,labels,scores,k,quantity,path_bytes"
    for a, b in zip(read_results(out), jsonl(jl), strict=True):
        assert a["path"] == b["path"] and a["labels"] == b["labels"] and a["k"] == b["k"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)


@pytest.fixture
def bad_folder(tmp_path, test_images):
    folder = tmp_path / "mixed"
    shutil.copytree(test_images, folder)
    good = image_paths(folder)
    (folder / "empty.jpg").write_bytes(b"")
    data = Path(good[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image at all\n")
    Image.new("RGB", (300, 300), (10, 20, 30)).save(folder / "huge.png")
    (folder / "broken.jpg").symlink_to(folder / "does-not-exist.jpg")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    (folder / "sub" / "back").symlink_to(folder, target_is_directory=True)  # a folder loop
    os.mkfifo(folder / "pipe.jpg")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder, good


BAD = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "notes.jpg": "not",
    "huge.png": "pixel",
    "broken.jpg": "broken symbolic link",
    "loop_a.jpg": "loop",
    "loop_b.jpg": "loop",
    "pipe.jpg": "not a regular file",
}


def test_every_bad_file_gets_one_error_line_and_the_run_goes_on(tmp_path, int8_bundle, bad_folder):
    folder, good = bad_folder
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    code, output = infer(
        int8_bundle, folder, "-o", out, "--max-pixels", 50_000, "--summary-json", summary
    )
    assert code == 0, output
    assert sorted(r["path"] for r in jsonl(out)) == sorted(good)
    errors = {Path(e["path"]).name: e["error"] for e in jsonl(errors_path(out))}
    assert sorted(errors) == sorted(BAD), errors
    for name, word in BAD.items():
        assert word in errors[name].lower(), (name, errors[name])
    counts = json.loads(summary.read_text())
    assert (counts["annotated"], counts["failed"], counts["skipped"]) == (len(good), len(BAD), 0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, int8_bundle, test_images):
    folder = tmp_path / "f"
    shutil.copytree(test_images, folder)
    locked = Path(image_paths(folder)[0])
    locked.chmod(0)
    out = tmp_path / "o.jsonl"
    assert infer(int8_bundle, folder, "-o", out)[0] == 0
    assert "permission" in jsonl(errors_path(out))[0]["error"].lower()


def test_exit_codes(tmp_path, int8_bundle, bad_folder, test_images):
    folder, _ = bad_folder
    assert infer(int8_bundle, folder, "-o", tmp_path / "a.jsonl", "--strict")[0] == 1
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"")
    code, output = infer(int8_bundle, only_bad, "-o", tmp_path / "b.jsonl")
    assert code == 1 and "no image could be annotated" in output
    code, output = infer(int8_bundle, tmp_path / "missing", "-o", tmp_path / "c.jsonl")
    assert code == 2 and "no such file or folder" in output
    out = tmp_path / "d.jsonl"
    assert infer(int8_bundle, test_images, "-o", out)[0] == 0
    before = out.read_bytes()
    code, output = infer(int8_bundle, test_images, "-o", out)
    assert code == 2 and "--resume" in output and out.read_bytes() == before
    assert infer(int8_bundle, test_images, "-o", out, "--overwrite")[0] == 0
    code, output = infer(tmp_path, test_images, "-o", tmp_path / "e.jsonl")
    assert code == 2 and "not an m3trt bundle" in output


def test_resume_repairs_a_torn_line_without_duplicates_or_gaps(tmp_path, int8_bundle, test_images):
    out = tmp_path / "r.jsonl"
    assert infer(int8_bundle, test_images, "-o", out)[0] == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:7]) + lines[7][:25])  # a kill in the middle of a write
    code, output = infer(int8_bundle, test_images, "-o", out, "--resume")
    assert code == 0, output
    rows = jsonl(out)
    assert sorted(r["path"] for r in rows) == sorted(image_paths(test_images))
    assert [r["path"] for r in rows[:7]] == [json.loads(x)["path"] for x in lines[:7]]


def test_ctrl_c_leaves_valid_output_and_resume_finishes(tmp_path, int8_bundle, test_images):
    annotator = Annotator.load(int8_bundle, device="cpu")
    calls = {"n": 0}
    real_run = annotator.run

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(*args, **kw)

    annotator.run = interrupted
    from m3trt.runtime.pipeline import InferOptions, run_folder

    out = tmp_path / "c.jsonl"
    summary = run_folder(annotator, [test_images], InferOptions(out, batch_size=4))
    assert summary.interrupted and summary.annotated == 8
    assert len(jsonl(out)) == 8
    code, _ = infer(int8_bundle, test_images, "-o", out, "--resume", "--batch-size", "4")
    assert code == 0
    assert sorted(r["path"] for r in jsonl(out)) == sorted(image_paths(test_images))


def test_kill_mid_run_then_resume(tmp_path, int8_bundle, test_images):
    """A real SIGKILL of a real run: the file is valid after --resume, each image exactly once."""
    folder = tmp_path / "many"
    folder.mkdir()
    sources = image_paths(test_images)
    for i in range(600):
        os.link(sources[i % len(sources)], folder / f"{i:04d}.jpg")
    out = tmp_path / "k.jsonl"
    cmd = [sys.executable, "-m", "m3trt.cli", "-q", "infer", str(int8_bundle), str(folder)]
    cmd += ["-o", str(out), "--batch-size", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    partial = out.read_bytes().count(b"\n")
    assert 3 <= partial < 600
    subprocess.run([*cmd, "--resume"], check=True, capture_output=True)
    paths = [r["path"] for r in jsonl(out)]
    assert len(paths) == len(set(paths)) == 600


def test_sidecars_and_the_no_overwrite_rule(tmp_path, int8_bundle, test_images):
    folder = tmp_path / "s"
    shutil.copytree(test_images, folder)
    first = Path(image_paths(folder)[0])
    kept_txt = first.with_suffix(".txt")
    kept_txt.write_text("my own caption\n")
    out = tmp_path / "o.jsonl"
    code, output = infer(int8_bundle, folder, "-o", out, "--write-xmp", "--write-txt")
    assert code == 0, output
    rows = {r["path"]: r for r in jsonl(out)}
    assert kept_txt.read_text() == "my own caption\n"
    from m3trt.runtime.tag_sources import parse_xmp_subjects

    for path, row in rows.items():
        xmp = Path(path).with_suffix(".xmp")
        assert parse_xmp_subjects(xmp.read_bytes()) == row["labels"]
        if Path(path) != first:
            assert Path(path).with_suffix(".txt").read_text() == ", ".join(row["labels"]) + "\n"
    code, _ = infer(int8_bundle, folder, "-o", out, "--write-txt", "--overwrite")
    assert code == 0
    assert kept_txt.read_text() == ", ".join(rows[str(first)]["labels"]) + "\n"


def _tagged_folder(tmp_path, test_images, tiny_data):
    """Images with their manifest tags, as .tags sidecars and as a JSONL tags manifest."""
    from m3trt.data.manifest import read_manifest

    by_name = {r.path.name: list(r.tags) for r in read_manifest(tiny_data).records}
    folder = tmp_path / "t"
    shutil.copytree(test_images, folder)
    lines = []
    for path in image_paths(folder):
        tags = by_name[Path(path).name]
        Path(path + ".tags").write_text(", ".join(tags))
        lines.append(json.dumps({"path": os.path.relpath(path, tmp_path), "tags": tags}))
    manifest = tmp_path / "tags.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return folder, by_name, manifest


def test_tag_sources_reach_the_model(tmp_path, int8_bundle, test_images, tiny_data, annotator):
    folder, by_name, manifest = _tagged_folder(tmp_path, test_images, tiny_data)
    runs = {}
    for kind, extra in [("none", []), ("sidecar", []), ("manifest", ["--tags-manifest", manifest])]:
        out = tmp_path / f"{kind}.jsonl"
        code, output = infer(int8_bundle, folder, "-o", out, "--tags", kind, *extra)
        assert code == 0, output
        runs[kind] = jsonl(out)
    assert runs["sidecar"] == runs["manifest"]
    assert runs["sidecar"] != runs["none"]  # the tag branch matters on this set
    paths = [r["path"] for r in runs["sidecar"]]
    tags = [by_name[Path(p).name] for p in paths]
    expected = annotator.annotate(paths, tags)
    assert [r["labels"] for r in runs["sidecar"]] == [a.labels for a in expected]


def test_embedded_xmp_tags(tmp_path, int8_bundle, test_images, tiny_data, annotator):
    from m3trt.runtime.sidecars import render_xmp

    folder, by_name, _ = _tagged_folder(tmp_path, test_images, tiny_data)
    for path in image_paths(folder):
        with Image.open(path) as img:
            img.load()
            xmp = render_xmp(by_name[Path(path).name]).encode()
            img.save(path, quality=95, xmp=xmp)
    out = tmp_path / "x.jsonl"
    assert infer(int8_bundle, folder, "-o", out, "--tags", "xmp")[0] == 0
    rows = jsonl(out)
    paths = [r["path"] for r in rows]
    expected = annotator.annotate(paths, [by_name[Path(p).name] for p in paths])
    assert [r["labels"] for r in rows] == [a.labels for a in expected]


def test_html_report_has_one_card_per_image(tmp_path, int8_bundle, bad_folder):
    folder, good = bad_folder
    report = tmp_path / "report.html"
    out = tmp_path / "o.jsonl"
    code, output = infer(int8_bundle, folder, "-o", out, "--report", report, "--max-pixels", 50_000)
    assert code == 0, output
    page = report.read_text()
    assert page.count('class="card"') == len(good)
    assert "truncated.jpg" in page  # failures are listed too


def test_runtime_and_infer_never_import_torch(tmp_path, int8_bundle, test_images):
    out = tmp_path / "nt.jsonl"
    script = (
        "import sys\n"
        "import m3trt.runtime.annotator, m3trt.runtime.pipeline, m3trt.runtime.engines\n"
        "import m3trt.runtime.results, m3trt.runtime.walk, m3trt.runtime.report\n"
        "import m3trt.runtime.sidecars, m3trt.runtime.tag_sources, m3trt.metrics, m3trt.data\n"
        "import m3trt.runtime.outputs, m3trt.runtime.signing, m3trt.data.safe_open\n"
        "try:\n"
        "    m3trt.runtime.signing._library()  # --verify-key's imports: model-signing\n"
        "except m3trt.errors.InputError:\n"
        "    pass  # not installed\n"
        "from m3trt.cli import main\n"
        "try:\n"
        f"    main(['-q', 'infer', {str(int8_bundle)!r}, {str(test_images)!r}, '-o', {str(out)!r},"
        " '--report', " + repr(str(tmp_path / "r.html")) + "])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert len(jsonl(out)) == len(image_paths(test_images))


def test_device_choice(int8_bundle):
    from m3trt.errors import M3Error
    from m3trt.runtime.engines import open_engine
    from m3trt.runtime.engines.registry import artifact_roles

    bundle = load_bundle(int8_bundle, verify=False)
    engine, auto = open_engine(bundle, "auto", engine="onnxruntime")
    assert (auto.device, auto.artifact) == ("cpu", "engine")
    assert "cuda: not usable here (`m3trt doctor` says why)" in auto.skipped  # short, every run
    engine.close()
    # The CPU INT8 graph's uint8 Q/DQ kernels are a CPU format: a GPU runs the FP32 reference.
    assert [role for role, _ in artifact_roles(bundle, "cuda")] == ["reference"]
    assert [role for role, _ in artifact_roles(bundle, "cpu")] == ["engine", "graph", "reference"]
    with pytest.raises(M3Error, match="no CUDA provider.*onnxruntime-gpu"):
        open_engine(bundle, "cuda")


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, int8_bundle, test_images):
    code, output = infer(int8_bundle, test_images, "-o", tmp_path / "o.jsonl", "--device", "cuda")
    assert code == 2 and "onnxruntime-gpu" in output
    assert not (tmp_path / "o.jsonl").exists()


def _nest(top: Path, name: str, depth: int) -> None:
    """``top/name/name/.../name``, ``depth`` folders deep, made through folder descriptors (the
    path may be longer than the system lets one path be)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _unnest(top: Path, name: str, depth: int) -> None:
    """Remove what ``_nest`` made (and the files at its bottom) from the bottom up, two folder
    descriptors at a time: Python 3.11's ``shutil.rmtree`` recurses too, and a tree left in
    pytest's base folder would stop the next session's clean-up."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(depth):
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        for entry in os.listdir(fd):
            os.unlink(entry, dir_fd=fd)
        for _ in range(depth):
            parent = os.open("..", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)


def test_a_tree_thousands_of_folders_deep_is_walked(tmp_path, int8_bundle, test_images):
    """The walk recursed, and Python's recursion limit (~1000) crashed the whole run; a folder
    whose path is longer than the system takes is one error line."""
    image = Path(image_paths(test_images)[0])
    top = tmp_path / "deep"
    top.mkdir()
    shutil.copyfile(image, top / "shallow.jpg")
    _nest(top, "a", 1500)
    deep = top.joinpath(*["a"] * 1500)
    shutil.copyfile(image, deep / "deep.jpg")
    _nest(top, "b" * 50, 100)  # 5,100 bytes: past PATH_MAX (4,096)
    out = tmp_path / "out.jsonl"
    try:
        code, output = infer(int8_bundle, top, "-o", out)
    finally:
        _unnest(top, "a", 1500)
    assert code == 0, output
    assert sorted(Path(r["path"]).name for r in jsonl(out)) == ["deep.jpg", "shallow.jpg"]
    [error] = jsonl(errors_path(out))
    assert "too long" in error["error"].lower() and error["path"].startswith(str(top / ("b" * 50)))


def test_a_file_named_twice_or_inside_a_folder_given_is_annotated_once(tmp_path, test_images):
    from m3trt.runtime.walk import iter_images

    folder = tmp_path / "f"
    shutil.copytree(test_images, folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    first, second = folder / names[0], folder / names[1]
    walked = [found.path for found in iter_images([folder])]
    assert len(walked) == len(set(walked)) == len(image_paths(folder))
    both_ways = [first, folder, Path(f"{folder}/./{names[0]}"), first, second]
    assert [found.path for found in iter_images(both_ways)] == [str(first)] + [
        p for p in walked if p != str(first)
    ]
    # a link to a file is another entry, and a file the --ext filter leaves out is still taken
    (folder / "link.jpg").symlink_to(first)
    (folder / "odd.jpeg2").write_bytes(first.read_bytes())
    paths = [found.path for found in iter_images([folder, folder / "odd.jpeg2"])]
    assert paths.count(str(folder / "link.jpg")) == 1 and paths[-1] == str(folder / "odd.jpeg2")


def test_nan_outputs_are_that_images_error_and_the_rows_stay_json(
    tmp_path, int8_bundle, test_images, monkeypatch
):
    """A bundle with broken weights gave NaN: the row was `"quantity": NaN`, not JSON."""
    real = Annotator.decode

    def first_is_nan(self, outputs):
        outputs = dict(outputs, quantity=outputs["quantity"].copy())
        outputs["quantity"][0] = np.nan
        return real(self, outputs)

    monkeypatch.setattr(Annotator, "decode", first_is_nan)
    out = tmp_path / "out.jsonl"
    code, output = infer(int8_bundle, test_images, "-o", out, "--batch-size", "8")
    assert code == 0, output
    rows, errors = jsonl(out), jsonl(errors_path(out))  # json.loads refuses nothing here...
    assert "NaN" not in out.read_text()  # ...but NaN is no JSON: no row may hold one
    assert len(errors) == 3 and all("NaN or infinite" in e["error"] for e in errors)
    assert len(rows) + len(errors) == len(image_paths(test_images))


def test_a_named_file_is_taken_when_its_folder_could_not_be_listed(tmp_path, monkeypatch):
    """`infer dir dir/a.jpg` with dir unlistable (mode 0311): a.jpg was skipped as walked."""
    from m3trt.runtime import walk

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    real = os.scandir

    def refuse(path):
        if os.path.realpath(path) == os.path.realpath(folder):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(walk.os, "scandir", refuse)
    found = list(walk.iter_images([folder, folder / "a.jpg"]))
    assert [f.path for f in found] == [str(folder), str(folder / "a.jpg")]
    assert "cannot list folder" in found[0].error and found[1].error is None


def test_the_api_takes_one_images_words_and_refuses_what_it_would_misread(annotator, test_images):
    """`annotate(path, tags=["moon"])` split each word into letters and dropped them, silently."""
    path = image_paths(test_images)[0]
    vocab = annotator.info.tag_vocab[:3]
    assert annotator.annotate(path, tags=vocab) == annotator.annotate([path], tags=[vocab])
    assert annotator.annotate(path, tags=[vocab]) == annotator.annotate([path], tags=[vocab])
    with pytest.raises(TypeError, match="one list of words"):
        annotator.annotate([path], tags=vocab[:1])  # a list of images takes a list per image
    with pytest.raises(TypeError, match="one list of words"):
        annotator.annotate([path], tags=[[5]])
    for size in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            annotator.annotate([path, path], batch_size=size)
    data = Path(path).read_bytes()
    assert annotator.annotate(bytearray(data)) == annotator.annotate(memoryview(data))
    assert len(annotator.annotate(bytearray(data))) == 1


@pytest.mark.parametrize(
    "kw", [{"top_k": 2.5}, {"threshold": True}, {"threshold": "0.5"}, {"threads": 10**6}]
)
def test_load_refuses_odd_settings_at_once(int8_bundle, kw):
    from m3trt.errors import M3Error

    with pytest.raises(M3Error, match="must be"):
        Annotator.load(int8_bundle, device="cpu", **kw)


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "{bundle}", "{manifest}", "--threshold", "nan"],
        ["eval", "{bundle}", "{manifest}", "--max-drop", "nan"],
        ["bench", "{bundle}", "--max-slowdown", "nan"],
        ["serve", "{bundle}", "--max-body-mb", "inf"],
        ["serve", "{bundle}", "--threads", "100000"],
    ],
    ids=lambda a: " ".join(a[i] for i in (0, -2, -1)),
)
def test_nan_and_runaway_numbers_are_usage_errors(int8_bundle, tiny_data, args):
    """NaN passed click's FloatRange: `--max-drop nan` turned the regression gate off."""
    args = [a.format(bundle=int8_bundle, manifest=tiny_data) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Invalid value for" in result.output, result.output
