"""Two runs on one output: every writing command holds its output's lock for its whole run, and
checks what it may replace again under the lock."""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

import m3trt.runtime.outputs as outputs
from m3trt.cli import main
from m3trt.errors import InputError
from m3trt.runtime.outputs import lock_path, output_lock


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def _commands(tiny_data: Path, tiny_onnx: Path, out: Path) -> dict[str, tuple[list, str]]:
    """Each writing command with ``out`` as its output, and the option a user would change."""
    return {
        "synth": (["data", "synth", out, "--n", "20"], "OUT"),
        "train": (["train", tiny_data, "-o", out, "--epochs", "1"], "-o"),
        "calibrate": (["calibrate", tiny_onnx, "--data", tiny_data, "-o", out], "-o"),
        "build": (["build", tiny_onnx, "-o", out, "--precision", "fp32", "--target", "cpu"], "-o"),
    }


@pytest.mark.parametrize("command", ["synth", "train", "calibrate", "build"])
def test_a_held_output_is_refused_before_any_work(command, tmp_path, tiny_data, tiny_onnx):
    out = tmp_path / ("x.m3" if command == "build" else "out")
    args, option = _commands(tiny_data, tiny_onnx, out)[command]
    with output_lock(out):  # another run is writing it
        code, output = run(*args)
    assert code == 2, output
    assert "another m3trt run is writing it" in output and f"choose another {option}" in output
    assert not out.exists()


def test_import_keeps_a_users_manifest_unless_overwrite(tmp_path):
    from tests.test_importers import make_coco

    instances = make_coco(tmp_path / "coco")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text("a user's manifest\n")
    code, output = run("data", "import-coco", instances, "-o", out)
    assert code == 2 and "(-o) exists: replace it with --overwrite" in output
    assert (out / "manifest.jsonl").read_text() == "a user's manifest\n"
    assert not (out / "labels.txt").exists()

    (out / "manifest.jsonl").unlink()
    (out / "labels.txt").write_text("a user's labels\n")
    code, output = run("data", "import-coco", instances, "-o", out)
    assert code == 2 and "(labels file) exists: replace it with --overwrite" in output
    assert (out / "labels.txt").read_text() == "a user's labels\n"

    with output_lock(out / "manifest.jsonl"):
        code, output = run("data", "import-coco", instances, "-o", out, "--overwrite")
    assert code == 2 and "another m3trt run is writing it" in output

    code, output = run("data", "import-coco", instances, "-o", out, "--overwrite")
    assert code == 0, output
    assert (out / "labels.txt").read_text() == "person\ncar\ndog\n"
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4


def _lock_then(write: Path, text: str):
    """An ``output_lock`` that finds ``write`` written by another run once it holds the lock:
    the run that checked before it got the lock."""
    real = output_lock

    @contextmanager
    def lock(output: Path, *args):
        with real(output, *args) as path:
            write.write_text(text)
            yield path

    return lock


def test_infer_checks_again_under_the_lock(monkeypatch, tmp_path, int8_bundle, test_images):
    report = tmp_path / "report.html"
    monkeypatch.setattr(outputs, "output_lock", _lock_then(report, "another run's report"))
    code, output = run(
        "infer", int8_bundle, test_images, "-o", tmp_path / "r.jsonl", "--report", report
    )
    assert code == 2 and f"{report} exists: replace it with --overwrite" in output, output
    assert report.read_text() == "another run's report"
    assert not (tmp_path / "r.jsonl").exists()


def test_export_checks_again_under_the_lock(monkeypatch, tmp_path, tiny_checkpoint):
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(outputs, "output_lock", _lock_then(out, "another run's model"))
    code, output = run("export", tiny_checkpoint[0], "-o", out)
    assert code == 2 and "(-o) exists: replace it with --overwrite" in output, output
    assert out.read_text() == "another run's model"


def test_lock_path_of_folders_without_a_name(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real / "sub")
    monkeypatch.chdir(real)
    assert lock_path(Path(".")) == Path(os.path.realpath(tmp_path)) / ".real.lock"
    # "link/.." is the parent of link's target (the kernel's reading), not tmp_path
    assert lock_path(tmp_path / "link" / "..") == Path(os.path.realpath(tmp_path)) / ".real.lock"
    # and a file spelled through it locks beside the file the kernel opens
    spelled = tmp_path / "link" / ".." / "r.jsonl"
    assert os.path.realpath(lock_path(spelled)) == os.path.join(
        os.path.realpath(real), ".r.jsonl.lock"
    )
    with pytest.raises(InputError, match="the root folder cannot be an output"):
        lock_path(Path("/"))


def test_a_lock_path_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with (
        pytest.raises(InputError, match=r"file: is not a folder, so .*ckpt cannot go in it"),
        output_lock(tmp_path / "file" / "ckpt"),
    ):
        pass


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path, int8_bundle, test_images):
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file")
    out = tmp_path / "r.jsonl"
    lock_path(out).symlink_to(victim)
    code, output = run("infer", int8_bundle, test_images, "-o", out)
    assert code == 2 and f"{lock_path(out)}: cannot lock the output" in output, output
    assert victim.read_text() == "a user's file" and not out.exists()


