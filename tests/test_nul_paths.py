"""File names from JSON can hold what no path can: a NUL byte crashed the run that used them
("embedded null byte"), and '..' or '/' led outside the image folder."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from m3trt.cli import main
from m3trt.data.importers import import_coco
from m3trt.errors import InputError
from tests.test_importers import make_coco


@pytest.mark.parametrize("name", ["a\x00b.jpg", "../../etc/x.jpg", "sub/../../x.jpg", "/etc/x.jpg"])
def test_coco_file_names_outside_the_image_folder_are_refused(tmp_path, name):
    instances = make_coco(tmp_path / "coco")
    data = json.loads(instances.read_text())
    data["images"][1]["file_name"] = name
    instances.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"images\[1\]\.file_name"):
        import_coco(instances, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_nul_in_a_tags_manifest_path_is_one_line(tmp_path, int8_bundle, test_images):
    tags = tmp_path / "tags.jsonl"
    tags.write_text(json.dumps({"path": "a\x00b.jpg", "tags": ["x"]}) + "\n")
    args = ["--quiet", "infer", int8_bundle, test_images, "-o", tmp_path / "r.jsonl"]
    args += ["--tags", "manifest", "--tags-manifest", tags]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "NUL" in result.output and "tags.jsonl" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_coco_image_names_too_long_for_the_file_system_count_as_missing(tmp_path):
    instances = make_coco(tmp_path / "coco")
    data = json.loads(instances.read_text())
    data["images"][1]["file_name"] = "x" * 5000 + ".jpg"
    instances.write_text(json.dumps(data))
    summary = import_coco(instances, tmp_path / "out", image_dir=tmp_path / "coco" / "val2017")
    assert summary.n_missing_images >= 2  # that one and the layout's own missing image
