"""`data synth --overwrite` over an existing dataset: an interrupted run never leaves the old
manifest labelling new images, a smaller set leaves no stale images, and an import cannot write
the same folder at once."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.data.synth import generate
from m3trt.runtime.outputs import output_lock


def run(*args):
    result = CliRunner().invoke(main, ["--quiet", *map(str, args)])
    return result.exit_code, result.output


def test_an_interrupted_overwrite_leaves_no_manifest_of_the_old_images(tmp_path):
    out = tmp_path / "d"
    generate(out, n=20, size=32, seed=0)

    def stop(done: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(out, n=20, size=32, seed=1, progress=stop)
    # five images are seed 1's now: no manifest may still describe them as seed 0's
    assert not (out / "manifest.jsonl").exists() and not (out / "synth.json").exists()
    assert not (out / "labels.txt").exists()
    generate(out, n=20, size=32, seed=1)
    assert (out / "manifest.jsonl").is_file()


def test_a_smaller_set_over_synths_own_folder_leaves_no_stale_images(tmp_path):
    out = tmp_path / "d"
    generate(out, n=30, size=32, seed=0)
    generate(out, n=20, size=32, seed=0)
    assert len(list((out / "images").iterdir())) == 20


def test_images_of_a_folder_synth_did_not_write_are_kept(tmp_path):
    out = tmp_path / "d"
    (out / "images").mkdir(parents=True)
    theirs = out / "images" / "000025.jpg"
    theirs.write_bytes(b"a user's image")
    generate(out, n=20, size=32, seed=0)
    assert theirs.read_bytes() == b"a user's image"


@pytest.mark.parametrize("kind", ["file", "link"])
def test_images_that_is_not_a_folder_is_one_line(tmp_path, kind):
    out = tmp_path / "d"
    out.mkdir()
    if kind == "file":
        (out / "images").write_text("x")
    else:
        (tmp_path / "elsewhere").mkdir()
        (out / "images").symlink_to(tmp_path / "elsewhere")
    code, output = run("data", "synth", out, "--n", "20", "--overwrite")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "images: is" in output
    if kind == "link":
        assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing written through it


def test_an_import_is_refused_while_synth_writes_the_folder(tmp_path):
    from tests.test_importers import make_coco

    instances = make_coco(tmp_path / "coco")
    out = tmp_path / "out"
    with output_lock(out):  # `data synth out` is running
        code, output = run("data", "import-coco", instances, "-o", out)
    assert code == 2 and "another m3trt run is writing it" in output, output
    assert not (out / "manifest.jsonl").exists()