def test_a_report_another_run_writes_is_refused(tmp_path, int8_bundle, test_images):
    """Two runs with different -o but one --report (or --summary-json): the second is refused."""
    for option, name in (("--report", "report.html"), ("--summary-json", "summary.json")):
        shared = tmp_path / name
        with output_lock(shared):  # a run with another -o is writing it
            code, output = run("infer", int8_bundle, test_images, "-o", tmp_path / "r.jsonl",
                               option, shared)  # fmt: skip
        assert code == 2 and f"choose another {option}" in output, output
        assert not shared.exists() and not (tmp_path / "r.jsonl").exists()


def test_a_refused_build_leaves_no_lock_file(tmp_path, tiny_onnx):
    """Build's own refusals (a name without .m3, a bundle that exists) come before its lock."""
    for out in (tmp_path / "x.txt", tmp_path / "made.m3"):
        if out.suffix == ".m3":
            out.mkdir()
        code, output = run("build", tiny_onnx, "-o", out, "--precision", "fp32", "--target", "cpu")
        assert code == 2 and str(out) in output, output
        assert not lock_path(out).exists()


def test_infer_locks_its_errors_file_and_the_file_a_link_names(tmp_path, int8_bundle, test_images):
    """-o a.jsonl and -o a.csv share a.errors.jsonl, which was not locked: both runs wrote their
    error lines into it. -o alias.jsonl (a link to k.jsonl) took the lock .alias.jsonl.lock,
    so two --resume runs appended to k.jsonl at once."""
    infer = ["infer", int8_bundle, test_images]
    with output_lock(tmp_path / "a.errors.jsonl"):  # a run with -o a.jsonl
        code, output = run(*infer, "-o", tmp_path / "a.csv")
    assert code == 2 and "another m3trt run is writing it" in output, output
    assert not (tmp_path / "a.csv").exists()

    (tmp_path / "k.jsonl").write_text("")
    (tmp_path / "alias.jsonl").symlink_to("k.jsonl")
    assert lock_path(tmp_path / "alias.jsonl") == lock_path(tmp_path / "k.jsonl")
    with output_lock(tmp_path / "k.jsonl"):
        code, output = run(*infer, "-o", tmp_path / "alias.jsonl", "--resume")
    assert code == 2 and "another m3trt run is writing it" in output, output


def test_an_output_under_a_file_or_named_dash_is_one_clear_line(tmp_path, int8_bundle):
    (tmp_path / "afile").write_text("mine")
    for out, says in (
        (tmp_path / "afile" / "o.jsonl", "afile: is not a folder"),
        ("-", "not to standard output"),
    ):
        code, output = run("infer", int8_bundle, tmp_path, "-o", out)
        assert code == 2 and says in output, output
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "-").exists()


def test_build_clears_what_a_killed_build_left_beside_its_bundle(tmp_path, tiny_onnx):
    """A killed build left its staging folder (.x.m3.tmp-PID-HEX, tens of MB) for good."""
    out = tmp_path / "x.m3"
    staging = tmp_path / ".x.m3.tmp-123-0123abcd"
    (staging / "partial").mkdir(parents=True)
    other = tmp_path / ".y.m3.tmp-123-0123abcd"  # another bundle's: not this build's to remove
    other.mkdir()
    code, output = run("build", tiny_onnx, "-o", out, "--precision", "fp32", "--target", "cpu")
    assert code == 0, output
    assert not staging.exists() and other.exists() and (out / "bundle.json").is_file()


def test_sigterm_stops_a_build_with_its_cleanup(tmp_path, tiny_onnx, tiny_data):
    """SIGTERM (timeout, docker stop, systemd) killed the process at once: its work folder (94
    MB for a tiny model) and its staging folder stayed. It now stops as Ctrl-C does."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "x.m3"
    args = [sys.executable, "-m", "m3trt.cli", "-q", "build", str(tiny_onnx), "-o", str(out)]
    args += ["--precision", "int8", "--calib", str(tiny_data), "--engine", "onnxruntime"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)

    def work() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.startswith(".x.m3.tmp")]

    deadline = time.monotonic() + 60
    while not work() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert work(), "the build never started"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert work() == [] and not out.exists()


def test_a_dangling_link_as_a_folder_output_is_refused_and_nothing_made(tmp_path, tiny_data):
    """It ended in 'File exists' (exit 1), after making the folder the link names (the lock
    went beside the link's target)."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "deeper")
    bundle = tmp_path / "b.m3"
    bundle.symlink_to(tmp_path / "nowhere" / "b.m3")
    for args, option in (
        (["data", "synth", link, "--n", "20"], "OUT"),
        (["train", tiny_data, "-o", link], "-o"),
        (["build", tiny_data.parent, "-o", bundle, "--precision", "fp32"], "-o"),
    ):
        code, output = run(*args)
        assert code == 2 and f"is a dangling symbolic link; choose another {option}" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.m3", "out"]
